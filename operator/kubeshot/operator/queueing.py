"""FIFO queueing of CaptureJobs under their policy's `maxConcurrentJobs`. Pure, in memory.

The authoritative state is the CaptureJob status (seen through Kopf's index), a retrying job's
`nextAttemptTime` included; this queue only remembers what the operator has decided but not yet
seen come back from the watch: jobs it just admitted, started or finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import ValidationError

from kubeshot.api import CaptureJobStatus, Phase
from kubeshot.kube import names
from kubeshot.operator.lifecycle import parse_time
from kubeshot.tracing import REQUEST_ID_ANNOTATION, TRACEPARENT_ANNOTATION

PolicyKey = tuple[str, str]  # (namespace, policy name)
TRACE_ANNOTATIONS = (TRACEPARENT_ANNOTATION, REQUEST_ID_ANNOTATION)


@dataclass(frozen=True)
class JobView:
    """What the operator keeps of a CaptureJob between events."""

    namespace: str
    name: str
    uid: str
    policy: str
    created: str
    generation: int | None
    status: CaptureJobStatus = field(default_factory=CaptureJobStatus, repr=False)
    """Compared: Kopf's index keeps a job's old view while the new one compares equal."""
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Those the operator reads: the gateway's traceparent and request id (tracing, logs)."""

    @property
    def key(self) -> PolicyKey:
        return (self.namespace, self.policy)

    @property
    def order(self) -> tuple[str, str]:
        """First come, first served: creation time, then name (for jobs of the same second)."""
        return (self.created, self.name)

    @property
    def phase(self) -> Phase:
        return self.status.phase

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta = body.get("metadata", {})
        try:
            status = CaptureJobStatus.model_validate(body.get("status") or {})
        except ValidationError:  # never as the operator wrote it: its phase, if any, alone
            status = CaptureJobStatus(phase=names.job_phase(body))
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            policy=names.job_policy(body),
            created=str(meta.get("creationTimestamp", "")),
            generation=meta.get("generation"),
            status=status,
            spec=dict(body.get("spec") or {}),
            annotations={
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k in TRACE_ANNOTATIONS and isinstance(v, str)
            },
        )


class Expect(Enum):
    """A decision the operator made about a job whose status the watch has not shown yet."""

    QUEUED = "admitted"  # admitted: its status will say Queued (or Running)
    RUNNING = "started"  # started: its status will say Running (or how the attempt ended)
    FINISHED = "settled"  # finished for good: its status will say Succeeded or Failed

    def met_by(self, phase: Phase) -> bool:
        if self is Expect.QUEUED:
            return phase is not Phase.PENDING
        if self is Expect.RUNNING:
            return phase in {Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED}
        return phase.finished


@dataclass
class JobQueue:
    """Decides which queued jobs start now, never exceeding a policy's concurrency limit.

    What the watch shows is the truth; `expected` (client-go's ControllerExpectations idea) holds,
    per job uid, the one decision made here that the watch has not shown yet, with the job as it
    was decided on; the job's next status from the watch that meets it clears it."""

    expected: dict[str, tuple[Expect, JobView | None]] = field(default_factory=dict)

    def _expects(self, uid: str, what: Expect) -> bool:
        found = self.expected.get(uid)
        return found is not None and found[0] is what

    def observe(self, job: JobView) -> None:
        """A job as the watch shows it now: forget a decision the status already reflects."""
        found = self.expected.get(job.uid)
        if found is not None and found[0].met_by(job.phase):
            del self.expected[job.uid]

    def admit(self, job: JobView) -> None:
        self.expected[job.uid] = (Expect.QUEUED, job)

    def settle(self, uid: str) -> None:
        """The job finished for good: it never waits or starts again."""
        self.expected[uid] = (Expect.FINISHED, None)

    def release(self, uid: str) -> None:
        """The job's attempt is over (to retry at its status' nextAttemptTime, or never)."""
        if self._expects(uid, Expect.RUNNING):
            del self.expected[uid]

    def forget(self, uid: str) -> None:
        self.expected.pop(uid, None)

    def started(self, uid: str) -> bool:
        """Started here, its Running status not seen yet."""
        return self._expects(uid, Expect.RUNNING)

    def admitted(self, key: PolicyKey) -> list[JobView]:
        """The policy's jobs admitted here whose Queued status has not been seen yet."""
        return [
            job
            for what, job in self.expected.values()
            if what is Expect.QUEUED and job is not None and job.key == key
        ]

    def waiting(self, jobs: Iterable[JobView]) -> list[JobView]:
        """Jobs waiting for a slot, first come first served."""
        seen: dict[str, JobView] = {}
        for job in jobs:
            what, admitted = self.expected.get(job.uid, (Expect.QUEUED, None))
            if what is not Expect.QUEUED:  # started or finished here
                continue
            if job.phase is Phase.QUEUED:
                seen[job.uid] = job
            elif job.phase is Phase.PENDING and admitted is not None:
                seen[job.uid] = admitted  # as admitted, before its Queued status is seen
        return sorted(seen.values(), key=lambda j: j.order)

    def active(self, jobs: Iterable[JobView]) -> int:
        """Jobs holding a slot: Running by their status (unless finished here), or started here."""
        running = {
            j.uid
            for j in jobs
            if j.phase is Phase.RUNNING and not self._expects(j.uid, Expect.FINISHED)
        }
        started = {uid for uid, (what, _) in self.expected.items() if what is Expect.RUNNING}
        return len(running | started)

    def undecided(self, jobs: Iterable[JobView]) -> list[JobView]:
        """Jobs not yet admitted or rejected: they may still join the queue ahead of others."""
        return [j for j in jobs if j.phase is Phase.PENDING and j.uid not in self.expected]

    def plan(self, jobs: Iterable[JobView], limit: int, now: float) -> list[JobView]:
        """The jobs to start now (they are marked started); retrying ones wait for their status'
        nextAttemptTime (`now`: Unix seconds, the wall clock the status is written in).

        A job never overtakes an older one that is still being admitted: first come, first served
        holds even when admissions finish out of order.
        """
        jobs = list(jobs)
        free = limit - self.active(jobs)
        undecided = [j.order for j in self.undecided(jobs)]
        oldest_undecided = min(undecided) if undecided else None
        chosen: list[JobView] = []
        for job in self.waiting(jobs):
            if free <= 0 or (oldest_undecided is not None and oldest_undecided < job.order):
                break
            if _next_attempt(job) > now:
                continue
            chosen.append(job)
            self.expected[job.uid] = (Expect.RUNNING, job)
            free -= 1
        return chosen

    def known(self, uid: str) -> bool:
        """Whether the operator has decided about this job already (admitted, started, done)."""
        return uid in self.expected

    def full(self, jobs: Iterable[JobView], job: JobView, limit: int) -> bool:
        """Whether job waits for a slot (rather than only for older jobs' admission)."""
        jobs = list(jobs)
        ahead = sum(1 for j in self.waiting(jobs) if j.order < job.order)
        return self.active(jobs) + ahead >= limit


def _next_attempt(job: JobView) -> float:
    """When the job may start, Unix seconds: its status' nextAttemptTime, else at once."""
    text = job.status.next_attempt_time
    try:
        return parse_time(text).timestamp() if text else 0
    except ValueError:  # not as the operator writes it: no reason to hold the job back
        return 0

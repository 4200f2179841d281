"""FIFO queueing of CaptureJobs under their policy's `maxConcurrentJobs`. Pure, in memory.

The authoritative state is the CaptureJob status (seen through Kopf's index), a retrying job's
`nextAttemptTime` included; this queue only remembers what the operator has decided but not yet
seen come back from the watch: jobs it just admitted, started or finished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


@dataclass
class JobQueue:
    """Decides which queued jobs start now, never exceeding a policy's concurrency limit."""

    started: set[str] = field(default_factory=set)
    """Jobs started here whose Running status has not been seen yet."""
    admitted: dict[str, JobView] = field(default_factory=dict)
    """Jobs admitted here whose Queued status has not been seen yet."""
    settled: set[str] = field(default_factory=set)
    """Jobs finished here (rejected, failed, succeeded) whose final status is not seen yet."""

    def observe(self, job: JobView) -> None:
        """A job as the watch shows it now: forget decisions the status already reflects."""
        if job.phase is not Phase.PENDING:
            self.admitted.pop(job.uid, None)
        if job.phase in {Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED}:
            self.started.discard(job.uid)
        if job.phase.finished:
            self.settled.discard(job.uid)

    def admit(self, job: JobView) -> None:
        self.admitted[job.uid] = job

    def settle(self, uid: str) -> None:
        """The job finished for good: it never waits or starts again."""
        self.started.discard(uid)
        self.admitted.pop(uid, None)
        self.settled.add(uid)

    def release(self, uid: str) -> None:
        """The job's attempt is over (to retry at its status' nextAttemptTime, or never)."""
        self.started.discard(uid)

    def forget(self, uid: str) -> None:
        self.started.discard(uid)
        self.admitted.pop(uid, None)
        self.settled.discard(uid)

    def waiting(self, jobs: Iterable[JobView]) -> list[JobView]:
        """Jobs waiting for a slot, first come first served."""
        seen: dict[str, JobView] = {}
        for job in jobs:
            if job.uid in self.started or job.uid in self.settled:
                continue
            if job.phase is Phase.QUEUED:
                seen[job.uid] = job
            elif job.uid in self.admitted and job.phase is Phase.PENDING:
                seen[job.uid] = self.admitted[job.uid]
        return sorted(seen.values(), key=lambda j: j.order)

    def active(self, jobs: Iterable[JobView]) -> int:
        """Jobs holding a slot: Running by their status, or started here."""
        running = {j.uid for j in jobs if j.phase is Phase.RUNNING} - self.settled
        return len(running | self.started)

    def undecided(self, jobs: Iterable[JobView]) -> list[JobView]:
        """Jobs not yet admitted or rejected: they may still join the queue ahead of others."""
        return [
            j
            for j in jobs
            if j.phase is Phase.PENDING and j.uid not in self.admitted and j.uid not in self.settled
        ]

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
            self.started.add(job.uid)
            free -= 1
        return chosen

    def known(self, uid: str) -> bool:
        """Whether the operator has decided about this job already (admitted, started, done)."""
        return uid in self.admitted or uid in self.started or uid in self.settled

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

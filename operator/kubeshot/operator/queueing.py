"""FIFO queueing of CaptureJobs under their policy's `maxConcurrentJobs`: the status is the queue.

The truth is the CaptureJob status in Kopf's index (`nextAttemptTime` included); `JobQueue` keeps
only the operator's decisions the watch has not shown yet; `plan` is a pure function of both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from kubeshot.api import Phase
from kubeshot.operator.lifecycle import parse_time
from kubeshot.operator.views import JobView


class Expect(Enum):
    """A decision about a job that its status, as the watch shows it, does not reflect yet."""

    ADMITTING = "admitting"  # being admitted: it may yet queue ahead of younger jobs
    ADMITTED = "admitted"  # admitted, no status written (a slot may free at once): Pending still
    QUEUED = "queued"  # admitted and said Queued: its status will say so
    STARTING = "starting"  # being started: its status may say Running before its pod exists
    STARTED = "started"  # started: its status will say Running (or how the attempt ended)
    FINISHED = "finished"  # for good: its status will say Succeeded or Failed

    def met_by(self, phase: Phase) -> bool:
        """Whether a status in this phase reflects the decision (in-flight steps: never)."""
        if self in {Expect.ADMITTED, Expect.QUEUED}:
            return phase is not Phase.PENDING
        if self is Expect.STARTED:
            return phase in {Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED}
        return self is Expect.FINISHED and phase.finished


Believed = tuple[Phase, JobView]  # a job and the phase the operator's decisions give it
BELIEVED_PHASE = {
    Expect.ADMITTED: Phase.QUEUED,
    Expect.QUEUED: Phase.QUEUED,
    Expect.STARTING: Phase.RUNNING,
    Expect.STARTED: Phase.RUNNING,
}


@dataclass
class JobQueue:
    """The operator's decisions the watch has not shown yet, one per job uid (client-go's
    ControllerExpectations idea), with the job as it was decided on: the job's next status that
    meets the decision clears it; steps in flight (admitting, starting) are cleared by their end.
    """

    expected: dict[str, tuple[Expect, JobView | None]] = field(default_factory=dict)

    def expects(self, uid: str, *what: Expect) -> bool:
        found = self.expected.get(uid)
        return found is not None and found[0] in what

    def expect(self, uid: str, what: Expect, job: JobView | None = None) -> None:
        self.expected[uid] = (what, job)

    def forget(self, uid: str, *only: Expect) -> None:
        """Drop the job's expectation (if it is one of `only`, when given)."""
        if not only or self.expects(uid, *only):
            self.expected.pop(uid, None)

    def observe(self, job: JobView) -> bool:
        """A job as the watch shows it now: forget a decision the status reflects; whether the
        status is of the operator's making (a start under way says Running before its pod exists
        and stays expected: the status changes nothing it decided)."""
        found = self.expected.get(job.uid)
        if found is not None and found[0].met_by(job.phase):
            del self.expected[job.uid]
            return True
        return found is not None and found[0] is Expect.STARTING and job.phase is Phase.RUNNING

    def believed(self, jobs: Iterable[JobView]) -> list[Believed]:
        """The unfinished jobs as the operator's decisions make them: admitted ones Queued,
        started ones Running, finished ones gone (their status may lag)."""
        found: list[Believed] = []
        for job in jobs:
            what, decided = self.expected.get(job.uid, (None, None))
            if what is Expect.FINISHED or job.status.phase.finished:
                continue
            phase = BELIEVED_PHASE.get(what, job.phase) if what is not None else job.phase
            found.append((phase, decided if what is Expect.ADMITTED and decided else job))
        return found


def plan(jobs: Iterable[Believed], limit: int, now: float) -> list[JobView]:
    """The queued jobs to start now, first come first served, as many as `limit` (the policy's
    maxConcurrentJobs) leaves beside the running ones. Pure.

    A retrying job waits for its status' nextAttemptTime (`now`: Unix seconds, the wall clock
    the status is written in) without holding younger jobs back; no job overtakes an older one
    still Pending (being admitted): FIFO holds even when admissions finish out of order.
    """
    running, queued, pending = 0, [], []
    for phase, job in jobs:
        running += phase is Phase.RUNNING
        if phase is Phase.QUEUED:
            queued.append(job)
        elif phase is Phase.PENDING:
            pending.append(job.order)
    oldest_pending = min(pending, default=None)
    free = limit - running
    chosen: list[JobView] = []
    for job in sorted(queued, key=lambda j: j.order):
        if free <= 0 or (oldest_pending is not None and oldest_pending < job.order):
            break
        if _next_attempt(job) <= now:
            chosen.append(job)
            free -= 1
    return chosen


def waits_for_slot(jobs: Iterable[Believed], job: JobView, limit: int) -> bool:
    """Whether the queued `job` waits for a slot (rather than only for older jobs' admission):
    the running jobs and the queued ones ahead of it take every slot."""
    taken = sum(
        1
        for phase, other in jobs
        if phase is Phase.RUNNING or (phase is Phase.QUEUED and other.order < job.order)
    )
    return taken >= limit


def _next_attempt(job: JobView) -> float:
    """When the job may start, Unix seconds: its status' nextAttemptTime, else at once."""
    text = job.status.next_attempt_time
    try:
        return parse_time(text).timestamp() if text else 0
    except ValueError:  # not as the operator writes it: no reason to hold the job back
        return 0

"""FIFO queueing under maxConcurrentJobs, with the operator's own not-yet-seen decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from kubeshot.api import CaptureJobStatus, Phase
from kubeshot.operator.queueing import JobQueue, JobView

RETRY_AT = "2026-01-01T00:00:10Z"


def job(name: str, phase: Phase, created: str = "2026-01-01T00:00:00Z") -> JobView:
    return JobView(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        policy="default",
        created=created,
        generation=1,
        status=CaptureJobStatus(phase=phase),
    )


def test_first_come_first_served_up_to_the_limit() -> None:
    queue = JobQueue()
    jobs = [
        job("c", Phase.QUEUED, "2026-01-01T00:00:03Z"),
        job("a", Phase.QUEUED, "2026-01-01T00:00:01Z"),
        job("b", Phase.QUEUED, "2026-01-01T00:00:02Z"),
        job("r", Phase.RUNNING),
    ]
    assert [j.name for j in queue.plan(jobs, limit=3, now=0)] == ["a", "b"]
    assert queue.plan(jobs, limit=3, now=0) == []  # started ones hold their slots


def test_same_second_is_ordered_by_name() -> None:
    queue = JobQueue()
    jobs = [job("job-2", Phase.QUEUED), job("job-1", Phase.QUEUED)]
    assert [j.name for j in queue.plan(jobs, limit=1, now=0)] == ["job-1"]


def test_started_job_holds_its_slot_until_it_finishes() -> None:
    queue = JobQueue()
    a, b = job("a", Phase.QUEUED), job("b", Phase.QUEUED)
    assert queue.plan([a, b], limit=1, now=0) == [a]
    running_a = job("a", Phase.RUNNING)
    queue.observe(running_a)
    assert queue.plan([running_a, b], limit=1, now=0) == []
    done_a = job("a", Phase.SUCCEEDED)
    queue.observe(done_a)
    assert queue.plan([done_a, b], limit=1, now=0) == [b]


def test_admitted_jobs_are_queued_before_their_status_is_seen() -> None:
    queue = JobQueue()
    pending = job("a", Phase.PENDING)
    assert queue.plan([pending], limit=1, now=0) == []
    queue.admit(job("a", Phase.QUEUED))
    assert [j.name for j in queue.plan([pending], limit=1, now=0)] == ["a"]


def test_retrying_job_waits_for_its_backoff_without_blocking_others() -> None:
    a = job("a", Phase.QUEUED, "2026-01-01T00:00:01Z")
    a = replace(a, status=CaptureJobStatus(phase=Phase.QUEUED, next_attempt_time=RETRY_AT))
    b = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    # A fresh queue: what an operator that just took over knows. The status alone holds a back.
    queue = JobQueue()
    at = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp()
    assert queue.plan([a, b], limit=1, now=at - 0.5) == [b]
    queue.release(b.uid)
    assert queue.plan([a], limit=1, now=at - 0.5) == []
    assert queue.plan([a], limit=1, now=at) == [a]


def test_a_next_attempt_time_the_operator_did_not_write_holds_nobody_back() -> None:
    odd = replace(
        job("a", Phase.QUEUED),
        status=CaptureJobStatus(phase=Phase.QUEUED, next_attempt_time="soon"),
    )
    assert JobQueue().plan([odd], limit=1, now=0) == [odd]


def test_forgotten_job_frees_its_slot() -> None:
    queue = JobQueue()
    a, b = job("a", Phase.QUEUED), job("b", Phase.QUEUED)
    assert queue.plan([a, b], limit=1, now=0) == [a]
    queue.forget(a.uid)
    assert queue.plan([b], limit=1, now=0) == [b]


def test_no_job_overtakes_an_older_one_still_being_admitted() -> None:
    queue = JobQueue()
    older = job("a", Phase.PENDING, "2026-01-01T00:00:01Z")
    younger = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    assert queue.plan([older, younger], limit=2, now=0) == []
    queue.admit(job("a", Phase.QUEUED, "2026-01-01T00:00:01Z"))
    assert [j.name for j in queue.plan([older, younger], limit=1, now=0)] == ["a"]


def test_a_rejected_job_holds_nobody_back() -> None:
    queue = JobQueue()
    older = job("a", Phase.PENDING, "2026-01-01T00:00:01Z")
    younger = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    queue.settle(older.uid)
    assert queue.plan([older, younger], limit=1, now=0) == [younger]


def test_an_admitted_job_starts_once_before_its_status_is_seen() -> None:
    queue = JobQueue()
    pending = job("a", Phase.PENDING)
    queue.admit(job("a", Phase.QUEUED))
    assert [j.name for j in queue.plan([pending], limit=5, now=0)] == ["a"]
    assert queue.plan([pending], limit=5, now=0) == []


def test_a_settled_job_never_starts_again_even_while_its_status_lags() -> None:
    queue = JobQueue()
    stale = job("a", Phase.QUEUED)
    assert queue.plan([stale], limit=1, now=0) == [stale]
    queue.settle(stale.uid)
    assert queue.plan([stale], limit=1, now=0) == []
    queue.observe(job("a", Phase.FAILED))
    assert queue.expected == {}


def test_a_settled_job_frees_its_slot_before_its_status_is_seen() -> None:
    queue = JobQueue()
    running, waiting = job("a", Phase.RUNNING), job("b", Phase.QUEUED)
    assert queue.plan([running, waiting], limit=1, now=0) == []
    queue.settle(running.uid)
    assert queue.plan([running, waiting], limit=1, now=0) == [waiting]


def test_a_view_differs_when_its_status_does() -> None:
    # Kopf's index replaces a job's view only when the new one compares unequal.
    body = {"metadata": {"name": "a", "namespace": "ns", "uid": "u"}, "spec": {}}
    pending = JobView.from_body(body)
    running = JobView.from_body({**body, "status": {"phase": "Running", "podName": "a-1"}})
    assert pending == JobView.from_body(body)
    assert running != pending
    assert running.phase is Phase.RUNNING and running.status.pod_name == "a-1"
    assert JobView.from_body({**body, "status": {"phase": "Bogus"}}).phase is Phase.PENDING


def test_one_expectation_per_job_cleared_only_by_a_status_that_meets_it() -> None:
    queue = JobQueue()
    pending = job("a", Phase.PENDING)
    queue.admit(job("a", Phase.QUEUED))
    assert [j.name for j in queue.plan([pending], limit=1, now=0)] == ["a"]
    assert list(queue.expected) == ["uid-a"]  # started replaces admitted
    queue.observe(job("a", Phase.QUEUED))  # an older write seen late: the start still holds
    assert queue.started("uid-a")
    assert queue.plan([job("a", Phase.QUEUED)], limit=1, now=0) == []
    queue.observe(job("a", Phase.RUNNING))
    assert queue.expected == {}
    assert queue.active([job("a", Phase.RUNNING)]) == 1

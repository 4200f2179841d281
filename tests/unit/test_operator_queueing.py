"""FIFO queueing under maxConcurrentJobs: `plan` over the index as a pure function, and the
operator's own decisions the watch has not shown yet (`JobQueue`'s expectations)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from kubeshot.api import CaptureJobStatus, Phase
from kubeshot.operator.queueing import Believed, Expect, JobQueue, plan, waits_for_slot
from kubeshot.operator.views import JobView

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


def seen(*jobs: JobView) -> list[Believed]:
    """Jobs as the index shows them, no decision of the operator's pending."""
    return [(j.phase, j) for j in jobs]


def names(jobs: list[JobView]) -> list[str]:
    return [j.name for j in jobs]


def test_first_come_first_served_up_to_the_limit() -> None:
    jobs = seen(
        job("c", Phase.QUEUED, "2026-01-01T00:00:03Z"),
        job("a", Phase.QUEUED, "2026-01-01T00:00:01Z"),
        job("b", Phase.QUEUED, "2026-01-01T00:00:02Z"),
        job("r", Phase.RUNNING),
        job("done", Phase.SUCCEEDED),
    )
    assert names(plan(jobs, limit=3, now=0)) == ["a", "b"]
    assert names(plan(jobs, limit=1, now=0)) == []  # the running one holds the only slot


def test_same_second_is_ordered_by_name() -> None:
    assert names(plan(seen(job("job-2", Phase.QUEUED), job("job-1", Phase.QUEUED)), 1, 0)) == [
        "job-1"
    ]


def test_no_job_overtakes_an_older_one_still_pending() -> None:
    older = job("a", Phase.PENDING, "2026-01-01T00:00:01Z")
    younger = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    assert plan(seen(older, younger), limit=2, now=0) == []
    assert names(plan(seen(job("z", Phase.PENDING, "2026-01-01T00:00:03Z"), younger), 2, 0)) == [
        "b"
    ]


def test_retrying_job_waits_for_its_backoff_without_blocking_others() -> None:
    # The status alone holds it back: what an operator that just took over knows.
    a = job("a", Phase.QUEUED, "2026-01-01T00:00:01Z")
    a = replace(a, status=CaptureJobStatus(phase=Phase.QUEUED, next_attempt_time=RETRY_AT))
    b = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    at = datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC).timestamp()
    assert plan(seen(a, b), limit=1, now=at - 0.5) == [b]
    assert plan(seen(a), limit=1, now=at - 0.5) == []
    assert plan(seen(a), limit=1, now=at) == [a]


def test_a_next_attempt_time_the_operator_did_not_write_holds_nobody_back() -> None:
    odd = replace(
        job("a", Phase.QUEUED),
        status=CaptureJobStatus(phase=Phase.QUEUED, next_attempt_time="soon"),
    )
    assert plan(seen(odd), limit=1, now=0) == [odd]


def test_a_job_waits_for_a_slot_only_when_older_and_running_jobs_take_them_all() -> None:
    a, b = (
        job("a", Phase.QUEUED, "2026-01-01T00:00:01Z"),
        job("b", Phase.QUEUED, "2026-01-01T00:00:02Z"),
    )
    jobs = seen(job("r", Phase.RUNNING), a, b)
    assert not waits_for_slot(jobs, a, limit=2) and waits_for_slot(jobs, b, limit=2)
    assert waits_for_slot(jobs, a, limit=1)


def test_decisions_not_yet_seen_are_what_plan_reads() -> None:
    queue = JobQueue()
    pending, running, stale = (
        job("a", Phase.PENDING),
        job("b", Phase.RUNNING),
        job("c", Phase.QUEUED),
    )
    admitted = job("a", Phase.QUEUED)
    queue.expect(pending.uid, Expect.ADMITTED, admitted)  # its Queued status not written yet
    queue.expect(running.uid, Expect.FINISHED)  # its Succeeded status not seen yet
    queue.expect(stale.uid, Expect.STARTING, stale)  # its Running status not written yet
    believed = queue.believed([pending, running, stale])
    assert [(p, j.name) for p, j in believed] == [(Phase.QUEUED, "a"), (Phase.RUNNING, "c")]
    assert believed[0][1] is admitted
    assert plan(believed, limit=1, now=0) == []  # c holds the slot b freed
    assert plan(believed, limit=2, now=0) == [admitted]


def test_a_job_being_admitted_holds_younger_ones_back() -> None:
    queue = JobQueue()
    older = job("a", Phase.PENDING, "2026-01-01T00:00:01Z")
    younger = job("b", Phase.QUEUED, "2026-01-01T00:00:02Z")
    queue.expect(older.uid, Expect.ADMITTING)
    assert plan(queue.believed([older, younger]), limit=2, now=0) == []
    queue.forget(older.uid, Expect.ADMITTING)  # its admission failed half-way: still Pending
    assert plan(queue.believed([older, younger]), limit=2, now=0) == []
    queue.expect(older.uid, Expect.FINISHED)  # rejected
    assert plan(queue.believed([older, younger]), limit=2, now=0) == [younger]


def test_each_expectation_is_cleared_only_by_a_status_that_meets_it() -> None:
    queue = JobQueue()
    queue.expect("uid-a", Expect.STARTING, job("a", Phase.QUEUED))
    queue.observe(job("a", Phase.RUNNING))  # its pod may not exist yet: still starting
    assert queue.expects("uid-a", Expect.STARTING)
    queue.expect("uid-a", Expect.STARTED, job("a", Phase.QUEUED))
    queue.observe(job("a", Phase.QUEUED))  # an older write seen late: the start still holds
    assert queue.expects("uid-a", Expect.STARTED)
    queue.observe(job("a", Phase.RUNNING))
    assert queue.expected == {}
    queue.expect("uid-a", Expect.FINISHED)
    queue.observe(job("a", Phase.RUNNING))
    assert queue.expects("uid-a", Expect.FINISHED)
    queue.observe(job("a", Phase.FAILED))
    assert queue.expected == {}
    for what in (Expect.ADMITTED, Expect.QUEUED):
        queue.expect("uid-a", what, job("a", Phase.QUEUED))
        queue.observe(job("a", Phase.PENDING))
        assert queue.expects("uid-a", what)
        queue.observe(job("a", Phase.QUEUED))
        assert queue.expected == {}


def test_forget_only_what_it_names() -> None:
    queue = JobQueue()
    queue.expect("uid-a", Expect.FINISHED)
    queue.forget("uid-a", Expect.STARTING, Expect.STARTED)  # a retry's release, come too late
    assert queue.expects("uid-a", Expect.FINISHED)
    queue.forget("uid-a")
    assert queue.expected == {}


def test_a_view_differs_when_its_status_does() -> None:
    # Kopf's index replaces a job's view only when the new one compares unequal.
    body = {"metadata": {"name": "a", "namespace": "ns", "uid": "u"}, "spec": {}}
    pending = JobView.from_body(body)
    running = JobView.from_body({**body, "status": {"phase": "Running", "podName": "a-1"}})
    assert pending == JobView.from_body(body)
    assert running != pending
    assert running.phase is Phase.RUNNING and running.status.pod_name == "a-1"
    assert JobView.from_body({**body, "status": {"phase": "Bogus"}}).phase is Phase.PENDING
    assert JobView.from_body(running.body()) == running

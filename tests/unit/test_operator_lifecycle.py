"""Pod end → CaptureJob outcome, retries with backoff, conditions and status patches."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from kubeshot.api import CaptureJobStatus, CaptureReport, Failure, FailureReason
from kubeshot.operator.lifecycle import (
    KUBELET_SLACK_SECONDS,
    Outcome,
    backoff_seconds,
    finished_status,
    may_retry,
    parse_time,
    pod_outcome,
    queued_status,
    rejected_status,
    retry_status,
    running_status,
    set_condition,
)

SHA = "a" * 64
RESULT = {"contentType": "image/png", "bytes": 1234, "sha256": SHA, "width": 1280, "height": 720}


def pod(
    phase: str = "Failed",
    terminated: dict[str, Any] | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if reason:
        status["reason"] = reason
        status["message"] = f"Pod was {reason}"
    if terminated is not None:
        status["containerStatuses"] = [{"name": "capture", "state": {"terminated": terminated}}]
    return {"metadata": {"name": "shot-1"}, "status": status}


def failure(reason: FailureReason, message: str) -> Outcome:
    return Outcome(failure=Failure(reason=reason, message=message))


def test_running_or_pending_pod_has_no_outcome() -> None:
    assert pod_outcome(pod("Pending")) is None
    assert pod_outcome(pod("Running")) is None


def test_termination_message_result_is_the_result() -> None:
    message = json.dumps({"result": RESULT})
    outcome = pod_outcome(pod("Succeeded", {"exitCode": 0, "message": message}))
    assert outcome == Outcome(result=CaptureReport.model_validate(RESULT))


def test_termination_message_failure_is_the_failure() -> None:
    message = json.dumps({"failure": {"reason": "BlockedByPolicy", "message": "10.0.0.1 private"}})
    outcome = pod_outcome(pod("Failed", {"exitCode": 3, "message": message}))
    assert outcome == failure(FailureReason.BLOCKED_BY_POLICY, "10.0.0.1 private")


def test_oom_killed_is_memory_limit_exceeded() -> None:
    outcome = pod_outcome(pod("Failed", {"exitCode": 137, "reason": "OOMKilled"}))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.MEMORY_LIMIT_EXCEEDED


def test_deadline_exceeded_is_timeout() -> None:
    outcome = pod_outcome(pod("Failed", None, reason="DeadlineExceeded"))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.TIMEOUT


def test_eviction_is_pod_lost() -> None:
    outcome = pod_outcome(pod("Failed", None, reason="Evicted"))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.POD_LOST


def test_a_pod_not_ended_long_past_its_deadline_is_lost() -> None:
    """Only the kubelet enforces activeDeadlineSeconds: a pod still unfinished after its
    deadline, its termination grace and KUBELET_SLACK_SECONDS has no kubelet any more."""
    created = parse_time("2026-01-01T00:00:00Z")
    lost = pod("Running")
    lost["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    lost["spec"] = {"activeDeadlineSeconds": 20, "terminationGracePeriodSeconds": 5}
    due = created + timedelta(seconds=25 + KUBELET_SLACK_SECONDS)
    assert pod_outcome(lost) is None  # without a time, never
    assert pod_outcome(lost, due - timedelta(seconds=1)) is None
    outcome = pod_outcome(lost, due)
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.POD_LOST
    assert "Running 15s past its 20s deadline" in outcome.failure.message
    # Counted from the kubelet's start of the pod, when it has one.
    lost["status"]["startTime"] = "2026-01-01T00:00:30Z"
    assert pod_outcome(lost, due) is None
    assert pod_outcome(lost, due + timedelta(seconds=30)) is not None
    # A pod that ended has its own outcome, however late it is seen.
    ended = {**pod("Failed", None, reason="DeadlineExceeded"), "spec": lost["spec"]}
    ended["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    late = pod_outcome(ended, due + timedelta(hours=1))
    assert late is not None
    assert late.failure is not None
    assert late.failure.reason is FailureReason.TIMEOUT


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1, FailureReason.INTERNAL),
        (2, FailureReason.INVALID_SPEC),
        (3, FailureReason.BLOCKED_BY_POLICY),
        (4, FailureReason.NAVIGATION_FAILED),
        (5, FailureReason.DOWNLOAD_LIMIT_EXCEEDED),
        (139, FailureReason.INTERNAL),
    ],
)
def test_exit_code_without_a_message_names_the_reason(code: int, reason: FailureReason) -> None:
    outcome = pod_outcome(pod("Failed", {"exitCode": code, "reason": "Error"}))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is reason
    assert f"code {code}" in outcome.failure.message


def test_success_without_a_result_is_internal() -> None:
    outcome = pod_outcome(pod("Succeeded", {"exitCode": 0, "message": "not json"}))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.INTERNAL


def test_a_result_with_a_failing_exit_code_is_not_trusted() -> None:
    message = json.dumps({"result": RESULT})
    outcome = pod_outcome(pod("Failed", {"exitCode": 4, "message": message}))
    assert outcome is not None
    assert outcome.failure is not None
    assert outcome.failure.reason is FailureReason.NAVIGATION_FAILED


def test_backoff_doubles_up_to_the_limit() -> None:
    assert [backoff_seconds(n, 5, 30) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 30, 30]


def test_only_retriable_reasons_are_retried_and_only_so_often() -> None:
    lost = Failure(reason=FailureReason.POD_LOST, message="gone")
    blocked = Failure(reason=FailureReason.BLOCKED_BY_POLICY, message="no")
    assert may_retry(lost, attempts=1, retries=2)
    assert may_retry(lost, attempts=2, retries=2)
    assert not may_retry(lost, attempts=3, retries=2)
    assert not may_retry(lost, attempts=1, retries=0)
    assert not may_retry(blocked, attempts=1, retries=2)


def test_condition_keeps_its_transition_time_while_the_status_holds() -> None:
    first = set_condition([], "Ready", True, "A", "a", 1, "2026-01-01T00:00:00Z")
    same = set_condition(first, "Ready", True, "B", "b", 2, "2026-01-02T00:00:00Z")
    flipped = set_condition(same, "Ready", False, "C", "c", 3, "2026-01-03T00:00:00Z")
    assert [c.to_wire() for c in same] == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "B",
            "message": "b",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": 2,
        }
    ]
    assert flipped[0].last_transition_time == "2026-01-03T00:00:00Z"


AT = "2026-01-01T00:00:00Z"


def test_the_status_patches_of_a_job_life() -> None:
    rejected = rejected_status(
        CaptureJobStatus(),
        Failure(reason=FailureReason.POLICY_NOT_FOUND, message="no policy"),
        1,
        AT,
    ).patch()
    assert rejected["phase"] == "Failed"
    assert rejected["failure"] == {"reason": "PolicyNotFound", "message": "no policy"}
    assert [(c["type"], c["status"]) for c in rejected["conditions"]] == [
        ("Admitted", "False"),
        ("Finished", "True"),
    ]

    queued = queued_status(CaptureJobStatus(), 1, AT)
    # A merge patch: what it does not set (attempts, podName) stays as the job has it.
    assert set(queued.patch()) == {"phase", "observedGeneration", "conditions"}
    assert queued.patch()["phase"] == "Queued"
    running_model = running_status(queued, "shot-1", 1, SHA, 1, AT)
    running = running_model.patch()
    assert running == {
        "phase": "Running",
        "observedGeneration": 1,
        "podName": "shot-1",
        "nextAttemptTime": None,  # removed: the retry it waited for is this attempt
        "attempts": 1,
        "startTime": AT,
        "uploadTokenSha256": SHA,
        "conditions": running["conditions"],
    }
    assert [(c["type"], c["status"], c["reason"]) for c in running["conditions"]] == [
        ("Admitted", "True", "Admitted"),
        ("Started", "True", "PodCreated"),
    ]
    lost = Failure(reason=FailureReason.POD_LOST, message="gone")
    retry = retry_status(running_model, lost, 5, 1, AT).patch()
    assert retry["phase"] == "Queued"
    assert retry["conditions"][-1]["reason"] == "Retrying"
    assert "retrying in 5s" in retry["conditions"][-1]["message"]
    # The backoff is kept in the status (an operator taking over honours it), rounded up to
    # whole seconds plus the second `at` may have lost.
    assert retry["nextAttemptTime"] == "2026-01-01T00:00:06Z"
    assert retry_status(running_model, lost, 2.5, 1, AT).next_attempt_time == "2026-01-01T00:00:04Z"

    result = CaptureReport.model_validate(RESULT)
    done = finished_status(running_model, Outcome(result=result), 1, AT).patch()
    assert done["phase"] == "Succeeded"
    assert done["result"] == result.to_wire()
    assert done["nextAttemptTime"] is None
    assert done["failure"] is None
    assert done["completionTime"] == AT
    finished = [c for c in done["conditions"] if c["type"] == "Finished"]
    assert finished[0]["status"] == "True"
    assert finished[0]["reason"] == "Succeeded"


@pytest.mark.parametrize(
    "bad",
    [
        {"blockedRequests": 10**30},  # no int64: the status patch would be refused
        {"bytesTransferred": -1},
        {"timings": {"totalMs": float("nan")}},
        {"timings": {"renderMs": float("inf")}},
    ],
)
def test_a_report_the_status_could_not_hold_is_no_result(bad: dict[str, Any]) -> None:
    message = json.dumps({"result": {**RESULT, **bad}})
    outcome = pod_outcome(pod("Succeeded", {"exitCode": 0, "message": message}))
    assert outcome is not None and outcome.result is None
    assert outcome.failure is not None and outcome.failure.reason is FailureReason.INTERNAL

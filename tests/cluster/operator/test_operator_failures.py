"""Every failure reason, from validation to the pod's end; retries; lost pods."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

from kubeshot.operator.lifecycle import parse_time
from tests.cluster.operator.conftest import Cluster, Operator
from tests.support import wait_for

SHA = "0" * 64
RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 10, "sha256": SHA}})


def failure(reason: str, message: str) -> str:
    return json.dumps({"failure": {"reason": reason, "message": message}})


def failed_with(cluster: Cluster, name: str) -> dict[str, Any]:
    job = cluster.wait_phase(name, "Failed", "Succeeded")
    assert job["status"]["phase"] == "Failed", job["status"]
    found: dict[str, Any] = job["status"]["failure"]
    return found


def test_jobs_that_can_never_run_fail_once_with_a_reason(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy(features={"allowedFormats": ["png", "pdf"]})
    cluster.create_job("no-policy", html="<p>x</p>", policyRef="missing")
    cluster.create_job("violation", html="<p>x</p>", format="jpeg")
    # A rule only the model states (the CRD cannot do the arithmetic): the operator refuses it.
    margins = {"left": "150mm", "right": "150mm"}
    cluster.create_job(
        "bad-margins", html="<p>x</p>", format="pdf", pdf={"format": "A4", "margin": margins}
    )

    assert failed_with(cluster, "no-policy") == {
        "reason": "PolicyNotFound",
        "message": f"ScreenshotPolicy 'missing' not found in namespace {cluster.namespace}",
    }
    violation = failed_with(cluster, "violation")
    assert violation["reason"] == "PolicyViolation"
    assert "format jpeg is not allowed" in violation["message"]
    bad_margins = failed_with(cluster, "bad-margins")
    assert bad_margins["reason"] == "InvalidSpec"
    assert "leave no room on the page" in bad_margins["message"]

    for name in ("no-policy", "violation", "bad-margins"):
        job = cluster.job(name)
        assert job is not None
        status = job["status"]
        assert status["observedGeneration"] == job["metadata"]["generation"]
        admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
        assert admitted["status"] == "False"
        assert admitted["observedGeneration"] == job["metadata"]["generation"]
        assert "attempts" not in status or status["attempts"] == 0
    assert cluster.capture_pods() == []
    warnings = [e for e in cluster.list("events") if e["type"] == "Warning"]
    assert {e["reason"] for e in warnings} >= {"PolicyNotFound", "PolicyViolation", "InvalidSpec"}


ENDINGS = [
    # (job, exit code, container reason, termination message, expected reason)
    ("blocked", 3, "Error", failure("BlockedByPolicy", "10.0.0.1 is private"), "BlockedByPolicy"),
    (
        "nav",
        4,
        "Error",
        failure("NavigationFailed", "net::ERR_NAME_NOT_RESOLVED"),
        "NavigationFailed",
    ),
    (
        "download",
        5,
        "Error",
        failure("DownloadLimitExceeded", "over 50 MiB"),
        "DownloadLimitExceeded",
    ),
    ("too-large", 5, "Error", failure("ResultTooLarge", "over 25 MiB"), "ResultTooLarge"),
    ("engine-timeout", 4, "Error", failure("Timeout", "no load in 30s"), "Timeout"),
    (
        "target-status",
        4,
        "Error",
        failure("TargetHttpError", "the target answered HTTP 404 at https://example.com/"),
        "TargetHttpError",
    ),
    ("exit-2", 2, "Error", "", "InvalidSpec"),
    ("exit-5", 5, "Error", "", "DownloadLimitExceeded"),
    ("oom", 137, "OOMKilled", "", "MemoryLimitExceeded"),
    ("internal", 1, "Error", "", "Internal"),
]


def test_every_way_a_capture_pod_ends_becomes_its_reason(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy(limits={"maxConcurrentJobs": 50})
    for name, *_ in ENDINGS:
        cluster.create_job(name, html="<p>x</p>", retries=0)
    cluster.create_job("deadline", html="<p>x</p>", retries=0)
    for name, code, reason, message, _ in ENDINGS:
        cluster.wait_pod(f"{name}-1")
        cluster.terminate(f"{name}-1", code, reason, message)
    cluster.wait_pod("deadline-1")
    cluster.write_pod_status(
        "deadline-1",
        {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"},
    )
    for name, *_, expected in ENDINGS:
        assert failed_with(cluster, name)["reason"] == expected, name
    assert failed_with(cluster, "deadline")["reason"] == "Timeout"
    assert (
        failed_with(cluster, "oom")["message"] == "the page used more memory than the policy allows"
    )
    wait_for(lambda: cluster.capture_pods() == [], what="every finished pod to be removed")
    metrics = operator.metrics()
    assert (
        'kubeshot_operator_jobs_finished_total{phase="Failed",reason="MemoryLimitExceeded"} 1.0'
        in metrics
    )


def test_lost_pods_are_retried_with_backoff_then_pod_lost(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    cluster.create_job("lost", html="<p>x</p>", retries=1)
    cluster.wait_pod("lost-1")
    cluster.kubectl("delete", "pod", "lost-1", "-n", cluster.namespace, "--wait=false")
    cluster.wait_pod("lost-2")  # the retry, after a backoff
    job = cluster.job("lost")
    assert job is not None
    assert job["status"]["attempts"] == 2
    cluster.kubectl("delete", "pod", "lost-2", "-n", cluster.namespace, "--wait=false")
    lost = failed_with(cluster, "lost")
    assert lost["reason"] == "PodLost"
    assert "lost-2" in lost["message"]

    def reasons() -> list[str]:
        return [
            e["reason"] for e in cluster.list("events") if e["involvedObject"]["name"] == "lost"
        ]

    wait_for(lambda: "PodLost" in reasons(), what="the PodLost event")
    assert reasons().count("Retrying") == 1
    assert reasons().count("Started") == 2
    assert cluster.get("pods", "lost-3") is None


def test_internal_failure_is_retried_and_the_retry_can_succeed(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    cluster.create_job("flaky", html="<p>x</p>", retries=2)
    cluster.wait_pod("flaky-1")
    cluster.terminate("flaky-1", 1, "Error", failure("Internal", "upload failed: 503"))
    cluster.wait_pod("flaky-2")
    cluster.terminate("flaky-2", 0, "Completed", RESULT)
    job = cluster.wait_phase("flaky", "Succeeded", "Failed")
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["attempts"] == 2
    assert job["status"]["result"]["sha256"] == SHA
    assert "failure" not in job["status"]


def test_a_refused_pod_fails_the_attempt_not_the_operator(
    operator: Operator, cluster: Cluster
) -> None:
    # The RuntimeClass admission plugin refuses pods naming an unknown RuntimeClass: the attempt
    # fails with Internal (retried, here never) instead of the operator retrying forever.
    cluster.create_policy(runtime={"runtimeClassName": "does-not-exist"})
    cluster.create_job("refused", html="<p>x</p>", retries=0)
    refused = failed_with(cluster, "refused")
    assert refused["reason"] == "Internal"
    assert refused["message"].startswith("capture pod not created:")
    assert "does-not-exist" in refused["message"]
    assert cluster.capture_pods() == []


def test_an_operator_that_takes_over_honours_the_retry_backoff(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    # The backoff lives in the job's status (nextAttemptTime), not in the operator's memory: a
    # successor started at once does not start the retry early (it used to start it at once).
    backoff = {"retry_backoff_seconds": 6, "retry_backoff_max_seconds": 6}
    first = start_operator(**backoff)
    cluster.create_policy()
    cluster.create_job("patient", html="<p>x</p>", retries=1)
    cluster.wait_pod("patient-1")
    cluster.terminate("patient-1", 1, "Error", failure("Internal", "upload failed: 503"))
    waiting = wait_for(
        lambda: (cluster.job("patient") or {}).get("status", {}).get("nextAttemptTime"),
        what="the job's nextAttemptTime",
    )
    first.stop(signal.SIGKILL)
    start_operator(**backoff)
    retry = cluster.wait_pod("patient-2", timeout=60)
    assert parse_time(retry["metadata"]["creationTimestamp"]) >= parse_time(waiting)
    running = cluster.wait_phase("patient", "Running")
    assert "nextAttemptTime" not in running["status"]  # the attempt it waited for is running

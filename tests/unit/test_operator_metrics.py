"""The operator's controller-style metrics, through the real Kopf handlers and the Reconciler on an
in-memory API server: a reconcile's result (success, requeue, error) and the work queue's wait."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kubeshot.kube import ApiError
from kubeshot.operator import handlers, metrics
from kubeshot.operator.reconciling import Reconciler
from tests.unit.test_operator_reconciling import (
    JOBS,
    PODS,
    FakeApi,
    add_job,
    add_policy,
    api,  # noqa: F401 - fixture
    reconciler,  # noqa: F401 - fixture
    reindex,
)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def reconciles(controller: str) -> dict[str, float]:
    results = (metrics.SUCCESS, metrics.REQUEUE, metrics.ERROR)
    counts = {
        r: sample("kubeshot_operator_reconcile_total", controller=controller, result=r)
        for r in results
    }
    counts["errors"] = sample("kubeshot_operator_reconcile_errors_total", controller=controller)
    return counts


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def kopf_kwargs(bound: Reconciler) -> dict[str, Any]:
    """What Kopf passes a handler: the memo and the indexes (the Reconciler's current ones)."""
    return {
        "memo": {"reconciler": bound},
        "capturejob_index": bound.jobs,
        "screenshotpolicy_index": bound.policies.index,
        "warmpod_index": {},
    }


async def test_a_started_job_is_a_success_and_its_queue_wait_is_observed(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    add_policy(api)
    body = add_job(api, "shot")  # created 2026-01-01T00:00:00Z: long ago, by the clock
    reindex(reconciler, api)
    before = reconciles("CaptureJob")
    waits = sample("kubeshot_operator_workqueue_queue_duration_seconds_count")
    await handlers.capturejob_event(event={"type": "ADDED"}, body=body, **kopf_kwargs(reconciler))
    assert f"{PODS}/shot-1" in api.objects
    assert delta(before, reconciles("CaptureJob")) == {
        "success": 1,
        "requeue": 0,
        "error": 0,
        "errors": 0,
    }
    assert sample("kubeshot_operator_workqueue_queue_duration_seconds_count") == waits + 1
    over_an_hour = sample("kubeshot_operator_workqueue_queue_duration_seconds_bucket", le="3600.0")
    assert over_an_hour < sample("kubeshot_operator_workqueue_queue_duration_seconds_count")


async def test_a_lost_pod_with_retries_left_is_a_requeue(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    add_policy(api)
    body = add_job(api, "shot", html="<p>x</p>", retries=2)
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    pod = api.objects[f"{PODS}/shot-1"]
    before = reconciles("Pod")
    await handlers.pod_event(event={"type": "DELETED"}, body=pod, **kopf_kwargs(reconciler))
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["phase"] != "Failed"  # a retry is due
    assert delta(before, reconciles("Pod")) == {"success": 0, "requeue": 1, "error": 0, "errors": 0}


async def test_an_api_error_is_an_error_left_to_the_sweeper(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)

    async def unavailable(*args: Any, **kwargs: Any) -> None:
        raise ApiError(503, "ServiceUnavailable", "the API server is unavailable")

    monkeypatch.setattr(reconciler, "job_event", unavailable)
    before = reconciles("CaptureJob")
    # The handler does not raise (Kopf would only log it): the sweeper finishes the job.
    await handlers.capturejob_event(event={"type": "ADDED"}, body=body, **kopf_kwargs(reconciler))
    assert delta(before, reconciles("CaptureJob")) == {
        "success": 0,
        "requeue": 0,
        "error": 1,
        "errors": 1,
    }


def test_left_queue_measures_from_the_jobs_creation() -> None:
    count = sample("kubeshot_operator_workqueue_queue_duration_seconds_count")
    total = sample("kubeshot_operator_workqueue_queue_duration_seconds_sum")
    metrics.left_queue("2026-01-01T00:00:00Z", now=datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC))
    assert sample("kubeshot_operator_workqueue_queue_duration_seconds_count") == count + 1
    assert sample("kubeshot_operator_workqueue_queue_duration_seconds_sum") == total + 90
    metrics.left_queue("", now=datetime(2026, 1, 1, tzinfo=UTC))  # no timestamp: not measured
    assert sample("kubeshot_operator_workqueue_queue_duration_seconds_count") == count + 1

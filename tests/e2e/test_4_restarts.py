"""The chart's pods restarted as Kubernetes restarts them: nothing a user submitted is lost."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.e2e.conftest import NAMESPACE, POLL, WAIT, Gateway, Kubectl, Pages, wait_finished
from tests.support import wait_for


def _pods(kubectl: Kubectl, component: str) -> list[dict[str, Any]]:
    return kubectl.items("pods", "-l", f"app.kubernetes.io/component={component}")


def _replaced(kubectl: Kubectl, component: str, old: set[str]) -> None:
    """Wait until `component` runs in a Ready pod that is none of `old`."""

    def ready() -> bool:
        for pod in _pods(kubectl, component):
            conditions = pod["status"].get("conditions") or []
            if pod["metadata"]["name"] not in old and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            ):
                return True
        return False

    wait_for(ready, WAIT, f"a new Ready {component} pod", POLL)


def test_deleting_the_operator_pod_mid_run_loses_no_job(
    kubectl: Kubectl, pages: Pages, examples: list[dict[str, Any]]
) -> None:
    names = [f"e2e-restart-{i}" for i in range(3)]
    kubectl.apply(*(
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "metadata": {"name": name},
            # A few seconds on the page: the pods are still running when the operator goes.
            "spec": {"url": pages.url, "format": "png", "delayMs": 4000},
        }
        for name in names
    ))  # fmt: skip

    def running() -> bool:
        return any(
            ((kubectl.get("capturejob", n) or {}).get("status") or {}).get("phase") == "Running"
            for n in names
        )

    wait_for(running, WAIT, "a CaptureJob to be Running", POLL)
    old = {p["metadata"]["name"] for p in _pods(kubectl, "operator")}
    kubectl("delete", "pod", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator",
            "--wait=false")  # fmt: skip
    _replaced(kubectl, "operator", old)
    for name in names:
        job = wait_finished(kubectl, name)
        assert job["status"]["phase"] == "Succeeded", (name, job["status"])


def test_a_restarted_gateway_keeps_finished_jobs_artifacts(
    kubectl: Kubectl, gateway: Gateway, examples: list[dict[str, Any]]
) -> None:
    job = next(j for j in examples if j["spec"]["format"] == "png")
    before = gateway.artifact(job)
    old = {p["metadata"]["name"] for p in _pods(kubectl, "gateway")}
    kubectl("delete", "pod", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=gateway",
            "--wait=false")  # fmt: skip
    _replaced(kubectl, "gateway", old)
    gateway.connect()  # a port-forward follows one pod
    after = gateway.artifact(job)
    assert after == before
    assert hashlib.sha256(after).hexdigest() == job["status"]["result"]["sha256"]

"""A capture pod whose kubelet is gone never reports: the operator must not wait for it forever.

Found by bench/chaos.py's kubelet-stop scenario (docs/reliability.md): with the kubelet stopped
for longer than the pod's deadline, every job stayed Running, and when the kubelet came back it
killed the pods for their deadline (Timeout, not retried). Here there is no kubelet at all (the
cluster tier's pods stay Pending), which is what the operator sees of a lost node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubeshot.operator.lifecycle import KUBELET_SLACK_SECONDS
from tests.cluster.operator.conftest import Cluster, Operator
from tests.support import wait_for


def test_a_pod_past_its_deadline_without_a_kubelet_is_lost_and_retried(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    start_operator(pod_deadline_grace_seconds=0, termination_grace_seconds=0)
    cluster.create_policy(limits={"timeoutSeconds": 2})
    cluster.create_job("orphan", html="<p>x</p>", retries=1)
    first = cluster.wait_pod("orphan-1")
    assert first["spec"]["activeDeadlineSeconds"] == 2
    # Lost 2 s (deadline) + 0 s (termination grace) + the slack after its creation: then retried.
    overdue = 2 + KUBELET_SLACK_SECONDS
    cluster.wait_pod("orphan-2", timeout=overdue + 10)
    # Its pod was deleted before the retry's was made: a job never has two pods.
    assert cluster.get("pods", "orphan-1") is None

    def finished() -> dict[str, Any] | None:
        status = (cluster.job("orphan") or {}).get("status") or {}
        return status if status.get("phase") in {"Succeeded", "Failed"} else None

    status = wait_for(finished, overdue + 10, "the retry to be lost too, and the job to fail")
    assert status["phase"] == "Failed"
    assert status["attempts"] == 2
    assert status["failure"]["reason"] == "PodLost"
    assert "past its 2s deadline" in status["failure"]["message"]
    wait_for(lambda: cluster.get("pods", "orphan-2") is None, 5, "the lost pod to be deleted")

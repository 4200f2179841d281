"""A capture pod whose kubelet is gone never reports: the operator must not wait for it forever.

Found by bench/chaos.py's kubelet-stop scenario (docs/reliability.md): with the kubelet stopped
for longer than the pod's deadline, every job stayed Running, and when the kubelet came back it
killed the pods for their deadline (Timeout, not retried). Here there is no kubelet at all (the
cluster tier's pods stay Pending), which is what the operator sees of a lost node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.operator.conftest import Cluster, Operator
from tests.support import wait_for


@pytest.mark.xfail(
    strict=True,
    reason="issue 19: the operator leaves a job Running while its pod's kubelet is gone, past "
    "the pod's deadline (activeDeadlineSeconds is enforced by the kubelet only)",
)
def test_a_pod_past_its_deadline_without_a_kubelet_is_lost_and_retried(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    start_operator(pod_deadline_grace_seconds=0)
    cluster.create_policy(limits={"timeoutSeconds": 2})
    cluster.create_job("orphan", html="<p>x</p>", retries=1)
    cluster.wait_pod("orphan-1")

    def retried_or_lost() -> dict[str, Any] | None:
        status = (cluster.job("orphan") or {}).get("status") or {}
        failure = (status.get("failure") or {}).get("reason")
        return status if status.get("attempts", 0) >= 2 or failure == "PodLost" else None

    # The pod's deadline is 2 s; a generous 20 s for the operator to notice.
    wait_for(retried_or_lost, 20, "the job's lost attempt to be retried or failed PodLost")

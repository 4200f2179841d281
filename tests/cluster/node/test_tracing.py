"""One capture through the kubernetes backend on a real kubelet is one trace: the gateway's spans,
the operator's, and the capture pod's phases; the gateway's and the operator's log lines of it are
joined by its request id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.node.conftest import NodeGateway, Pages
from tests.cluster.node.test_capture_pods import PAGE_CIDR, post
from tests.cluster.operator.conftest import Cluster
from tests.cluster.operator.test_tracing import (  # noqa: F401 - otlp is a fixture
    PHASES,
    Received,
    json_lines,
    otlp,
)
from tests.support import wait_for


@pytest.fixture(autouse=True)
def traced(otlp: Received, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The gateway and the operator (started after this, with this process's environment)
    export to the test's OTLP receiver, and log JSON."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("KUBESHOT_LOG_FORMAT", "json")


def test_a_capture_is_one_trace_across_gateway_operator_and_pod(
    node: Any,
    gateway: NodeGateway,
    start_node_operator: Callable[..., Any],
    cluster: Cluster,
    pages: Pages,
    otlp: Received,  # noqa: F811
) -> None:
    operator = start_node_operator(gateway.upload_url)
    cluster.create_policy(
        limits={"memory": "1Gi", "timeoutSeconds": 60}, network={"allowedCIDRs": [PAGE_CIDR]}
    )
    url = pages.add("/traced", "<html><body><h1>traced</h1></body></html>")
    status, body, headers = post(gateway, "/v1/screenshot", {"url": url, "format": "png"})
    assert status == 200, body[:2000]
    request_id = headers["X-Request-Id"]
    wanted = {
        "POST /v1/screenshot", "capture", "create CaptureJob",
        "start capture pod", "record capture pod", "capture pod", *PHASES,
    }  # fmt: skip
    wait_for(lambda: wanted <= {s["name"] for s in otlp.spans}, 60, "the whole trace")
    (root,) = otlp.named("POST /v1/screenshot")
    trace = root["trace"]
    ours = [s for s in otlp.spans if s["trace"] == trace]
    assert wanted <= {s["name"] for s in ours}
    assert {s["service"] for s in ours} == {"kubeshot-gateway", "kubeshot-operator"}
    (created,) = otlp.named("create CaptureJob")
    for name in ("start capture pod", "record capture pod", "capture pod"):
        (span,) = [s for s in ours if s["name"] == name]
        assert span["parent"] == created["span"], name
    (pod,) = [s for s in ours if s["name"] == "capture pod"]
    assert {s["parent"] for s in ours if s["name"] in PHASES} == {pod["span"]}
    # The lines of this capture, joined by its request id.
    for log in (gateway.log(), operator.log()):
        ours_logged = [line for line in json_lines(log) if line.get("request_id") == request_id]
        assert ours_logged, log[-3000:]

"""The operator continues the trace a CaptureJob's traceparent annotation names (as the gateway
writes it), and records the capture pod's phases in it; its log lines, and the pod's, carry the
job's request id.

The operator exports over OTLP/HTTP to a receiver in this test (the protobuf request decoded with
the OpenTelemetry protocol's own message classes): the operator is a subprocess, and what it
sends is what a collector would get.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.cluster.operator.conftest import Cluster, FakeKubelet, Operators, Uploads, operator_env
from tests.cluster.operator.test_operator_capture import POLICY, capture_job
from tests.support import Handler, free_port, serving, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
GATEWAY_SPAN = "00f067aa0ba902b7"
REQUEST_ID = "5f2b1c0e9a8d4e6fb1c2d3e4f5a6b7c8"
PHASES = {"setup", "navigate", "wait", "render", "verify"}


@dataclass
class Received:
    """Spans an OTLP/HTTP receiver got: name → (trace id, span id, parent span id, service)."""

    url: str = ""
    spans: list[dict[str, str]] = field(default_factory=list)

    def named(self, name: str) -> list[dict[str, str]]:
        return [s for s in self.spans if s["name"] == name]


@pytest.fixture
def otlp() -> Iterator[Received]:
    received = Received()
    lock = threading.Lock()

    class Collector(Handler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            with lock:
                for resource in request.resource_spans:
                    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            received.spans.append(
                                {
                                    "name": span.name,
                                    "trace": span.trace_id.hex(),
                                    "span": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "service": attributes.get("service.name", ""),
                                }
                            )
            self.reply(200, content_type="application/x-protobuf")

    with serving(Collector) as site:
        received.url = site.url("")
        yield received


def annotated(name: str, traceparent: str, request_id: str) -> dict[str, Any]:
    """A CaptureJob with the annotations the gateway writes."""
    job = capture_job(name, html=f"<h1>{name}</h1>", format="png")
    annotations = {"kubeshot.dev/traceparent": traceparent, "kubeshot.dev/request-id": request_id}
    job["metadata"]["annotations"] = annotations
    return job


def test_the_operator_and_the_pod_join_the_trace_of_the_annotation(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    uploads: Uploads,
    tmp_path: Path,
    cluster: Cluster,
    kubelet: FakeKubelet,
    otlp: Received,
) -> None:
    port = free_port()
    env = operator_env(control_plane, namespace, uploads.url, http_port=port)
    env.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "KUBESHOT_LOG_FORMAT": "json",
        }
    )
    operators = Operators(tmp_path)
    try:
        operator = operators.launch(env, port)
        cluster.apply(POLICY)
        cluster.apply(annotated("traced", f"00-{TRACE_ID}-{GATEWAY_SPAN}-01", REQUEST_ID))
        cluster.wait_phase("traced", "Running")
        done = kubelet.run("traced-1")
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        cluster.wait_phase("traced", "Succeeded")
        wanted = {"start capture pod", "record capture pod", "capture pod", *PHASES}
        wait_for(lambda: wanted <= {s["name"] for s in otlp.spans}, 30, "the operator's spans")
    finally:
        operators.stop_all()
    # One trace, the annotation's: the operator's spans are children of the gateway's span.
    ours = [s for s in otlp.spans if s["name"] in wanted]
    assert {s["trace"] for s in ours} == {TRACE_ID}
    assert {s["service"] for s in ours} == {"kubeshot-operator"}
    for name in ("start capture pod", "record capture pod", "capture pod"):
        (span,) = otlp.named(name)
        assert span["parent"] == GATEWAY_SPAN, name
    (pod,) = otlp.named("capture pod")
    assert {s["parent"] for s in ours if s["name"] in PHASES} == {pod["span"]}
    # The operator's lines about the job and the pod's own lines carry the request id.
    operator_lines = [
        line for line in json_lines(operator.log()) if line.get("request_id") == REQUEST_ID
    ]
    assert operator_lines, operator.log()[-3000:]
    assert {line["job"] for line in operator_lines} == {f"{cluster.namespace}/traced"}
    pod_lines = json_lines(done.stderr.decode())
    assert pod_lines and all(line.get("request_id") == REQUEST_ID for line in pod_lines)
    assert {line.get("trace_id") for line in pod_lines} == {TRACE_ID}


def test_an_annotation_that_is_no_traceparent_starts_no_trace_of_its_own_choosing(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    uploads: Uploads,
    tmp_path: Path,
    cluster: Cluster,
    otlp: Received,
) -> None:
    """Anyone who may write CaptureJobs writes its annotations: a malformed traceparent (an
    upper-case one here, which W3C forbids) is ignored, and a request id that is no request id
    never reaches a log line."""
    port = free_port()
    env = operator_env(control_plane, namespace, uploads.url, http_port=port)
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    operators = Operators(tmp_path)
    try:
        operator = operators.launch(env, port)
        cluster.apply(POLICY)
        cluster.apply(
            annotated("forged", f"00-{TRACE_ID.upper()}-{GATEWAY_SPAN}-01", "forged\nline")
        )
        cluster.wait_phase("forged", "Running")
        names = {"admit CaptureJob", "start capture pod"}
        wait_for(lambda: names <= {s["name"] for s in otlp.spans}, 30, "the operator's spans")
    finally:
        operators.stop_all()
    # The operator's spans make a trace of their own, rooted in its admission of the job.
    (admitted,) = otlp.named("admit CaptureJob")
    (started,) = otlp.named("start capture pod")
    assert admitted["parent"] == "" and started["trace"] == admitted["trace"] != TRACE_ID
    assert "forged\\nline" not in operator.log() and "forged\nline" not in operator.log()


def json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict):
            found.append(document)
    return found

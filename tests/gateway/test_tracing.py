"""Traces of the gateway: the span tree of one local-backend capture (in-memory exporter), and
the same spans through a real OTLP receiver (the OpenTelemetry Collector of testenv/otelcol)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kubeshot import tracing
from tests.conftest import ROOT, need
from tests.gateway.conftest import TOKEN, Gateway, Pages
from tests.support import free_port, wait_until

PHASES = ["setup", "navigate", "wait", "render", "verify"]
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_TRACEPARENT = f"00-{CALLER_TRACE}-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


def _by_name(found: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named: dict[str, ReadableSpan] = {}
    for span in found:
        assert span.name not in named, f"two spans named {span.name}"
        named[span.name] = span
    return named


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_capture_is_one_trace_from_request_to_engine_phases(
    gateway: Gateway, pages: Pages, session: ClientSession, spans: InMemorySpanExporter
) -> None:
    headers = {**gateway.auth(), "traceparent": CALLER_TRACEPARENT}
    body = {"url": f"{pages.base}/", "format": "png"}
    async with session.post(f"{gateway.url}/v1/screenshot", json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        request_id = r.headers["X-Request-Id"]
    # The server span ends once the handler has returned: wait for it.
    finished = spans.get_finished_spans
    assert await wait_until(lambda: any(s.kind == SpanKind.SERVER for s in finished()))
    named = _by_name(spans.get_finished_spans())
    assert set(named) == {
        "POST /v1/screenshot", "admission", "capture", "queue wait", "worker capture", "response",
        *PHASES,
    }  # fmt: skip
    root = named["POST /v1/screenshot"]
    assert root.kind == SpanKind.SERVER and root.parent is None
    # The caller's trace is a link, not the parent: the gateway chose this trace's id.
    trace_id = root.context.trace_id
    assert f"{trace_id:032x}" != CALLER_TRACE
    assert [f"{link.context.trace_id:032x}" for link in root.links] == [CALLER_TRACE]
    assert {s.context.trace_id for s in named.values()} == {trace_id}
    tree = {name: _parent(span) for name, span in named.items()}
    ids = {name: span.context.span_id for name, span in named.items()}
    assert tree["admission"] == tree["capture"] == tree["response"] == ids["POST /v1/screenshot"]
    assert tree["queue wait"] == tree["worker capture"] == ids["capture"]
    assert all(tree[phase] == ids["worker capture"] for phase in PHASES)
    # The worker's phases, in order, inside the worker capture (one machine, one clock).
    worker = named["worker capture"]
    times = [(named[p].start_time, named[p].end_time) for p in PHASES]
    assert worker.start_time is not None and worker.end_time is not None
    assert worker.start_time <= times[0][0]
    assert times[-1][1] is not None and times[-1][1] <= worker.end_time
    for (_, end), (start, _) in itertools.pairwise(times):
        assert end is not None and start is not None and end <= start
    attributes = dict(root.attributes or {})
    assert attributes["kubeshot.request_id"] == request_id
    assert attributes["kubeshot.identity"] == "default"
    assert attributes["http.route"] == "/v1/screenshot"
    assert attributes["http.response.status_code"] == 200
    assert dict(named["admission"].attributes or {})["kubeshot.policy"] == "default"
    assert dict(named["capture"].attributes or {})["kubeshot.format"] == "png"
    # Nothing of the caller's credentials anywhere in the trace.
    text = json.dumps([json.loads(s.to_json()) for s in named.values()])
    assert TOKEN not in text and "Bearer" not in text


async def test_a_signed_url_leaves_its_signature_out_of_the_trace(
    gateway: Gateway, session: ClientSession, spans: InMemorySpanExporter
) -> None:
    query = "url=http%3A%2F%2F127.0.0.1%3A9%2F&expires=1&keyId=k2&signature=deadbeef00"
    async with session.get(f"{gateway.url}/v1/screenshot?{query}") as r:
        assert r.status == 403
    assert await wait_until(lambda: bool(spans.get_finished_spans()))
    (root,) = spans.get_finished_spans()
    text = root.to_json()
    assert root.name == "GET /v1/screenshot"
    assert "deadbeef00" not in text and "signature" not in text
    assert dict(root.attributes or {})["http.response.status_code"] == 403


# --- a real OTLP receiver ---------------------------------------------------------------------


def _collector() -> Path:
    path = subprocess.run(
        ["bash", str(ROOT / "testenv" / "build.sh"), "--print-otelcol"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    need(os.access(path, os.X_OK), f"no OpenTelemetry Collector at {path} (testenv/build.sh)")
    return Path(path)


def _otlp_spans(path: Path) -> list[dict[str, object]]:
    """Every span in the file exporter's JSON lines (one ExportTraceServiceRequest a line)."""
    found = []
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        for resource in json.loads(line).get("resourceSpans", []):
            service = {
                a["key"]: a["value"].get("stringValue")
                for a in resource.get("resource", {}).get("attributes", [])
            }.get("service.name")
            for scope in resource.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    found.append({**span, "service": service})
    return found


async def test_spans_reach_a_real_otlp_collector(
    pages: Pages, policy_file: Path, tmp_path: Path
) -> None:
    collector = _collector()
    host = "127.0.0.3"
    otlp_port = free_port(host)
    output = tmp_path / "spans.jsonl"
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"{host}:{otlp_port}"}}}},
        "exporters": {"file": {"path": str(output), "flush_interval": "100ms"}},
        "service": {
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "warn"}},
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
        },
    }
    config_path = tmp_path / "otelcol.yaml"
    config_path.write_text(yaml.safe_dump(config))
    otelcol = await asyncio.create_subprocess_exec(
        str(collector),
        "--config",
        str(config_path),
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "otelcol.log").open("wb"),
    )
    port = free_port()
    env = {
        **os.environ,
        "AUTH_TOKEN": TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{host}:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "kubeshot-test-gateway",
    }
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kubeshot.cli", "serve", "--port", str(port),
        "--workers", "1", "--policy", str(policy_file),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "gateway.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with ClientSession() as client:
            for _ in range(600):
                with_answer = await _status(client, f"{url}/readyz")
                if with_answer == 200:
                    break
                assert gateway.returncode is None, (tmp_path / "gateway.log").read_text()
                await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            body = {"url": f"{pages.base}/", "format": "png"}
            async with client.post(f"{url}/v1/screenshot", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                request_id = r.headers["X-Request-Id"]
        names = {"POST /v1/screenshot", "worker capture", *PHASES}
        assert await wait_until(
            lambda: names <= {str(s["name"]) for s in _otlp_spans(output)}, within=30
        ), (tmp_path / "otelcol.log").read_text()
    finally:
        gateway.terminate()
        await asyncio.wait_for(gateway.wait(), 60)
        otelcol.terminate()
        await asyncio.wait_for(otelcol.wait(), 30)
    received = [s for s in _otlp_spans(output) if s["name"] in names]
    assert {s["service"] for s in received} == {"kubeshot-test-gateway"}
    assert len({s["traceId"] for s in received}) == 1
    root = next(s for s in received if s["name"] == "POST /v1/screenshot")
    attributes = {a["key"]: a["value"] for a in root["attributes"]}  # type: ignore[attr-defined]
    assert attributes["kubeshot.request_id"] == {"stringValue": request_id}
    worker = next(s for s in received if s["name"] == "worker capture")
    phases = [s for s in received if s["name"] in PHASES]
    assert {s["parentSpanId"] for s in phases} == {worker["spanId"]}
    assert TOKEN not in output.read_text()


async def _status(client: ClientSession, url: str) -> int:
    try:
        async with client.get(url) as r:
            return r.status
    except OSError:
        return 0


# --- what comes from outside: traceparents, settings, phases ----------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (CALLER_TRACEPARENT, True),
        (f"00-{CALLER_TRACE}-b7ad6b7169203331-00", True),
        (CALLER_TRACEPARENT.upper(), False),  # W3C: lower-case hex only
        (f"01-{CALLER_TRACE}-b7ad6b7169203331-01", False),  # unknown version
        (f"00-{'0' * 32}-b7ad6b7169203331-01", False),  # zero trace id
        (f"00-{CALLER_TRACE}-{'0' * 16}-01", False),  # zero span id
        (CALLER_TRACEPARENT + "-extra", False),
        (CALLER_TRACEPARENT + "\n", False),
        ("", False),
        (None, False),
        (42, False),
    ],
)
def test_a_traceparent_is_parsed_strictly(value: object, valid: bool) -> None:
    assert (tracing.parse_traceparent(value) is not None) is valid
    assert bool(tracing.links_to(value)) is valid


def test_only_a_request_id_the_gateway_could_have_made_is_taken() -> None:
    assert tracing.request_id("5f2b1c0e9a8d4e6fb1c2d3e4f5a6b7c8") is not None
    trailing = "5f2b1c0e9a8d4e6fb1c2d3e4f5a6b7c8\n"  # `$` would let the newline through
    for forged in ("5F2B1C0E9A8D4E6FB1C2D3E4F5A6B7C8", "abc", "x" * 32, "a\nb", trailing, None, 1):
        assert tracing.request_id(forged) is None


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, "none"),
    ],
)
def test_tracing_is_off_unless_configured(
    environ: dict[str, str], exporter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert tracing.TracingSettings().exporter == exporter


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4318"},
    ],
)
def test_a_setting_that_cannot_be_honoured_is_refused(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="OpenTelemetry"):
        tracing.setup("kubeshot-test")


def test_a_pods_phases_are_taken_only_when_they_could_be_a_captures() -> None:
    from kubeshot.operator.lifecycle import from_termination_message

    def phases(document: object) -> int:
        result = {"contentType": "image/png", "bytes": 3, "sha256": "f" * 64}
        result["timings"] = {"phases": document}
        outcome = from_termination_message(json.dumps({"result": result}))
        assert outcome is not None and outcome.result is not None  # the result stands anyway
        return len(outcome.phases)

    t = 1_700_000_000 * 10**9
    good = [
        {"name": name, "startUnixNano": t + i * 10, "endUnixNano": t + i * 10 + 10}
        for i, name in enumerate(PHASES)
    ]
    assert phases(good) == 5
    assert phases(good * 2) == 0  # more phases than a capture has
    assert phases([{**good[0], "endUnixNano": t - 1}]) == 0  # ends before it starts
    assert phases([good[1], good[0]]) == 0  # out of order
    assert phases([{**good[0], "name": "exfiltrate"}]) == 0
    assert phases([{**good[0], "startUnixNano": 10**30}]) == 0  # after the year 2200
    assert phases("setup") == 0


def test_log_context_from_the_environment_keeps_known_fields_only() -> None:
    from kubeshot import logs

    document = {"request_id": "r1", "job": "ns/j", "token": "secret", "policy": 5}
    assert logs.context_from_env({logs.CONTEXT_ENV: json.dumps(document)}) == {
        "request_id": "r1",
        "job": "ns/j",
    }
    assert logs.context_from_env({logs.CONTEXT_ENV: "{not json"}) == {}
    assert logs.context_from_env({logs.CONTEXT_ENV: "x" * 5000}) == {}

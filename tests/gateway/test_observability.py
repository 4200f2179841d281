"""/healthz, /readyz, /metrics (its own port) and the OpenAPI document (served, checked in,
not drifted)."""

from __future__ import annotations

import json

from aiohttp import ClientSession

from kubeshot.gateway.openapi import CHECKED_IN, openapi_document, openapi_text
from tests.gateway.conftest import Gateway
from tests.support import metric_value


async def test_health_and_readiness(gateway: Gateway, session: ClientSession):
    async with session.get(f"{gateway.url}/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"
    async with session.get(f"{gateway.url}/readyz") as r:
        assert r.status == 200
        assert (await r.json())["queueDepth"] == 0


async def test_metrics_count_what_the_issue_asks_for(gateway: Gateway, session: ClientSession):
    # Provoke one of each: an auth failure, a rate-limited request needs its own test; here an
    # admission rejection and a validation failure.
    async with session.get(f"{gateway.url}/v1/captures/{'0' * 32}") as r:
        assert r.status == 401
    async with session.post(
        f"{gateway.url}/v1/screenshot?policy=strict",
        json={"url": "http://127.0.0.1:9/", "format": "pdf"},
        headers=gateway.auth(),
    ) as r:
        assert r.status == 403
    async with session.get(gateway.metrics_url) as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        text = await r.text()
    assert metric_value(text, "kubeshot_http_requests_total", route="screenshot", status="403") >= 1
    assert metric_value(text, "kubeshot_auth_failures_total", reason="missing") >= 1
    assert metric_value(text, "kubeshot_admission_rejections_total", reason="PolicyViolation") >= 1
    for name in (
        "kubeshot_rate_limited_total",
        "kubeshot_capture_duration_seconds",
        "kubeshot_queue_wait_seconds",
        "kubeshot_build_info",
        "process_cpu_seconds_total",
        "kubeshot_queue_depth",
        "kubeshot_worker_restarts_total",
        "kubeshot_workers",
    ):
        assert name in text or name.removesuffix("_total") in text, name


async def test_openapi_is_served_checked_in_and_current(gateway: Gateway, session: ClientSession):
    async with session.get(f"{gateway.url}/v1/openapi.json") as r:
        served = await r.json()
    assert served == openapi_document()
    assert CHECKED_IN.read_text(encoding="utf-8") == openapi_text(), (
        "operator/kubeshot/gateway/openapi.json drifted from the models: run `make openapi`"
    )
    schema = json.loads(openapi_text())["components"]["schemas"]["CaptureOptions"]
    assert {"url", "fullPage", "customCSS", "viewport"} <= set(schema["properties"])

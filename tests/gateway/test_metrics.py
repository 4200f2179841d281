"""/metrics: on its own port only, by Prometheus conventions (promtool), queue wait and capture
time apart."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import ClientSession
from pydantic import ValidationError

from kubeshot import __version__
from kubeshot.gateway import Settings
from tests.conftest import need
from tests.gateway.conftest import Gateway, Pages, wait_ready
from tests.gateway.test_cli import _serve, _stop
from tests.support import free_port, metric_value, wait_until

SLOW_SECONDS = 15  # the first capture's page takes this long to arrive; the second waits for it
WAIT, CAPTURE = "kubeshot_queue_wait_seconds", "kubeshot_capture_duration_seconds"


def promtool_check(exposition: str) -> None:
    """`promtool check metrics` (Debian's prometheus package): exit 0 and nothing to say."""
    promtool = shutil.which("promtool")
    need(promtool, "promtool not found (make packages: Debian's prometheus package)")
    assert promtool is not None
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LC_ALL": "C"},
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), exposition


async def _scrape(gateway: Gateway, session: ClientSession) -> str:
    async with session.get(gateway.metrics_url) as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        return await r.text()


async def test_metrics_are_served_on_the_metrics_port_only(
    gateway: Gateway, session: ClientSession
):
    async with session.get(f"{gateway.url}/metrics", headers=gateway.auth()) as r:
        assert r.status == 404
    async with session.get(f"{gateway.url}/metrics") as r:
        assert r.status == 401  # an unknown route does not reveal itself without a token
    text = await _scrape(gateway, session)
    assert "kubeshot_http_requests_total" in text
    base = gateway.metrics_url.removesuffix("/metrics")
    for path in ("/healthz", "/v1/screenshot", "/v1/openapi.json", "/"):
        async with session.get(base + path) as r:
            assert r.status == 404, path  # the metrics port serves /metrics and nothing else


async def test_exposition_follows_prometheus_conventions(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    async with session.post(
        f"{gateway.url}/v1/screenshot", json={"url": pages.base + "/"}, headers=gateway.auth()
    ) as r:
        assert r.status == 200
    text = await _scrape(gateway, session)
    # What any Python daemon exports, and the build it runs.
    assert metric_value(text, "process_resident_memory_bytes") > 0
    assert metric_value(text, "process_cpu_seconds_total") > 0
    assert 'python_info{implementation="' in text
    assert metric_value(text, "kubeshot_build_info", version=__version__) == 1
    # The capture's wait and run, labelled by outcome and format.
    for name in ("kubeshot_queue_wait_seconds_count", "kubeshot_capture_duration_seconds_count"):
        assert metric_value(text, name, outcome="Succeeded", format="png") >= 1, name
    promtool_check(text)


def _histogram(text: str, name: str, fmt: str) -> tuple[float, float, float]:
    """(count, sum, observations above 5 s) of histogram `name` for Succeeded `fmt` captures."""
    labels = {"outcome": "Succeeded", "format": fmt}
    count = metric_value(text, f"{name}_count", **labels)
    above = count - metric_value(text, f"{name}_bucket", le="5.0", **labels)
    return count, metric_value(text, f"{name}_sum", **labels), above


async def test_queue_wait_and_capture_time_are_observed_apart(
    small_gateway: Gateway, session: ClientSession, pages: Pages
):
    """One worker: a slow JPEG capture takes it, a fast PNG one waits behind it. The PNG's wait
    (most of SLOW_SECONDS) is in the wait histogram, and its capture time, shorter than that
    wait, in the capture histogram: with the wait included it would be longer."""
    backend = small_gateway.backend
    assert await wait_until(lambda: backend._idle.qsize() == 1, within=60)
    before = await _scrape(small_gateway, session)

    async def capture(path: str, fmt: str) -> int:
        async with session.post(
            f"{small_gateway.url}/v1/screenshot",
            json={"url": pages.base + path, "format": fmt},
            headers=small_gateway.auth(),
        ) as r:
            await r.read()
            return r.status

    slow = asyncio.create_task(capture(f"/slow?s={SLOW_SECONDS}", "jpeg"))
    assert await wait_until(lambda: backend._busy == 1, within=30)
    fast = asyncio.create_task(capture("/", "png"))
    assert await wait_until(lambda: backend.queue_depth == 1, within=30)
    assert await asyncio.gather(slow, fast) == [200, 200]
    after = await _scrape(small_gateway, session)

    def delta(name: str, fmt: str) -> tuple[float, ...]:
        now, then = _histogram(after, name, fmt), _histogram(before, name, fmt)
        return tuple(a - b for a, b in zip(now, then, strict=True))

    png_wait, png_capture = delta(WAIT, "png"), delta(CAPTURE, "png")
    jpeg_wait, jpeg_capture = delta(WAIT, "jpeg"), delta(CAPTURE, "jpeg")
    assert (png_wait[0], png_wait[2]) == (1, 1)  # one PNG capture, which waited over 5 s
    assert png_capture[0] == 1
    assert png_capture[1] < png_wait[1]  # its capture time is not its wait
    assert (jpeg_wait[0], jpeg_wait[2]) == (1, 0)  # the JPEG found the worker idle
    assert (jpeg_capture[0], jpeg_capture[2]) == (1, 1)  # and ran for the slow page


async def test_kubeshot_serve_serves_metrics_on_the_metrics_port(
    chromium: str, policy_file: Path, session: ClientSession
):
    """`kubeshot serve --metrics-port`: /metrics there (promtool-clean), 404 on the API port."""
    metrics_port = free_port()
    served = await _serve(
        "--policy", str(policy_file), "--no-auth", "--metrics-port", str(metrics_port)
    )
    try:
        await wait_ready(session, served.url)
        async with session.get(f"{served.url}/metrics") as r:
            assert r.status == 404
        async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert metric_value(text, "kubeshot_build_info", version=__version__) == 1
        promtool_check(text)
    finally:
        assert await _stop(served) == 0
    assert f"kubeshot metrics at http://127.0.0.1:{metrics_port}/metrics" in "".join(served.output)


def test_the_metrics_port_is_a_port_of_its_own():
    with pytest.raises(
        ValidationError, match="KUBESHOT_METRICS_PORT must differ from KUBESHOT_PORT"
    ):
        Settings(no_auth=True, port=9100, metrics_port=9100)
    with pytest.raises(ValidationError, match="from KUBESHOT_UPLOAD_PORT"):
        Settings(no_auth=True, backend="kubernetes", upload_port=9100, metrics_port=9100)
    # The local backend has no upload endpoint; 0 asks the system for free ports.
    assert Settings(no_auth=True, upload_port=9100, metrics_port=9100).metrics_port == 9100
    assert Settings(no_auth=True, port=0, metrics_port=0).metrics_port == 0

"""The local backend: real captures, memory limit enforced by killing the worker's process
tree, overload answered with 503, recycling, graceful shutdown, and never an orphaned process."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

from aiohttp import ClientSession
from PIL import Image
from pypdf import PdfReader

from tests.gateway.conftest import (
    Gateway,
    Pages,
    base_settings,
    start_gateway,
    tagged_processes,
    zombie_children,
)
from tests.support import metric_value, wait_until


async def _capture(
    gateway: Gateway, session: ClientSession, body: dict[str, object], query: str = ""
) -> tuple[int, bytes, dict[str, str]]:
    async with session.post(
        f"{gateway.url}/v1/screenshot{query}", json=body, headers=gateway.auth()
    ) as r:
        return r.status, await r.read(), dict(r.headers)


async def _one_worker(
    policy_file: Path, tokens_file: Path, session: ClientSession, shutdown_grace: float
) -> tuple[Gateway, set[str]]:
    """A gateway of its own with one worker (to stop), and its workers' tags."""
    settings = base_settings(policy_file, tokens_file, workers=1, shutdown_grace=shutdown_grace)
    gateway = await start_gateway(settings)
    await gateway.wait_ready(session)
    return gateway, {w.tag for w in gateway.backend._workers}


async def test_png_capture_is_verified_and_honours_options(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    body = {"url": pages.base + "/", "viewport": {"width": 400, "height": 300}}
    status, data, headers = await _capture(gateway, session, body)
    assert status == 200, data
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Kubeshot-Sha256"] == hashlib.sha256(data).hexdigest()
    assert headers["Cache-Control"] == "no-store"
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (400, 300)
    assert image.getpixel((10, 10)) == (255, 0, 0)
    assert image.getpixel((300, 10)) == (255, 255, 255)


async def test_pdf_and_html_captures(gateway: Gateway, session: ClientSession, pages: Pages):
    status, data, headers = await _capture(gateway, session, {"url": pages.base, "format": "pdf"})
    assert status == 200
    assert headers["Content-Type"] == "application/pdf"
    assert len(PdfReader(io.BytesIO(data)).pages) == 1
    status, data, headers = await _capture(
        gateway, session, {"html": "<p id=x>hi</p>", "format": "html"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Content-Disposition"].startswith("attachment")
    assert "sandbox" in headers["Content-Security-Policy"]
    assert b"hi" in data


async def test_navigation_failure_is_a_clean_error(gateway: Gateway, session: ClientSession):
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    status, data, _ = await _capture(
        gateway, session, {"url": "http://127.0.0.1:9/"}, "?policy=default"
    )
    assert status in {403, 502}  # refused by the guard (port) or by the connection
    assert b"Traceback" not in data


async def test_private_targets_are_blocked_by_the_guard_by_default(
    gateway: Gateway, session: ClientSession
):
    # `strict` allows 127.0.0.0/8 but not 10/8: the engine's guard refuses it.
    body = {"url": "http://10.255.255.1/", "viewport": {"width": 800, "height": 600}}
    status, data, _ = await _capture(gateway, session, body, "?policy=strict")
    assert status == 403, data
    assert json.loads(data)["error"]["details"] == {"reason": "BlockedByPolicy"}


async def test_worker_over_its_memory_limit_is_killed_and_replaced(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    backend = gateway.backend
    tags_before = {w.tag for w in backend._workers}
    status, data, _ = await _capture(
        gateway, session, {"url": pages.base + "/hog"}, "?policy=lowmem"
    )
    assert status == 422, data
    error = json.loads(data)["error"]
    assert error["code"] == "resource_limit"
    assert error["details"] == {"reason": "MemoryLimitExceeded"}
    # The killed worker's whole tree is gone: no orphaned Chromium.
    killed = tags_before - {w.tag for w in backend._workers}
    assert len(killed) == 1
    assert not set(tagged_processes()) & killed
    assert await wait_until(lambda: not zombie_children(), within=10), zombie_children()
    # The server keeps serving; the next capture works, on a fresh worker when needed.
    assert await wait_until(lambda: len(backend._workers) == backend.size, within=60)
    status, data, _ = await _capture(gateway, session, {"url": pages.base + "/"})
    assert status == 200
    async with session.get(gateway.metrics_url) as r:
        text = await r.text()
    assert metric_value(text, "kubeshot_worker_restarts_total", reason="memory_limit") >= 1


async def test_overload_is_503_and_nothing_else_fails(
    small_gateway: Gateway, session: ClientSession, pages: Pages
):
    # One worker, a queue of one: of four simultaneous slow captures, one runs, one waits,
    # two are refused at once with 503 + Retry-After.
    body = {"url": pages.base + "/slow?s=3"}

    async def one() -> tuple[int, dict[str, str]]:
        async with session.post(
            f"{small_gateway.url}/v1/screenshot", json=body, headers=small_gateway.auth()
        ) as r:
            await r.read()
            return r.status, dict(r.headers)

    tasks = [asyncio.create_task(one()) for _ in range(4)]
    await asyncio.sleep(1)
    async with session.get(f"{small_gateway.url}/readyz") as r:
        assert r.status == 503  # the queue is full: not ready for more
    results = await asyncio.gather(*tasks)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 200, 503, 503]
    assert all("Retry-After" in h for s, h in results if s == 503)
    # Ready again once the queue drains (and the worker, recycled after 2 captures, is back).
    await small_gateway.wait_ready(session, within=60)


async def test_workers_are_recycled_after_n_captures(
    small_gateway: Gateway, session: ClientSession, pages: Pages
):
    backend = small_gateway.backend
    await small_gateway.wait_ready(session, within=60)
    first = {w.tag for w in backend._workers}
    async with session.get(small_gateway.metrics_url) as r:
        before = metric_value(await r.text(), "kubeshot_worker_restarts_total", reason="recycled")
    for _ in range(2):
        async with session.post(
            f"{small_gateway.url}/v1/screenshot",
            json={"url": pages.base + "/"},
            headers=small_gateway.auth(),
        ) as r:
            assert r.status == 200
    async with session.get(small_gateway.metrics_url) as r:
        after = metric_value(await r.text(), "kubeshot_worker_restarts_total", reason="recycled")
    assert after >= before + 1
    # The retired worker exits with its whole tree; a fresh one takes over.
    assert await wait_until(lambda: not set(tagged_processes()) & first, within=30)
    assert await wait_until(lambda: not zombie_children(), within=10), zombie_children()
    await small_gateway.wait_ready(session, within=60)
    assert {w.tag for w in backend._workers}.isdisjoint(first)


async def test_graceful_shutdown_finishes_in_flight_and_leaves_no_process(
    chromium: str, pages: Pages, policy_file: Path, tokens_file: Path, session: ClientSession
):
    gateway, tags = await _one_worker(policy_file, tokens_file, session, shutdown_grace=20)
    assert tags and tags <= set(tagged_processes())
    in_flight = asyncio.create_task(_capture(gateway, session, {"url": pages.base + "/slow?s=2"}))
    await asyncio.sleep(0.7)
    await gateway.stop()
    assert (await in_flight)[0] == 200
    assert not set(tagged_processes()) & tags
    assert await wait_until(lambda: not zombie_children(), within=10), zombie_children()


async def test_a_capture_over_its_time_limit_is_504(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    body = {"url": pages.base + "/slow?s=30", "timeoutSeconds": 2}
    status, data, _ = await _capture(gateway, session, body)
    assert status == 504, data
    assert json.loads(data)["error"]["code"] == "timeout"
    status, _, _ = await _capture(gateway, session, {"url": pages.base + "/"})
    assert status == 200


async def test_shutdown_fails_captures_still_running_after_the_grace_with_503(
    chromium: str, pages: Pages, policy_file: Path, tokens_file: Path, session: ClientSession
):
    gateway, tags = await _one_worker(policy_file, tokens_file, session, shutdown_grace=1)
    in_flight = asyncio.create_task(_capture(gateway, session, {"url": pages.base + "/slow?s=30"}))
    await asyncio.sleep(1.0)
    started = asyncio.get_running_loop().time()
    await gateway.stop()
    status, data, _ = await in_flight
    assert status == 503, data
    assert json.loads(data)["error"]["code"] == "unavailable"
    assert asyncio.get_running_loop().time() - started < 10
    assert not set(tagged_processes()) & tags
    assert await wait_until(lambda: not zombie_children(), within=10), zombie_children()

"""What the target answered, through a real gateway (local backend, real workers): the
X-Kubeshot-* headers of a synchronous capture, the same fields in `/v1/captures/{id}`, and
`failOnHttpStatus` as `502 target_http_error`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_asyncio
import yaml
from aiohttp import ClientSession, web

from tests.gateway.conftest import Gateway, base_settings, free_port, start_gateway

TITLE = "Seite „nicht“ gefunden — 中文 100%"


async def _missing(request: web.Request) -> web.StreamResponse:
    body = f"<!doctype html><title>{TITLE}</title><p>gone</p>"
    return web.Response(status=404, text=body, content_type="text/html", charset="utf-8")


async def _moved(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/landed")


async def _landed(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<title>Landed</title><p>here</p>", content_type="text/html")


@pytest_asyncio.fixture(scope="module")
async def target() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/missing", _missing)
    app.router.add_get("/moved", _moved)
    app.router.add_get("/landed", _landed)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module")
async def status_gateway(
    chromium: str,
    target: str,
    tokens_file: Path,
    session: ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    """One worker, a policy that opens the target's port."""
    port = int(target.rsplit(":", 1)[1])
    network = {"allowedCIDRs": ["127.0.0.0/8"], "allowedPorts": [port]}
    policies = tmp_path_factory.mktemp("status") / "policies.yaml"
    policies.write_text(
        yaml.safe_dump({"metadata": {"name": "default"}, "spec": {"network": network}})
    )
    gateway = await start_gateway(base_settings(policies, tokens_file, workers=1))
    await gateway.wait_ready(session)
    yield gateway
    await gateway.stop()


async def test_sync_capture_answers_with_the_target_headers(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{target}/missing"},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.read()).startswith(b"\x89PNG")
        headers = r.headers
    assert headers["X-Kubeshot-Http-Status"] == "404"
    assert headers["X-Kubeshot-Final-Url"] == f"{target}/missing"
    raw_title = headers["X-Kubeshot-Title"]
    assert raw_title.isascii() and unquote(raw_title) == TITLE


async def test_a_redirect_gives_the_final_url_and_status(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{target}/moved", "format": "html", "failOnHttpStatus": ["3xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert (r.headers["X-Kubeshot-Http-Status"], r.headers["X-Kubeshot-Title"]) == (
            "200",
            "Landed",
        )
        assert r.headers["X-Kubeshot-Final-Url"] == f"{target}/landed"


async def test_html_input_has_no_status_header(
    status_gateway: Gateway, session: ClientSession
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"html": "<title>Inline</title><p>x</p>"},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-Kubeshot-Title"] == "Inline"
        assert "X-Kubeshot-Http-Status" not in r.headers
        assert "X-Kubeshot-Final-Url" not in r.headers


async def test_fail_on_http_status_is_502_target_http_error(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{target}/missing", "failOnHttpStatus": ["4xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 502
        error = (await r.json())["error"]
    assert error["code"] == "target_http_error"
    assert error["details"] == {"reason": "TargetHttpError"}
    assert "HTTP 404" in error["message"] and f"{target}/missing" in error["message"]


async def test_a_bad_rule_is_400(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"html": "<p>x</p>", "failOnHttpStatus": ["4xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 400
        assert "failOnHttpStatus" in (await r.json())["error"]["message"]


async def _finished(gateway: Gateway, session: ClientSession, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        async with session.get(f"{gateway.url}/v1/captures/{job_id}", headers=gateway.auth()) as r:
            assert r.status == 200
            job: dict[str, Any] = await r.json()
        if job["phase"] in {"Succeeded", "Failed"}:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("job never finished")


async def _submit(gateway: Gateway, session: ClientSession, options: dict[str, Any]) -> str:
    async with session.post(
        f"{gateway.url}/v1/captures", json=options, headers=gateway.auth()
    ) as r:
        assert r.status == 202, await r.text()
        job_id: str = (await r.json())["id"]
    return job_id


async def test_async_capture_reports_the_target(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    job_id = await _submit(status_gateway, session, {"url": f"{target}/missing"})
    job = await _finished(status_gateway, session, job_id)
    assert job["phase"] == "Succeeded", job
    result = job["result"]
    assert (result["httpStatus"], result["title"]) == (404, TITLE)
    assert result["finalUrl"] == f"{target}/missing"
    async with session.get(status_gateway.url + result["url"], headers=status_gateway.auth()) as r:
        assert r.status == 200
        assert r.headers["X-Kubeshot-Http-Status"] == "404"
        assert unquote(r.headers["X-Kubeshot-Title"]) == TITLE


async def test_async_capture_fails_with_target_http_error(
    status_gateway: Gateway, session: ClientSession, target: str
) -> None:
    job_id = await _submit(
        status_gateway, session, {"url": f"{target}/missing", "failOnHttpStatus": ["404"]}
    )
    job = await _finished(status_gateway, session, job_id)
    assert job["phase"] == "Failed"
    assert job["failure"]["reason"] == "TargetHttpError"
    assert "HTTP 404" in job["failure"]["message"]

"""What the target answered, through a real gateway (local backend, real workers): the
X-Kubeshot-* headers of a synchronous capture, the same fields in `/v1/captures/{id}`, and
`failOnHttpStatus` as `502 target_http_error`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import pytest_asyncio
import yaml
from aiohttp import ClientSession

from tests.gateway.conftest import MISSING_TITLE, Gateway, Pages, base_settings, start_gateway


@pytest_asyncio.fixture(scope="module")
async def status_gateway(
    chromium: str,
    pages: Pages,
    tokens_file: Path,
    session: ClientSession,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Gateway]:
    """One worker, a policy that opens the target's port."""
    network = {"allowedCIDRs": ["127.0.0.0/8"], "allowedPorts": [pages.port]}
    policies = tmp_path_factory.mktemp("status") / "policies.yaml"
    policies.write_text(
        yaml.safe_dump({"metadata": {"name": "default"}, "spec": {"network": network}})
    )
    gateway = await start_gateway(base_settings(policies, tokens_file, workers=1))
    await gateway.wait_ready(session)
    yield gateway
    await gateway.stop()


async def test_sync_capture_answers_with_the_target_headers(
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{pages.base}/missing"},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.read()).startswith(b"\x89PNG")
        headers = r.headers
    assert headers["X-Kubeshot-Http-Status"] == "404"
    assert headers["X-Kubeshot-Final-Url"] == f"{pages.base}/missing"
    raw_title = headers["X-Kubeshot-Title"]
    assert raw_title.isascii() and unquote(raw_title) == MISSING_TITLE


async def test_a_redirect_gives_the_final_url_and_status(
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{pages.base}/moved", "format": "html", "failOnHttpStatus": ["3xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert (r.headers["X-Kubeshot-Http-Status"], r.headers["X-Kubeshot-Title"]) == (
            "200",
            "Landed",
        )
        assert r.headers["X-Kubeshot-Final-Url"] == f"{pages.base}/landed"


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
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"url": f"{pages.base}/missing", "failOnHttpStatus": ["4xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 502
        error = (await r.json())["error"]
    assert error["code"] == "target_http_error"
    assert error["details"] == {"reason": "TargetHttpError"}
    assert "HTTP 404" in error["message"] and f"{pages.base}/missing" in error["message"]


async def test_a_bad_rule_is_400(
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    async with session.post(
        f"{status_gateway.url}/v1/screenshot",
        json={"html": "<p>x</p>", "failOnHttpStatus": ["4xx"]},
        headers=status_gateway.auth(),
    ) as r:
        assert r.status == 400
        assert "failOnHttpStatus" in (await r.json())["error"]["message"]


async def _submit(gateway: Gateway, session: ClientSession, options: dict[str, Any]) -> str:
    async with session.post(
        f"{gateway.url}/v1/captures", json=options, headers=gateway.auth()
    ) as r:
        assert r.status == 202, await r.text()
        job_id: str = (await r.json())["id"]
    return job_id


async def test_async_capture_reports_the_target(
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    job_id = await _submit(status_gateway, session, {"url": f"{pages.base}/missing"})
    job = await status_gateway.finished(session, job_id)
    assert job["phase"] == "Succeeded", job
    result = job["result"]
    assert (result["httpStatus"], result["title"]) == (404, MISSING_TITLE)
    assert result["finalUrl"] == f"{pages.base}/missing"
    async with session.get(status_gateway.url + result["url"], headers=status_gateway.auth()) as r:
        assert r.status == 200
        assert r.headers["X-Kubeshot-Http-Status"] == "404"
        assert unquote(r.headers["X-Kubeshot-Title"]) == MISSING_TITLE


async def test_async_capture_fails_with_target_http_error(
    status_gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    job_id = await _submit(
        status_gateway, session, {"url": f"{pages.base}/missing", "failOnHttpStatus": ["404"]}
    )
    job = await status_gateway.finished(session, job_id)
    assert job["phase"] == "Failed"
    assert job["failure"]["reason"] == "TargetHttpError"
    assert "HTTP 404" in job["failure"]["message"]

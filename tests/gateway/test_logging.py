"""No credential reaches a log line: signed URLs, tokens in the wrong place, Authorization; and
the JSON lines of one request carry its request id (the X-Request-Id the caller sees)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp import ClientSession
from opentelemetry.sdk.trace import TracerProvider

from kubeshot import logs, tracing
from kubeshot.gateway.signing import UrlSigner, rfc3986
from tests.gateway.conftest import SIGNING_SECRET, TOKEN, Gateway, Pages
from tests.support import wait_until

MISPLACED = "misplaced-token-0123456789abcdef0123"


async def test_credentials_are_masked_in_every_log_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    params = [("url", "http://127.0.0.1:9/"), ("format", "jpeg"), ("policy", "strict")]
    signed = UrlSigner.from_secret(SIGNING_SECRET).sign(params, 60)
    signature = dict(signed)["signature"]
    query = "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in signed)
    # A fresh client: connections opened from now on log at INFO.
    async with ClientSession() as fresh:
        async with fresh.get(f"{gateway.url}/v1/screenshot?{query}") as r:
            assert r.status == 403  # verified, then refused by the policy
        async with fresh.get(f"{gateway.url}/v1/captures/{'0' * 32}?token={MISPLACED}") as r:
            assert r.status == 401
        headers = {"Authorization": f"Bearer {MISPLACED}"}
        async with fresh.get(f"{gateway.url}/v1/captures/{'0' * 32}", headers=headers) as r:
            assert r.status == 401
    logging.getLogger("kubeshot.test").info(
        "a careless line: Authorization: Bearer %s, token=%s, auth %s",
        MISPLACED,
        TOKEN,
        f"https://user:{MISPLACED}@proxy.example:3128",
    )

    def logged() -> str:
        return "\n".join(record.getMessage() for record in caplog.records)

    # The access log has seen both requests (it writes after the answer is sent).
    assert await wait_until(lambda: logged().count("/v1/captures/") >= 2, within=10), logged()
    text = logged() + caplog.text
    assert "/v1/screenshot?" in text and "signature=***" in text and "token=***" in text
    for secret in (signature, MISPLACED, TOKEN, SIGNING_SECRET.split(",")[0].split(":")[1]):
        assert secret not in text


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """The process's logs as `kubeshot serve` writes them (JSON), into a buffer; with tracing on."""
    buffer = io.StringIO()
    handler = logs.setup("json", logging.INFO, stream=buffer)
    provider = TracerProvider()
    tracing.install(provider)
    yield buffer
    tracing.install(None)
    provider.shutdown()
    logging.getLogger().removeHandler(handler)


async def test_the_lines_of_one_request_are_json_with_its_request_id_and_no_secret(
    gateway: Gateway, pages: Pages, json_lines: io.StringIO
):
    # A fresh client: connections opened from now on log at INFO (the access log).
    async with ClientSession() as fresh:
        other = f"{gateway.url}/v1/captures/{'0' * 32}"
        async with fresh.get(other, headers=gateway.auth()) as r:
            assert r.status == 404
            other_id = r.headers["X-Request-Id"]
        async with fresh.post(
            f"{gateway.url}/v1/screenshot",
            json={"url": f"{pages.base}/", "format": "png"},
            headers=gateway.auth(),
        ) as r:
            assert r.status == 200, await r.text()
            request_id = r.headers["X-Request-Id"]
    assert request_id != other_id

    def lines() -> list[dict[str, object]]:
        return [json.loads(line) for line in json_lines.getvalue().splitlines() if line]

    def ours() -> list[dict[str, object]]:
        return [line for line in lines() if line.get("request_id") == request_id]

    assert await wait_until(
        lambda: any(line["logger"] == "kubeshot.gateway.access" for line in ours()), within=10
    ), json_lines.getvalue()
    # Every line is a JSON object with the standard fields.
    for line in lines():
        assert {"timestamp", "level", "logger", "message"} <= set(line), line
    (access,) = [line for line in ours() if line["logger"] == "kubeshot.gateway.access"]
    assert access["identity"] == "default"
    assert access["policy"] == "default"
    assert access["method"] == "POST" and access["path"] == "/v1/screenshot"
    assert access["status"] == 200
    assert isinstance(access["trace_id"], str) and len(access["trace_id"]) == 32
    text = json_lines.getvalue()
    assert TOKEN not in text and "Bearer" not in text

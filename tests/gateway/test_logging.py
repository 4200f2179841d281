"""No credential reaches a log line: signed URLs, tokens in the wrong place, Authorization."""

from __future__ import annotations

import logging

import pytest
from aiohttp import ClientSession

from kubeshot.gateway.signing import UrlSigner, rfc3986
from tests.gateway.conftest import SIGNING_SECRET, TOKEN, Gateway, wait_until

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

"""Rate limits per identity with the `limits` library: reached (429 + headers) and recovered."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiohttp import ClientSession, TCPConnector

from kubeshot.gateway.signing import UrlSigner, rfc3986
from tests.gateway.conftest import (
    CI_TOKEN,
    EDGE_SIGNED_BUDGET,
    LIMITED_TOKEN,
    SIGNING_SECRET,
    Gateway,
)


async def _hit(gateway: Gateway, session: ClientSession, token: str) -> tuple[int, dict[str, str]]:
    # Invalid options: rate limiting comes before validation, so these are fast 400s.
    async with session.post(
        f"{gateway.url}/v1/screenshot", json={"bogus": 1}, headers=gateway.auth(token)
    ) as r:
        return r.status, dict(r.headers)


async def test_token_rate_limit_reached_and_recovered(gateway: Gateway, session: ClientSession):
    statuses = []
    headers: dict[str, str] = {}
    for _ in range(4):
        status, headers = await _hit(gateway, session, LIMITED_TOKEN)
        statuses.append(status)
    assert statuses == [400, 400, 400, 429]
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Limit"] == "3"
    assert headers["RateLimit-Remaining"] == "0"
    assert "RateLimit-Reset" in headers
    # Other identities are not affected.
    assert (await _hit(gateway, session, CI_TOKEN))[0] == 400
    await asyncio.sleep(1.2)
    status, headers = await _hit(gateway, session, LIMITED_TOKEN)
    assert status == 400
    assert int(headers["RateLimit-Remaining"]) >= 1


def _signed_url(base: str) -> str:
    # Refused by admission (jpeg under `strict`): quick, and only after rate limiting.
    params = [("url", "http://127.0.0.1:9/"), ("format", "jpeg"), ("policy", "strict")]
    signed = UrlSigner.from_secret(SIGNING_SECRET).sign(params, 60)
    return f"{base}/v1/screenshot?" + "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in signed)


@pytest.mark.parametrize(
    ("clients", "another"),
    [
        # From the trusted proxy 127.0.0.1, X-Forwarded-For names the client.
        (["198.51.100.7"] * 3, "198.51.100.8"),
        # One subscriber gets a /64: 2**64 addresses must not be 2**64 budgets.
        (
            ["2001:db8:7:1::1", "2001:db8:7:1::2", "2001:db8:7:1:ffff:ffff:ffff:fffe"],
            "2001:db8:7:2::1",
        ),
    ],
    ids=["per-client-through-trusted-proxies", "per-ipv6-64-not-per-address"],
)
async def test_signed_urls_are_limited_per_client(
    tls_gateway: Gateway, session: ClientSession, clients: list[str], another: str
):
    url = _signed_url(str(tls_gateway.plain_url))

    async def call(client: str) -> int:
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": f"{client}, 127.0.0.1"}
        async with session.get(url, headers=headers, allow_redirects=False) as r:
            return r.status

    assert [await call(client) for client in clients] == [403, 403, 429]
    assert await call(another) == 403  # another client (the next /64): its own budget


async def test_signed_urls_share_one_budget_across_clients(
    edge_gateway: Gateway, session: ClientSession
):
    # Every client within its own limit, and still no more than RATE_LIMIT_SIGNED_GLOBAL.
    url = _signed_url(edge_gateway.url)
    answers = []
    for i in range(EDGE_SIGNED_BUDGET + 2):
        headers = {"X-Forwarded-For": f"198.51.100.{100 + i}"}
        async with session.get(url, headers=headers) as r:
            answers.append((r.status, await r.json(), dict(r.headers)))
    assert [status for status, _, _ in answers] == [403] * EDGE_SIGNED_BUDGET + [429] * 2
    for _, body, headers in answers[EDGE_SIGNED_BUDGET:]:
        assert "signed-URL budget" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1


async def test_forwarded_for_from_an_untrusted_peer_does_not_escape_the_limit(
    tls_gateway: Gateway, client_tls: ssl.SSLContext
):
    url = _signed_url(tls_gateway.url)
    connector = TCPConnector(ssl=client_tls, local_addr=("127.0.0.4", 0))
    async with ClientSession(connector=connector) as untrusted:
        statuses = []
        for i in range(3):
            headers = {"X-Forwarded-For": f"203.0.113.{i}"}
            async with untrusted.get(url, headers=headers) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert "Retry-After" in r.headers
    assert statuses == [403, 403, 429]

"""HTTPS: TLS with a generated certificate, HSTS, 308 redirects, forwarded headers only from
trusted proxies, secure headers on every response, no internals in errors."""

from __future__ import annotations

import ssl

import pytest
from aiohttp import ClientSession, TCPConnector

from tests.gateway.conftest import Gateway, Pages

SECURE = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@pytest.fixture
async def tls_session(client_tls: ssl.SSLContext):
    async with ClientSession(connector=TCPConnector(ssl=client_tls)) as client:
        yield client


@pytest.fixture
async def untrusted_session():
    """A client connecting from 127.0.0.3, which is not in TRUSTED_PROXIES."""
    async with ClientSession(connector=TCPConnector(local_addr=("127.0.0.3", 0))) as client:
        yield client


async def test_https_serves_with_hsts_and_secure_headers(
    tls_gateway: Gateway, tls_session: ClientSession
):
    async with tls_session.get(f"{tls_gateway.url}/healthz") as r:
        assert r.status == 200
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        for name, value in SECURE.items():
            assert r.headers[name] == value
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_capture_over_https(tls_gateway: Gateway, tls_session: ClientSession, pages: Pages):
    async with tls_session.post(
        f"{tls_gateway.url}/v1/screenshot",
        json={"url": pages.base + "/"},
        headers=tls_gateway.auth(),
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.read()).startswith(b"\x89PNG")
        assert r.headers["Cache-Control"] == "no-store"
        assert "Strict-Transport-Security" in r.headers


async def test_plain_http_is_redirected_with_308(tls_gateway: Gateway, session: ClientSession):
    assert tls_gateway.plain_url is not None
    async with session.post(
        f"{tls_gateway.plain_url}/v1/screenshot?x=1", json={}, allow_redirects=False
    ) as r:
        assert r.status == 308
        assert r.headers["Location"] == f"{tls_gateway.url}/v1/screenshot?x=1"
        assert "Strict-Transport-Security" not in r.headers
        assert r.headers["X-Content-Type-Options"] == "nosniff"


async def test_forwarded_proto_is_believed_from_a_trusted_proxy(
    tls_gateway: Gateway, session: ClientSession
):
    # 127.0.0.1 is a trusted proxy: its X-Forwarded-Proto: https counts, so no redirect (and
    # authentication comes next: 401).
    async with session.get(
        f"{tls_gateway.plain_url}/v1/captures/{'0' * 32}",
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    ) as r:
        assert r.status == 401
        assert "Strict-Transport-Security" in r.headers


async def test_forwarded_proto_is_ignored_from_anyone_else(
    tls_gateway: Gateway, untrusted_session: ClientSession
):
    async with untrusted_session.get(
        f"{tls_gateway.plain_url}/v1/captures/{'0' * 32}",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"},
        allow_redirects=False,
    ) as r:
        assert r.status == 308


async def test_probes_answer_over_plain_http(tls_gateway: Gateway, session: ClientSession):
    async with session.get(f"{tls_gateway.plain_url}/healthz", allow_redirects=False) as r:
        assert r.status == 200


async def test_loopback_gateway_serves_plain_http(gateway: Gateway, session: ClientSession):
    # HTTPS_ONLY is on (the default) but the main gateway listens on loopback only.
    assert gateway.settings.https_only
    async with session.get(f"{gateway.url}/v1/openapi.json", allow_redirects=False) as r:
        assert r.status == 200


async def test_secure_headers_on_every_kind_of_response(gateway: Gateway, session: ClientSession):
    requests = [
        ("GET", "/healthz", {}),
        ("GET", "/nope", {}),
        ("POST", "/v1/screenshot", {}),
        ("POST", "/v1/screenshot", gateway.auth()),
        ("DELETE", "/v1/screenshot", gateway.auth()),
        ("GET", "/metrics", gateway.auth()),  # not served here (404): its own port
    ]
    for method, path, headers in requests:
        async with session.request(method, gateway.url + path, headers=headers) as r:
            for name, value in SECURE.items():
                assert r.headers.get(name) == value, (method, path, name)
            assert r.headers["Server"] == "kubeshot"


async def test_errors_carry_no_stack_traces_or_internals(gateway: Gateway, session: ClientSession):
    bodies: list[str] = []
    for method, path, kwargs in [
        (
            "POST",
            "/v1/screenshot",
            {"data": b"{", "headers": {**gateway.auth(), "Content-Type": "application/json"}},
        ),
        ("POST", "/v1/screenshot", {"json": {"url": 5}, "headers": gateway.auth()}),
        ("GET", "/v1/captures/../../etc/passwd", {"headers": gateway.auth()}),
        ("GET", "/v1/captures/" + "z" * 32 + "/artifact", {"headers": gateway.auth()}),
        ("PUT", "/v1/captures", {"headers": gateway.auth()}),
    ]:
        async with session.request(method, gateway.url + path, **kwargs) as r:
            assert 400 <= r.status < 500
            bodies.append(await r.text())
    for text in bodies:
        assert "Traceback" not in text
        assert 'File "' not in text
        assert "/work/" not in text and "site-packages" not in text


async def test_errors_do_not_reveal_where_a_name_resolved(
    gateway: Gateway, session: ClientSession, pages: Pages
):
    # `public` allows no private ranges: localhost resolves to loopback and is refused, and the
    # answer must not tell the caller which internal address the name resolved to.
    async with session.post(
        f"{gateway.url}/v1/screenshot?policy=public",
        json={"url": f"http://localhost:{pages.port}/"},
        headers=gateway.auth(),
    ) as r:
        assert r.status == 403
        message = (await r.json())["error"]["message"]
    assert "127.0.0.1" not in message and "::1" not in message, message

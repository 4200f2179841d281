"""Slow and greedy connections (slowloris): closed by the server, capped per client address."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

from kubeshot.gateway import keys
from tests.gateway.conftest import CAPPED_CONNECTIONS, TOKEN, Gateway
from tests.support import wait_until

# Generous: the server closes these after its one-second timeouts; this only bounds the test.
CLOSED_WITHIN = 30


async def _connect(
    gateway: Gateway, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(gateway.url)
    return await asyncio.open_connection(parts.hostname, parts.port, local_addr=(source, 0))


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN)


async def _answered_and_closed(
    reader: asyncio.StreamReader, status: bytes, header: bytes, code: str
) -> None:
    """The server answers `status` with `header` and the error `code`, then hangs up."""
    answer = await _until_closed(reader)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), answer
    assert header in head
    assert json.loads(body)["error"]["code"] == code


async def test_a_connection_that_never_completes_its_request_head_is_closed(
    edge_gateway: Gateway,
):
    reader, writer = await _connect(edge_gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    await writer.drain()
    assert await _until_closed(reader) == b""
    writer.close()


async def test_an_idle_connection_is_closed_after_its_answer(edge_gateway: Gateway):
    reader, writer = await _connect(edge_gateway)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    answer = await _until_closed(reader)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_body_that_does_not_arrive_is_408_and_the_connection_closed(
    edge_gateway: Gateway,
):
    reader, writer = await _connect(edge_gateway)
    writer.write(
        b"POST /v1/screenshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    await writer.drain()
    await _answered_and_closed(reader, b"408", b"Connection: close", "request_timeout")
    writer.close()


async def test_one_address_holds_at_most_its_share_of_connections(capped_gateway: Gateway):
    held = [await _connect(capped_gateway, "127.0.0.5") for _ in range(CAPPED_CONNECTIONS)]
    # One more from the same address (accepted after those, in order): answered 503 at once and
    # closed, nothing read from it.
    reader, writer = await _connect(capped_gateway, "127.0.0.5")
    await _answered_and_closed(reader, b"503", b"Retry-After: 1", "too_many_connections")
    writer.close()

    # Another address is not affected.
    reader, writer = await _connect(capped_gateway, "127.0.0.6")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await _until_closed(reader)).startswith(b"HTTP/1.1 200")
    writer.close()

    # A connection given back makes room for the next one.
    guard = capped_gateway.app[keys.CONNECTIONS]
    _, first = held.pop()
    first.close()
    assert await wait_until(lambda: guard.open_connections("127.0.0.5") < CAPPED_CONNECTIONS)
    reader, writer = await _connect(capped_gateway, "127.0.0.5")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await _until_closed(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    for _, w in held:
        w.close()
    metrics = capped_gateway.app[keys.METRICS].exposition().decode()
    assert 'kubeshot_connections_refused_total{reason="per_address"} 1.0' in metrics


async def test_a_request_aiohttp_cannot_parse_gets_the_json_error_envelope(edge_gateway: Gateway):
    # aiohttp answers these itself, before any middleware; it used to send text/plain.
    for request in (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Line <script>\r\n\r\n",
    ):
        reader, writer = await _connect(edge_gateway)
        writer.write(request)
        await writer.drain()
        answer = await _until_closed(reader)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", answer[:200]
        assert b"Content-Type: application/json" in head
        assert b"X-Content-Type-Options: nosniff" in head
        assert b"Server: kubeshot\r\n" in head and b"aiohttp" not in answer, head
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_request"
        assert b"<script>" not in body and b"aaaa" not in body and b"bbbb" not in body

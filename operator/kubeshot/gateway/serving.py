"""Listening: a site that caps the connections one client address may hold open.

aiohttp bounds how long a connection may wait for a complete request head (its keep-alive
timeout, which it arms from the moment a connection opens; `create_app` sets it to
KUBESHOT_HEADER_TIMEOUT) but not how many connections one client opens. Without a cap, a
slowloris client holds as many as the process has file descriptors; with it, one address (one
IPv6 /64) holds at most KUBESHOT_MAX_CONNECTIONS_PER_ADDRESS, and the next is answered 503 and
closed before a byte of it is parsed. TRUSTED_PROXIES are exempt: each of their connections
carries other clients.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.security import SECURE_HEADERS, client_key
from kubeshot.gateway.settings import Network

log = logging.getLogger("kubeshot.gateway.connections")


def _refusal(limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"this address already has {limit} connections open; reuse them",
                "details": {"limit": limit},
            }
        }
    ).encode()
    head = [
        "HTTP/1.1 503 Service Unavailable",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "Retry-After: 1",
        "Cache-Control: no-store",
        *(f"{name}: {value}" for name, value in SECURE_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """Open connections per client address (IPv6 per /64), at most `limit` each."""

    def __init__(
        self, limit: int, exempt: Sequence[Network] = (), metrics: Metrics | None = None
    ) -> None:
        self.limit = limit
        self.exempt = list(exempt)
        self.metrics = metrics
        self._open: Counter[str] = Counter()
        self.refusal = _refusal(limit)

    def open_connections(self, key: str) -> int:
        return self._open[key]

    def key(self, transport: asyncio.BaseTransport) -> str | None:
        """The address key a connection counts under; None when it is not counted."""
        peer = transport.get_extra_info("peername")
        if not isinstance(peer, tuple) or not peer:
            return None  # not an IP socket
        host = str(peer[0])
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.exempt):
            return None
        return client_key(str(address))

    def admit(self, transport: asyncio.BaseTransport) -> tuple[bool, str | None]:
        key = self.key(transport)
        if key is None:
            return True, None
        if self._open[key] >= self.limit:
            if self.metrics is not None:
                self.metrics.connections_refused.labels(reason="per_address").inc()
            log.warning("refused a connection from %s: %d already open", key, self.limit)
            return False, key
        self._open[key] += 1
        return True, key

    def release(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def protocol(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose connections are counted (and refused over the limit)."""
        return lambda: _Guarded(self, _json_errors(factory()))


def _json_errors(protocol: asyncio.Protocol) -> asyncio.Protocol:
    """aiohttp answers a request it cannot parse (a request line over 8,190 bytes, a malformed
    header) itself, before any middleware, in text/plain and quoting the bytes it choked on;
    this makes that answer the gateway's JSON error envelope. aiohttp's only hook for it is the
    handler's `handle_error`, and its handlers are slotted: the handler the server made becomes
    a _JsonErrorHandler (same slots, one method overridden)."""
    if type(protocol) is RequestHandler:
        protocol.__class__ = _JsonErrorHandler
    return protocol


class _JsonErrorHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:
            log.error("error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("unparseable request from %s: %r", request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp: an answer is already on its way
            raise ConnectionError("response already sent, cannot send the error")
        if isinstance(exc, LineTooLong):
            error = ApiError(status, "invalid_request", "request line or header field too long")
        elif isinstance(exc, BadHttpMessage) or status == 400:
            # The parser's message quotes the bytes it choked on: never echoed back.
            error = ApiError(status, "invalid_request", "malformed HTTP request")
        elif status == 504:
            error = ApiError(status, "timeout", "the request was not answered in time")
        else:
            error = ApiError(status, "internal", "internal error")
        response = web.json_response(error.body(), status=status, headers=SECURE_HEADERS)
        response.force_close()
        return response


class _Guarded(asyncio.Protocol):
    """The aiohttp protocol of one connection, behind the guard's count."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.admitted = False
        self.counted: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.admitted, self.counted = self.guard.admit(transport)
        if not self.admitted:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self.guard.refusal)
            transport.close()
            return
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        if self.counted is not None:
            self.guard.release(self.counted)
            self.counted = None
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


class GatewaySite(web.BaseSite):
    """A TCP site whose connections pass a ConnectionGuard; a TLS handshake gets
    `handshake_timeout` seconds (the header timeout) rather than asyncio's 60."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.host = host
        self.port = port
        self.guard = guard
        self.handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        options: dict[str, Any] = {"ssl": self._ssl_context, "backlog": self._backlog}
        if self._ssl_context is not None and self.handshake_timeout is not None:
            options["ssl_handshake_timeout"] = self.handshake_timeout
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.protocol(server), self.host, self.port, **options
        )
        if self.port == 0 and self._server.sockets:
            self.port = int(self._server.sockets[0].getsockname()[1])

"""The forward proxy every browser request goes through: asyncio streams, standard library only.

It speaks just enough HTTP/1.1 to judge and relay: absolute-form requests (with keep-alive and
WebSocket upgrades), CONNECT tunnels (HTTPS, wss, and ws, which Chromium always tunnels), and
chaining through an upstream proxy with CONNECT. It never looks into tunnels; it decides on the
destination, connects only to addresses it checked, and counts every byte it receives.

Every request must carry the proxy login of a capture in progress (`Proxy-Authorization: Basic`);
it is judged under that capture's session only. Anything else is answered with a 407 challenge
and goes nowhere (see `logins`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urljoin, urlsplit

from kubeshot.api import NetworkRules, ProxyCredentials
from kubeshot_capture.guard.addresses import IPAddress
from kubeshot_capture.guard.logins import LOGIN_URL, REALM, Logins, ProxyLogin
from kubeshot_capture.guard.rules import Resolver, system_resolver
from kubeshot_capture.guard.session import EgressSession, Refused
from kubeshot_capture.guard.targets import InvalidTarget, Target, parse_authority, parse_url

log = logging.getLogger("kubeshot_capture.guard")

READ_SIZE = 256 * 1024
"""Bytes read per call when relaying: large reads keep the per-byte cost of Python near zero."""
HEAD_LIMIT = 256 * 1024
"""Largest request or response head (request line or status line plus headers)."""
CONNECT_TIMEOUT = 15.0
"""Seconds to open a connection to a destination or to the upstream proxy."""
MAX_IDLE_UPSTREAMS = 8
"""Idle keep-alive connections to destinations kept per browser connection."""
MAX_LOGGED_HOSTS = 1000
"""Hosts remembered so that refused requests without a login are logged once per host."""

# Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus the proxy's own.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
    }
)


class _BadMessage(Exception):
    """A message the proxy will not relay (malformed or ambiguous framing)."""


class _Cut(Exception):
    """The session cut the traffic (budget exceeded or capture over)."""


Headers = list[tuple[bytes, bytes]]
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connector = Callable[[str, int], Awaitable[Streams]]
"""Opens a TCP connection to (host or address text, port)."""


async def open_connection(host: str, port: int) -> Streams:
    """The default connector: a plain TCP connection with large buffers."""
    return await asyncio.open_connection(host, port, limit=HEAD_LIMIT)


def _parse_head(head: bytes) -> tuple[list[bytes], Headers]:
    lines = head[:-4].split(b"\r\n")
    start = lines[0].split(b" ", 2)
    headers: Headers = []
    for line in lines[1:]:
        if not line or line[:1] in (b" ", b"\t"):
            raise _BadMessage("obsolete header folding")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _BadMessage("malformed header")
        headers.append((name.lower(), value.strip()))
    return start, headers


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _tokens(headers: Headers, name: bytes) -> set[bytes]:
    found: set[bytes] = set()
    for key, value in headers:
        if key == name:
            found.update(t.strip().lower() for t in value.split(b","))
    return found


def _body_length(headers: Headers) -> int | None:
    """Content-Length, or -1 for chunked; None when the message declares no body framing."""
    encodings = _tokens(headers, b"transfer-encoding")
    if encodings:
        if b"chunked" not in encodings:
            raise _BadMessage("transfer-encoding without chunked")
        return -1
    lengths = {v for k, v in headers if k == b"content-length"}
    if not lengths:
        return None
    if len(lengths) != 1:
        raise _BadMessage("conflicting content-length")
    text = lengths.pop()
    if not text.isdigit():
        raise _BadMessage("invalid content-length")
    return int(text)


REFUSAL_BODY = b"kubeshot egress guard: request not forwarded\n"
"""The body of every answer the guard gives in place of a destination's. The page can read it
(a refused navigation renders it, `format: html` returns it), so it names no reason: what a
name resolves to is not the page's to learn. The reason goes to the log and the session's
record of refusals (`EgressSession.blocked_reason`)."""


def _simple_response(status: int, text: str, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(REFUSAL_BODY)}\r\nConnection: close\r\n"
        f"Cache-Control: no-store\r\n{extra}X-Kubeshot-Egress: refused\r\n\r\n"
    ).encode() + REFUSAL_BODY


_FORBIDDEN = _simple_response(403, "Forbidden")
_BAD_REQUEST = _simple_response(400, "Bad Request")
_BAD_GATEWAY = _simple_response(502, "Bad Gateway")
AUTH_CHALLENGE = _simple_response(
    407, "Proxy Authentication Required", f'Proxy-Authenticate: Basic realm="{REALM}"\r\n'
)
"""The answer to a request without a valid login. Chromium answers it with the login of the
context the request belongs to, if it has one; the browser's own requests have none."""
_LOGIN_TARGET = LOGIN_URL.encode()
_LOGGED_IN = (
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n"
    b"Cache-Control: no-store\r\n\r\n"
)


class _Upstream:
    """A connection to one destination (directly or tunnelled through the upstream proxy)."""

    __slots__ = ("answered", "key", "reader", "session", "writer")

    def __init__(
        self,
        session: EgressSession,
        key: tuple[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.session = session
        """The session that admitted this destination: the only one that may reuse it."""
        self.key = key
        self.reader = reader
        self.writer = writer
        self.answered = False
        """Whether any of the current response was passed on (then it cannot be retried)."""

    def stale(self) -> bool:
        """Closed, or the destination hung up while idle."""
        return (
            self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None
        )

    def close(self) -> None:
        self.writer.transport.abort()


class EgressGuard:
    """One per browser: a forward proxy on 127.0.0.1:<free port> that judges every request.

    Use as an async context manager. Each capture gets a session of its own (`session()`), any
    number at a time; a request is judged by the session whose proxy login it carries.
    """

    def __init__(
        self, *, resolver: Resolver | None = None, connector: Connector | None = None
    ) -> None:
        """
        Args:
            resolver: turns host names into addresses (default: the system's getaddrinfo).
                Tests inject one to point names at 127.0.0.x without touching /etc/hosts.
            connector: opens a TCP connection to (checked address or upstream proxy host, port)
                (default: asyncio.open_connection). Tests inject one to observe, and divert,
                every connection the guard makes.
        """
        self._resolver: Resolver = resolver or system_resolver
        self._connector: Connector = connector or open_connection
        self._server: asyncio.Server | None = None
        self._port = 0
        self._logins: Logins[EgressSession] = Logins()
        self._unauthenticated_hosts: set[str] = set()
        self._clients: set[asyncio.Transport] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> EgressGuard:
        self._server = await asyncio.start_server(
            self._handle_client, "127.0.0.1", 0, limit=HEAD_LIMIT
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for session in self._logins.sessions():
            session.close()
        if self._server is not None:
            self._server.close()
            for transport in list(self._clients):
                transport.abort()
            handlers = list(self._handlers)
            if handlers:
                _done, pending = await asyncio.wait(handlers, timeout=5)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def browser_proxy(self) -> dict[str, str]:
        """The `proxy` argument of Playwright's `chromium.launch()`: everything, loopback
        included, goes through the guard.

        It carries no login: what the browser sends outside a capture's context (its own
        background requests) is refused with a 407 it cannot answer. Each context gets its
        own proxy with a login, `context_proxy()`."""
        if not self._port:
            raise RuntimeError("EgressGuard is not started (use `async with`)")
        return {"server": f"http://127.0.0.1:{self._port}", "bypass": "<-loopback>"}

    def context_proxy(self, login: ProxyLogin) -> dict[str, str]:
        """The `proxy` argument of Playwright's `browser.new_context()` for the capture whose
        session has this login (`session.login`): the context's requests are that capture's."""
        return {
            **self.browser_proxy,
            "username": login.username,
            "password": login.password,
        }

    def launch_args(self) -> list[str]:
        """Extra Chromium flags: WebRTC may not send UDP around the proxy.

        Chromium sends WebRTC's STUN/TURN datagrams directly even with a proxy configured;
        `--webrtc-ip-handling-policy` is the switch that stops it (tests/browser/guard prove it).
        """
        return [
            "--webrtc-ip-handling-policy=disable_non_proxied_udp",
            "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        ]

    def session(
        self,
        rules: NetworkRules,
        *,
        max_download_bytes: int,
        upstream: ProxyCredentials | None = None,
        login: ProxyLogin | None = None,
    ) -> EgressSession:
        """Start a capture's session: requests carrying its login are judged by `rules`.

        Args:
            login: the proxy login of the context the capture runs in (one opened ahead of
                time); a new one by default. Open the context with
                `context_proxy(session.login)`. A login serves one session only.
        """
        session = EgressSession(
            rules,
            max_download_bytes=max_download_bytes,
            upstream=upstream,
            resolver=self._resolver,
            login=login,
            on_close=self._session_closed,
        )
        self._logins.add(session.login, session)
        return session

    @property
    def sessions(self) -> list[EgressSession]:
        """The sessions in progress."""
        return self._logins.sessions()

    def _session_closed(self, session: EgressSession) -> None:
        self._logins.remove(session.login, session)

    def _refuse_unauthenticated(self, method: bytes, target: bytes) -> bytes:
        """The 407 challenge; logged once per host for the guard's lifetime, not per request."""
        host = target.decode("latin-1")
        if method != b"CONNECT":
            host = urlsplit(host).netloc
        host = host.rpartition("@")[2][:255]
        if host not in self._unauthenticated_hosts:
            if len(self._unauthenticated_hosts) < MAX_LOGGED_HOSTS:
                self._unauthenticated_hosts.add(host)
            log.debug(
                "egress guard: refused %s %s without a capture's proxy login (the browser's "
                "own traffic, or a challenge before the login); not logged again",
                method.decode("latin-1")[:16],
                host,
            )
        return AUTH_CHALLENGE

    # -- one browser connection ------------------------------------------------------------

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        self._clients.add(transport)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        idle: dict[tuple[str, int], _Upstream] = {}
        try:
            await self._serve(reader, writer, idle)
        except (_Cut, _BadMessage, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError):
                writer.write(_simple_response(431, "Request Header Fields Too Large"))
        except OSError as exc:  # pragma: no cover - unexpected socket errors end the connection
            log.debug("egress guard connection error: %s", exc)
        except Exception:  # pragma: no cover - a bug here must end one connection, not the guard
            log.exception("egress guard: unexpected error; connection closed")
        finally:
            for upstream in idle.values():
                upstream.close()
            self._clients.discard(transport)
            if handler is not None:
                self._handlers.discard(handler)
            if transport.is_closing():
                transport.abort()
            else:
                transport.close()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle: dict[tuple[str, int], _Upstream],
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            try:
                start, headers = _parse_head(head)
                if len(start) != 3 or not start[2].startswith(b"HTTP/1."):
                    raise _BadMessage("bad request line")
            except _BadMessage as exc:
                log.info("egress guard refused a malformed request: %s", exc)
                writer.write(_BAD_REQUEST)
                return
            method, target_text, version = start
            session = self._logins.lookup([v for k, v in headers if k == b"proxy-authorization"])
            if session is None:
                writer.write(self._refuse_unauthenticated(method, target_text))
                return
            if target_text == _LOGIN_TARGET:  # answered here: see LOGIN_URL
                writer.write(_LOGGED_IN)
                return
            session.track(writer.transport)
            if method == b"CONNECT":
                await self._tunnel(session, target_text.decode("latin-1"), reader, writer)
                return
            keep_alive = await self._forward(
                session,
                method,
                target_text.decode("latin-1"),
                version,
                headers,
                reader,
                writer,
                idle,
            )
            if not keep_alive:
                return

    async def _tunnel(
        self,
        session: EgressSession,
        authority: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            if ":" not in authority.rpartition("]")[2]:
                raise InvalidTarget(f"CONNECT target without a port: {authority!r}")
            target = parse_authority(authority, "https")
        except InvalidTarget as exc:
            session.blocked_requests += 1
            log.warning("egress guard refused CONNECT: %s", exc)
            writer.write(_FORBIDDEN)
            return
        upstream = await self._open(session, target, writer)
        if upstream is None:
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await self._relay(session, reader, writer, upstream)

    async def _open(
        self, session: EgressSession, target: Target, writer: asyncio.StreamWriter
    ) -> _Upstream | None:
        """Admit and connect, or answer the browser with the refusal and return None."""
        try:
            addresses = await session.admit(target)  # a refusal is logged and recorded there
        except Refused:
            writer.write(_FORBIDDEN)
            return None
        except OSError as exc:
            log.info("egress guard: cannot resolve %s: %s", target.host, exc)
            writer.write(_BAD_GATEWAY)
            return None
        try:
            return await self._connect(session, target, addresses)
        except (OSError, TimeoutError) as exc:
            log.info("egress guard: cannot connect to %s: %s", target.authority, exc)
            writer.write(_BAD_GATEWAY)
            return None

    async def _connect(
        self, session: EgressSession, target: Target, addresses: list[IPAddress]
    ) -> _Upstream:
        error: BaseException | None = None
        for address in addresses:
            try:
                if session.upstream is not None:
                    reader, writer = await _connect_via_upstream(
                        self._connector, session.upstream, address, target.port
                    )
                else:
                    reader, writer = await asyncio.wait_for(
                        self._connector(str(address), target.port), CONNECT_TIMEOUT
                    )
            except (OSError, TimeoutError) as exc:
                error = exc
                continue
            session.track(writer.transport)
            return _Upstream(session, (target.host, target.port), reader, writer)
        raise OSError(str(error) if error else "no address to connect to")

    async def _relay(
        self,
        session: EgressSession,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> None:
        """Relay both ways until both sides are done; bytes from the destination are counted."""

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, counted: bool
        ) -> None:
            try:
                while True:
                    data = await source.read(READ_SIZE)
                    if not data:
                        break
                    if counted and not session.count(len(data)):
                        raise _Cut
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof() and not sink.is_closing():
                    sink.write_eof()
            except (ConnectionError, OSError, _Cut):
                writer.transport.abort()
                upstream.close()

        try:
            await asyncio.gather(
                pipe(reader, upstream.writer, False), pipe(upstream.reader, writer, True)
            )
        finally:
            session.untrack(upstream.writer.transport)
            upstream.close()

    async def _forward(
        self,
        session: EgressSession,
        method: bytes,
        url: str,
        version: bytes,
        headers: Headers,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        idle: dict[tuple[str, int], _Upstream],
    ) -> bool:
        """Relay one absolute-form request and its response; True to keep the connection."""
        try:
            request = _prepare_request(method, url, version, headers)
        except (InvalidTarget, _BadMessage) as exc:
            session.blocked_requests += 1
            log.warning("egress guard refused a request: %s", exc)
            writer.write(_FORBIDDEN if isinstance(exc, InvalidTarget) else _BAD_REQUEST)
            return False
        target = request.target
        upstream, reused = await self._checkout(session, target, writer, idle)
        if upstream is None:
            return False
        while True:
            upstream.answered = False
            try:
                upstream.writer.write(request.head)
                if request.body_length == -1:
                    await _copy_chunked(reader, upstream.writer, None)
                elif request.body_length:
                    await _copy_exact(reader, upstream.writer, request.body_length, None)
                await upstream.writer.drain()
                reusable, framed = await self._respond(
                    session, method, url, upstream, reader, writer
                )
                break
            except (ConnectionError, asyncio.IncompleteReadError, _BadMessage, OSError) as exc:
                upstream.close()
                if reused and not request.body_length and not upstream.answered:
                    # The destination closed an idle keep-alive connection as we reused it:
                    # send a request without a body again on a fresh connection, like browsers do.
                    reused = False
                    upstream = await self._open(session, target, writer)
                    if upstream is None:
                        return False
                    continue
                log.debug("egress guard: relaying to %s failed: %r", target.authority, exc)
                if isinstance(exc, _BadMessage) and not upstream.answered:
                    writer.write(_BAD_GATEWAY)
                raise _Cut from None
        client_keeps = framed and request.keep_alive
        if reusable and client_keeps:
            if len(idle) >= MAX_IDLE_UPSTREAMS:
                idle.pop(next(iter(idle))).close()
            idle[(target.host, target.port)] = upstream
        else:
            upstream.close()
        return client_keeps

    async def _checkout(
        self,
        session: EgressSession,
        target: Target,
        writer: asyncio.StreamWriter,
        idle: dict[tuple[str, int], _Upstream],
    ) -> tuple[_Upstream | None, bool]:
        """(a connection to the target, whether it is an idle one reused); the connection is
        None when the request was refused (the browser has been answered)."""
        upstream = idle.pop((target.host, target.port), None)
        if upstream is not None and upstream.session is session and not upstream.stale():
            # A reused connection goes to an address this session checked for this target;
            # only whether the capture is still on (and within budget) can have changed.
            try:
                session.check_open()
            except Refused:
                upstream.close()
                writer.write(_FORBIDDEN)
                return None, False
            return upstream, True
        if upstream is not None:
            upstream.close()
        return await self._open(session, target, writer), False

    async def _respond(
        self,
        session: EgressSession,
        method: bytes,
        url: str,
        upstream: _Upstream,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[bool, bool]:
        """Relay the response: (destination connection reusable, response ended by framing)."""
        source = upstream.reader
        while True:
            head = await source.readuntil(b"\r\n\r\n")
            start, headers = _parse_head(head)
            if len(start) < 2 or not start[1].isdigit():
                raise _BadMessage("bad status line")
            status = int(start[1])
            upstream.answered = True
            await _pass_on(head, writer, session)
            if status == 101:
                await self._relay(session, reader, writer, upstream)
                raise _Cut
            if 100 <= status < 200:
                continue
            break
        if 300 <= status < 400:
            location = _header(headers, b"location")
            if location:
                session.record_redirect(url, urljoin(url, location.decode("latin-1")))
        length = _body_length(headers)
        if method == b"HEAD" or status in (204, 304):
            length = 0
        if length == -1:
            await _copy_chunked(source, writer, session)
        elif length is None:
            await _copy_until_eof(source, writer, session)
            return False, False
        elif length:
            await _copy_exact(source, writer, length, session)
        closing = b"close" in _tokens(headers, b"connection") or start[0] == b"HTTP/1.0"
        return not closing, True


@dataclass(frozen=True, slots=True)
class _Request:
    """An absolute-form request from the browser, as its destination will get it."""

    target: Target
    head: bytes
    """The request line in origin form and the end-to-end headers (hop-by-hop ones dropped)."""
    body_length: int | None
    """Content-Length, -1 for a chunked body, None for no body."""
    keep_alive: bool
    """Whether the browser may send another request on its connection afterwards."""


def _prepare_request(method: bytes, url: str, version: bytes, headers: Headers) -> _Request:
    """Where a browser's request goes and the head to send there (no I/O).

    Raises InvalidTarget for a URL the guard does not proxy, _BadMessage for ambiguous framing.
    """
    if not url[:7].lower() == "http://":
        raise InvalidTarget(f"only http:// requests are proxied, not {url[:16]!r}")
    target = parse_url(url)
    body_length = _body_length(headers)
    connection = _tokens(headers, b"connection")
    upgrade = _header(headers, b"upgrade") if b"upgrade" in connection else None
    out = [method, b" ", _origin_form(url).encode("latin-1"), b" ", version, b"\r\n"]
    for name, value in headers:
        if name in _HOP_BY_HOP or name in connection:
            continue
        if body_length == -1 and name == b"content-length":
            continue  # chunked framing wins (RFC 9112 6.3); never forward both
        out += (name, b": ", value, b"\r\n")
    if body_length == -1:
        out.append(b"transfer-encoding: chunked\r\n")
    if upgrade is not None:
        out += (b"connection: Upgrade\r\nupgrade: ", upgrade, b"\r\n")
    out.append(b"\r\n")
    keep_alive = version == b"HTTP/1.1" and b"close" not in connection
    return _Request(target, b"".join(out), body_length, keep_alive)


def _origin_form(url: str) -> str:
    after_scheme = url[7:]
    for index, char in enumerate(after_scheme):
        if char in "/?":
            path = after_scheme[index:]
            break
    else:
        path = "/"
    path = path.split("#", 1)[0]
    return path if path.startswith("/") else "/" + path


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _chunk_size(line: bytes) -> int:
    """The size a chunk-size line (with its CRLF) announces; extensions are ignored."""
    digits = line[:-2].split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16 or not _HEX_DIGITS.issuperset(digits):
        raise _BadMessage("bad chunk size")
    return int(digits, 16)


async def _pass_on(data: bytes, sink: asyncio.StreamWriter, session: EgressSession | None) -> None:
    """Write `data` to `sink` with back-pressure (waiting while the reader lags behind).

    With a session, `data` came from a destination: it is counted against the download budget
    first, and never written once it would go past it (the session then cuts the traffic).
    """
    if session is not None and not session.count(len(data)):
        raise _Cut
    sink.write(data)
    await sink.drain()


async def _copy_exact(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    length: int,
    session: EgressSession | None,
) -> None:
    remaining = length
    while remaining:
        data = await source.read(min(remaining, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(data)
        await _pass_on(data, sink, session)


async def _copy_until_eof(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, session: EgressSession
) -> None:
    while data := await source.read(READ_SIZE):
        await _pass_on(data, sink, session)


async def _copy_chunked(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, session: EgressSession | None
) -> None:
    """Relay a chunked body: chunk-size lines, chunks and the trailer section (any number of
    lines, up to the blank one), every byte of it counted and passed on with back-pressure."""
    while True:
        line = await source.readuntil(b"\r\n")
        size = _chunk_size(line)
        await _pass_on(line, sink, session)
        if size == 0:
            break
        await _copy_exact(source, sink, size + 2, session)
    while True:
        trailer = await source.readuntil(b"\r\n")
        await _pass_on(trailer, sink, session)
        if trailer == b"\r\n":
            return


async def _connect_via_upstream(
    connector: Connector, proxy: ProxyCredentials, address: IPAddress, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tunnel to the checked address through the upstream proxy (CONNECT, Basic auth)."""
    parts = urlsplit(proxy.server)
    host = parts.hostname or ""
    proxy_port = parts.port or (443 if parts.scheme == "https" else 80)
    reader, writer = await asyncio.wait_for(connector(host, proxy_port), CONNECT_TIMEOUT)
    if parts.scheme == "https":
        await writer.start_tls(ssl.create_default_context(), server_hostname=host)
    authority = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.username is not None:
        secret = proxy.password.get_secret_value() if proxy.password is not None else ""
        token = base64.b64encode(f"{proxy.username}:{secret}".encode()).decode("ascii")
        request += f"Proxy-Authorization: Basic {token}\r\n"
    writer.write(request.encode("latin-1") + b"\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        writer.transport.abort()
        raise OSError("upstream proxy closed the connection during CONNECT") from exc
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status_line) < 2 or status_line[1] != b"200":
        writer.transport.abort()
        status = status_line[1].decode("latin-1") if len(status_line) > 1 else "?"
        raise OSError(f"upstream proxy {host}:{proxy_port} refused CONNECT with status {status}")
    return reader, writer

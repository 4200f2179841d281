"""The proxy's HTTP handling, spoken to directly: keep-alive, bodies, upgrades, tunnels,
upstream chaining with credentials, the download budget, refusals, and the capture logins that
tie every request to its session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError

from kubeshot.api import NetworkRules, ProxyCredentials
from kubeshot_capture.guard import EgressGuard, ProxyLogin
from tests.browser.guard.conftest import (
    CANARY_HOST,
    PROXY_HOST,
    SITE_HOST,
    Canary,
    Network,
    Site,
    UpstreamProxy,
    Visit,
    rules_for,
)
from tests.support import wait_until

ECHO_HOST = "127.0.0.7"
MiB = 1024 * 1024
pytestmark = pytest.mark.timeout(60)


class Client:
    """A browser-like proxy client on one keep-alive connection.

    Like a capture's browser context, it sends a proxy login with every request: `login`, or
    by default that of the guard's one session in progress (none when there is none or several).
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, guard: EgressGuard
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.guard = guard
        self.login: ProxyLogin | None = None
        self.anonymous = False
        """True: send no login at all (the browser's own background requests)."""

    @classmethod
    async def open(cls, guard: EgressGuard) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)
        return cls(reader, writer, guard)

    def signed(self, raw: bytes) -> bytes:
        """`raw` with a Proxy-Authorization header after its request line."""
        sessions = self.guard.sessions
        login = self.login or (sessions[0].login if len(sessions) == 1 else None)
        if self.anonymous or login is None:
            return raw
        line, sep, rest = raw.partition(b"\r\n")
        return line + sep + b"Proxy-Authorization: " + login.header() + b"\r\n" + rest

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(self.signed(raw))
        await self.writer.drain()
        return await self.response(head_only=raw.startswith((b"HEAD ", b"CONNECT ")))

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        if head_only or status in (101, 204, 304):
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer lines
                    break
                body += (await self.reader.readexactly(size + 2))[:-2]
            return status, headers, body
        if "content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers["content-length"]))
        return status, headers, await self.reader.read()

    async def closed(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except (ConnectionError, TimeoutError):
            return True

    def close(self) -> None:
        self.writer.close()


@pytest_asyncio.fixture(scope="module")
async def echo_server() -> AsyncIterator[int]:
    """Answers one HTTP request with 101 Switching Protocols, then echoes raw bytes; or, for
    CONNECT-tunnel tests, echoes from the first byte."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(4)
            if first == b"GET ":
                head = first + await reader.readuntil(b"\r\n\r\n")
                if b"upgrade: websocket" in head.lower():
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\n"
                    )
                else:
                    body = b"plain: " + head.split(b"\r\n", 1)[0]
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                    writer.close()
                    return
            else:
                writer.write(first)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, ECHO_HOST, 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def rules(site: Site, canary: Canary, echo_server: int) -> NetworkRules:
    return rules_for(
        site,
        canary,
        allowedCIDRs=["127.0.0.3/32", f"{ECHO_HOST}/32"],
        allowedPorts=[site.port, canary.port, echo_server],
    )


@pytest_asyncio.fixture
async def client(guard: EgressGuard) -> AsyncIterator[Client]:
    opened = await Client.open(guard)
    yield opened
    opened.close()


def get(url: str, extra: str = "") -> bytes:
    host = url.split("/")[2]
    return f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def test_keep_alive_many_requests_and_hosts(
    guard: EgressGuard, client: Client, site: Site, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=10**7) as session:
        for index in range(5):
            url = site.url(f"/echo?i={index}", host="site.test" if index % 2 else "127.0.0.3")
            status, _headers, body = await client.request(get(url))
            assert status == 200
            assert body == f"GET /echo?i={index}".encode()
        status, _headers, body = await client.request(get(site.url("/chunked")))
        assert (status, body) == (200, b"hello chunked world")
        host = f"127.0.0.3:{site.port}"
        head = f"HEAD {site.url('/echo')} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        status, headers, _ = await client.request(head)
        assert (status, headers["content-length"]) == (200, "1234")
        status, _headers, body = await client.request(get(site.url("/echo?after-head")))
        assert body == b"GET /echo?after-head"
        assert session.blocked_requests == 0
        assert session.bytes_transferred > 100


async def test_destination_hanging_up_on_an_idle_connection(
    guard: EgressGuard, client: Client, site: Site, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=10**7):
        for index in range(3):
            status, _headers, body = await client.request(get(site.url(f"/hang-up?{index}")))
            assert (status, body) == (200, b"bye")
            status, _headers, body = await client.request(get(site.url(f"/echo?{index}")))
            assert (status, body) == (200, f"GET /echo?{index}".encode())


async def test_request_bodies_are_forwarded(
    guard: EgressGuard, client: Client, site: Site, rules: NetworkRules
) -> None:
    host = f"127.0.0.3:{site.port}"
    with guard.session(rules, max_download_bytes=10**7):
        post = (
            f"POST {site.url('/echo?len')} HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Length: 5\r\n\r\nhello"
        ).encode()
        status, _headers, body = await client.request(post)
        assert (status, body) == (200, b"POST /echo?len hello")
        chunked = (
            f"POST {site.url('/echo?chunked')} HTTP/1.1\r\nHost: {host}\r\n"
            "Transfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        ).encode()
        # Chunked wins over Content-Length, which is not forwarded (no request smuggling).
        status, _headers, body = await client.request(chunked)
        assert (status, body) == (200, b"POST /echo?chunked hello")


async def test_websocket_upgrade_over_plain_http(
    guard: EgressGuard, client: Client, echo_server: int, rules: NetworkRules
) -> None:
    url = f"http://{ECHO_HOST}:{echo_server}/socket"
    with guard.session(rules, max_download_bytes=10**7) as session:
        status, _headers, _ = await client.request(
            get(url, "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n")
        )
        assert status == 101
        client.writer.write(b"ping over the upgraded connection")
        echoed = await asyncio.wait_for(client.reader.readexactly(33), 5)
        assert echoed == b"ping over the upgraded connection"
        assert session.bytes_transferred >= 33


async def test_websocket_upgrade_to_blocked_target_is_refused(
    guard: EgressGuard, client: Client, canary: Canary, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=10**7) as session:
        status, _headers, _body = await client.request(
            get(canary.url("/ws"), "Connection: Upgrade\r\nUpgrade: websocket\r\n")
        )
        assert "loopback" in (session.blocked_reason(canary.url("/ws")) or "")
    assert status == 403
    assert not canary.reached()


async def test_connect_tunnel(
    guard: EgressGuard, client: Client, echo_server: int, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=10**7) as session:
        authority = f"{ECHO_HOST}:{echo_server}"
        status, _headers, _ = await client.request(
            f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
        )
        assert status == 200
        hello = b"\x16\x03\x01 not really TLS"
        client.writer.write(hello)
        assert await asyncio.wait_for(client.reader.readexactly(len(hello)), 5) == hello
        assert session.bytes_transferred == len(hello)


@pytest.mark.parametrize(
    "authority",
    [
        "127.0.0.66:{p}",
        "canary.test:{p}",
        "[::1]:{p}",
        "2130706498:{p}",
        "0x7f.66:{p}",
        "169.254.169.254:{p}",
        "metadata.test:{p}",
        "canary.test",
        "user@canary.test:{p}",
        "mapped.test:{p}",
        "[::ffff:127.0.0.66]:{p}",
        "public.test:8",
    ],
)
async def test_connect_to_blocked_targets_is_refused(
    guard: EgressGuard, client: Client, canary: Canary, rules: NetworkRules, authority: str
) -> None:
    target = authority.format(p=canary.port)
    with guard.session(rules, max_download_bytes=10**7) as session:
        status, _headers, _ = await client.request(
            f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        )
        assert status == 403
        assert session.blocked_requests == 1
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /relative HTTP/1.1\r\nHost: 127.0.0.66\r\n\r\n",
        b"GET https://127.0.0.3/ HTTP/1.1\r\nHost: 127.0.0.3\r\n\r\n",
        b"GET ftp://127.0.0.3/ HTTP/1.1\r\n\r\n",
        b"GET http://127.0.0.3/ SPDY/3\r\n\r\n",
        b"garbage\r\n\r\n",
        b"GET http://127.0.0.3/ HTTP/1.1\r\n folded: header\r\n\r\n",
        b"GET http://127.0.0.3/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET http://127.0.0.3/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
async def test_malformed_or_unsupported_requests_are_refused(
    guard: EgressGuard, client: Client, rules: NetworkRules, raw: bytes
) -> None:
    with guard.session(rules, max_download_bytes=10**7):
        status, _headers, _ = await client.request(raw)
    assert status in (400, 403)
    assert await client.closed()


async def test_without_a_session_everything_is_refused(
    guard: EgressGuard, client: Client, site: Site
) -> None:
    assert guard.sessions == []
    site.requests.clear()
    status, headers, _ = await client.request(get(site.url("/page?no-session")))
    assert status == 407
    assert headers["proxy-authenticate"] == 'Basic realm="kubeshot"'
    assert site.requests == []


async def test_closing_the_session_cuts_open_connections(
    guard: EgressGuard, client: Client, echo_server: int, rules: NetworkRules
) -> None:
    session = guard.session(rules, max_download_bytes=10**7)
    authority = f"{ECHO_HOST}:{echo_server}"
    status, _headers, _ = await client.request(f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
    assert status == 200
    session.close()
    assert await client.closed()


async def test_budget_exceeded_cuts_traffic(
    guard: EgressGuard, client: Client, site: Site, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=100_000) as session:
        client.writer.write(client.signed(get(site.url("/big?bytes=5000000"))))
        received = 0
        try:
            head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
            received = len(head)
            while chunk := await asyncio.wait_for(client.reader.read(65536), 5):
                received += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        assert session.download_exceeded
        assert received <= 100_000
        assert session.bytes_transferred <= 100_000
        status, _headers, _ = await (await Client.open(guard)).request(get(site.url("/page")))
        assert status == 403


async def test_budget_counts_tunnel_bytes(
    guard: EgressGuard, client: Client, echo_server: int, rules: NetworkRules
) -> None:
    with guard.session(rules, max_download_bytes=1000) as session:
        authority = f"{ECHO_HOST}:{echo_server}"
        await client.request(f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
        client.writer.write(b"x" * 5000)
        assert await client.closed()
        assert session.download_exceeded


async def read_until_cut(client: Client, limit: int) -> int:
    """Bytes received until the guard cuts the connection, or until more than `limit` came."""
    received = 0
    try:
        while received <= limit and (
            chunk := await asyncio.wait_for(client.reader.read(65536), 10)
        ):
            received += len(chunk)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    return received


async def test_budget_counts_chunked_trailers(
    guard: EgressGuard, client: Client, site: Site, rules: NetworkRules
) -> None:
    """4 MB of trailer lines after a 5-byte body: once relayed uncounted past any budget."""
    with guard.session(rules, max_download_bytes=MiB) as session:
        client.writer.write(client.signed(get(site.url("/trailers?bytes=4000000"))))
        received = await read_until_cut(client, MiB)
        assert session.download_exceeded
        assert session.bytes_transferred <= MiB
        assert received <= MiB
    within = await Client.open(guard)
    try:
        with guard.session(rules, max_download_bytes=10 * MiB) as session:
            status, _headers, body = await within.request(get(site.url("/trailers?bytes=300000")))
            assert (status, body) == (200, b"hello")
            assert session.bytes_transferred > 300_000
            assert not session.download_exceeded
    finally:
        within.close()


TRAILER_HOST = "127.0.0.8"
SMALL_BUFFER = 64 * 1024
"""Socket buffers of the test's own sockets: small and fixed, so that what the kernel may hold
in flight (a few MB with the guard's own buffers) is far below what the destination sends."""


class TrailerServer:
    """Answers each request with a 5-byte chunked body and then `size` bytes of trailer lines,
    sent through a small send buffer; `sent` counts what the kernel has taken so far."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.sent = 0
        self.done = threading.Event()
        self.listener = socket.create_server((TRAILER_HOST, 0))
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            connection, _peer = self.listener.accept()
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
                    b"\r\n5\r\nhello\r\n0\r\n"
                )
                line = b"X-Pad: " + b"t" * 16_000 + b"\r\n"
                while self.sent < self.size:
                    connection.sendall(line)
                    self.sent += len(line)
                connection.sendall(b"\r\n")
                self.done.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def trailer_server() -> Iterator[TrailerServer]:
    server = TrailerServer(24 * MiB)
    yield server
    server.close()


async def small_buffer_connection(
    host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection (to a test server on loopback) whose receive buffer stays small."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock, limit=256 * 1024)


async def test_trailers_are_relayed_with_back_pressure(
    trailer_server: TrailerServer, network: Network
) -> None:
    """While the browser reads nothing, the guard stops reading the destination's trailers
    instead of buffering them (24 MB here, far more than every socket buffer on the way)."""
    rules = NetworkRules.model_validate({"allowedCIDRs": [f"{TRAILER_HOST}/32"]})
    async with EgressGuard(resolver=network.resolve, connector=small_buffer_connection) as guard:
        with guard.session(rules, max_download_bytes=64 * MiB) as session:
            reader, writer = await small_buffer_connection("127.0.0.1", guard.port)
            client = Client(reader, writer, guard)
            try:
                url = f"http://{TRAILER_HOST}:{trailer_server.port}/trailers"
                writer.write(client.signed(get(url)))
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert await asyncio.wait_for(reader.readexactly(13), 10) == b"5\r\nhello\r\n0\r\n"
                # The browser stalls: the destination must not get its 24 MB off its hands.
                assert not await wait_until(trailer_server.done.is_set, within=3)
                assert session.bytes_transferred < trailer_server.size
                received = 0
                while (line := await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)) != b"\r\n":
                    received += len(line)
                assert trailer_server.done.is_set()
                assert received == trailer_server.sent
                assert session.bytes_transferred > received
            finally:
                writer.close()


async def test_refusals_say_nothing_of_the_reason(
    guard: EgressGuard, site: Site, rules: NetworkRules, caplog: pytest.LogCaptureFixture
) -> None:
    """A page can read the guard's answers (`format: html` renders a refused navigation): every
    refusal has the same body, and what a name resolves to is only in the log and the
    session's record."""
    caplog.set_level(logging.INFO, logger="kubeshot_capture.guard")
    requests = {
        "private name": get("http://private.test/"),
        "private address": get("http://10.0.0.5/"),
        "unresolvable": get("http://nowhere.test/"),
        "port": get("http://public.test:8/"),
        "unreachable": get(f"http://{SITE_HOST}:1/"),
        "scheme": b"GET ftp://private.test/ HTTP/1.1\r\n\r\n",
        "malformed": b"GET http://private.test/ HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        "tunnel": b"CONNECT private.test:443 HTTP/1.1\r\n\r\n",
    }
    bodies: dict[str, bytes] = {}
    with guard.session(rules, max_download_bytes=10**7) as session:
        for case, raw in requests.items():
            client = await Client.open(guard)
            try:
                client.writer.write(client.signed(raw))
                head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
                assert b" 200 " not in head.split(b"\r\n", 1)[0], case
                bodies[case] = await asyncio.wait_for(client.reader.read(), 10)
            finally:
                client.close()
        assert "10.0.0.5" in (session.blocked_reason("http://private.test/") or "")
    assert len(set(bodies.values())) == 1, bodies
    assert b"10.0.0.5" not in bodies["private name"]
    assert b"private" not in bodies["private name"]
    assert "private.test resolves to 10.0.0.5" in caplog.text


# -- capture logins ---------------------------------------------------------------------------


def open_to_canary(site: Site, canary: Canary) -> NetworkRules:
    return rules_for(site, canary, allowedCIDRs=[f"{CANARY_HOST}/32"])


def bad_logins(good: ProxyLogin) -> dict[str, list[bytes]]:
    """Proxy-Authorization header values that must not pass for `good`'s session."""

    def basic(text: str) -> bytes:
        return b"Basic " + base64.b64encode(text.encode())

    return {
        "missing": [],
        "wrong password": [basic(f"{good.username}:{good.password[:-1]}x")],
        "empty password": [basic(f"{good.username}:")],
        "unknown user": [basic(f"capture-0000000000000000:{good.password}")],
        "not basic": [b"Bearer " + good.header().split(b" ", 1)[1]],
        "not base64": [b"Basic " + good.header().split(b" ", 1)[1][:-3] + b"!!!"],
        "sent twice": [good.header(), good.header()],
    }


@pytest.mark.parametrize("connect", [False, True], ids=["http", "connect"])
@pytest.mark.parametrize("case", list(bad_logins(ProxyLogin("u", "p"))))
async def test_requests_without_a_valid_login_are_challenged_and_go_nowhere(
    guard: EgressGuard, site: Site, canary: Canary, case: str, connect: bool
) -> None:
    authority = f"{CANARY_HOST}:{canary.port}"
    request_line = (
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if connect
        else f"GET {canary.url('/no-login')} HTTP/1.1\r\nHost: {authority}\r\n"
    )
    with guard.session(open_to_canary(site, canary), max_download_bytes=10**7) as session:
        headers = "".join(
            f"Proxy-Authorization: {v.decode()}\r\n" for v in bad_logins(session.login)[case]
        )
        client = await Client.open(guard)
        client.anonymous = True
        try:
            status, answer, _ = await client.request(f"{request_line}{headers}\r\n".encode())
            assert status == 407
            assert answer["proxy-authenticate"] == 'Basic realm="kubeshot"'
            await asyncio.wait_for(client.reader.read(), 5)  # then the guard hangs up
        finally:
            client.close()
        assert (session.blocked_requests, session.bytes_transferred) == (0, 0)
        assert not canary.reached(), canary.summary()
        # The twin: the same request with the session's login reaches the canary.
        signed = await Client.open(guard)
        try:
            status, _answer, _ = await signed.request(f"{request_line}\r\n".encode())
            assert status == 200
            assert await wait_until(canary.reached)
        finally:
            signed.close()


async def test_the_login_is_not_forwarded(
    guard: EgressGuard, client: Client, site: Site, canary: Canary
) -> None:
    with guard.session(open_to_canary(site, canary), max_download_bytes=10**7) as session:
        status, _headers, _ = await client.request(get(canary.url("/login-stays-here")))
        assert status == 200
    assert await wait_until(lambda: any(h.first_bytes for h in canary.hits))
    sent = b"".join(hit.first_bytes for hit in canary.hits)
    assert b"GET /login-stays-here" in sent
    assert b"proxy-authorization" not in sent.lower()
    assert session.login.password.encode() not in sent


async def test_an_ended_captures_login_is_refused(
    guard: EgressGuard, site: Site, canary: Canary, rules: NetworkRules
) -> None:
    site.requests.clear()
    with guard.session(rules, max_download_bytes=10**7) as ended:
        pass
    with guard.session(rules, max_download_bytes=10**7) as current:
        late = await Client.open(guard)
        late.login = ended.login
        try:
            status, headers, _ = await late.request(get(site.url("/late-login")))
        finally:
            late.close()
        assert status == 407
        assert "proxy-authenticate" in headers
        assert (current.blocked_requests, current.bytes_transferred) == (0, 0)
    assert site.requests == []
    with (
        guard.session(rules, max_download_bytes=1) as again,
        pytest.raises(RuntimeError, match="already in use"),
    ):
        guard.session(rules, max_download_bytes=1, login=again.login)


async def test_concurrent_sessions_judge_and_count_only_their_own_requests(
    guard: EgressGuard, site: Site, canary: Canary, rules: NetworkRules
) -> None:
    """One connection per session, interleaved: A may reach the canary and not the site, B the
    other way round. Each refusal and each byte lands in the session whose login was sent."""
    site.requests.clear()
    with (
        guard.session(open_to_canary(site, canary), max_download_bytes=10**7) as a,
        guard.session(rules, max_download_bytes=10**7) as b,
    ):
        client_a, client_b = await Client.open(guard), await Client.open(guard)
        client_a.login, client_b.login = a.login, b.login
        try:
            status_b, _headers, body_b = await client_b.request(get(site.url("/echo?from=b")))
            status_a, _headers, _ = await client_a.request(get(site.url("/echo?from=a")))
            assert (status_a, status_b, body_b) == (403, 200, b"GET /echo?from=b")
            assert not canary.reached()
            client_b2 = await Client.open(guard)
            client_b2.login = b.login
            status_b, _headers, _ = await client_b2.request(get(canary.url("/from-b")))
            client_b2.close()
            assert status_b == 403
            assert not canary.reached()
            client_a2 = await Client.open(guard)
            client_a2.login = a.login
            status_a, _headers, _ = await client_a2.request(get(canary.url("/from-a")))
            client_a2.close()
            assert status_a == 200
        finally:
            client_a.close()
            client_b.close()
    assert site.requests == ["/echo?from=b"]
    assert (a.blocked_requests, b.blocked_requests) == (1, 1)
    assert a.blocked_reason(site.url("/echo")) is not None
    assert a.blocked_reason(canary.url("/")) is None
    assert b.blocked_reason(canary.url("/")) is not None
    assert b.blocked_reason(site.url("/echo")) is None
    assert 0 < b.bytes_transferred < 1000
    assert 0 < a.bytes_transferred < 1000


async def test_a_connection_never_reuses_another_sessions_destination(
    guard: EgressGuard, client: Client, site: Site, canary: Canary, rules: NetworkRules
) -> None:
    """A keep-alive connection to the site, opened for A, is not handed to B, whose rules refuse
    the site."""
    site.requests.clear()
    with (
        guard.session(rules, max_download_bytes=10**7) as a,
        guard.session(open_to_canary(site, canary), max_download_bytes=10**7) as b,
    ):
        client.login = a.login
        status, _headers, _ = await client.request(get(site.url("/echo?as=a")))
        assert status == 200
        client.login = b.login
        status, _headers, _ = await client.request(get(site.url("/echo?as=b")))
        assert status == 403
        assert b.blocked_requests == 1
    assert site.requests == ["/echo?as=a"]


async def test_requests_without_a_login_are_logged_once_per_host(
    guard: EgressGuard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="kubeshot_capture.guard")
    hosts = [f"once-{index}-{id(caplog)}.test" for index in range(2)]
    for host in hosts * 3:
        for raw in (get(f"http://{host}/x"), f"CONNECT {host}:443 HTTP/1.1\r\n\r\n".encode()):
            client = await Client.open(guard)
            client.anonymous = True
            try:
                status, _headers, _ = await client.request(raw)
            finally:
                client.close()
            assert status == 407
    for host in hosts:
        logged = [r for r in caplog.records if host in r.getMessage()]
        assert len(logged) == 2, [r.getMessage() for r in logged]  # host, and host:443
        assert all(r.levelno == logging.DEBUG for r in logged)


# -- upstream proxy --------------------------------------------------------------------------


def credentials(proxy: UpstreamProxy, password: str | None = None) -> ProxyCredentials:
    return ProxyCredentials.model_validate(
        {
            "server": proxy.server_url(),
            "username": proxy.USER,
            "password": password if password is not None else proxy.PASSWORD,
        }
    )


async def test_upstream_proxy_with_credentials(
    guard: EgressGuard,
    client: Client,
    site: Site,
    upstream_proxy: UpstreamProxy,
    rules: NetworkRules,
    network: Network,
) -> None:
    upstream_proxy.requests.clear()
    upstream = credentials(upstream_proxy)
    with guard.session(rules, max_download_bytes=10**7, upstream=upstream) as session:
        status, _headers, body = await client.request(
            get(site.url("/echo?via=upstream", "site.test"))
        )
        assert (status, body) == (200, b"GET /echo?via=upstream")
        assert session.blocked_requests == 0
    # The guard resolved site.test itself and asked the upstream for the checked address.
    assert upstream_proxy.requests == [(f"CONNECT 127.0.0.3:{site.port}", True)]
    assert (PROXY_HOST, upstream_proxy.port) in network.connections


async def test_upstream_never_asked_for_blocked_targets(
    guard: EgressGuard,
    client: Client,
    canary: Canary,
    upstream_proxy: UpstreamProxy,
    rules: NetworkRules,
) -> None:
    upstream_proxy.requests.clear()
    with guard.session(rules, max_download_bytes=10**7, upstream=credentials(upstream_proxy)):
        status, _headers, _ = await client.request(get(canary.url("/", host="canary.test")))
        assert status == 403
    assert upstream_proxy.requests == []
    assert not canary.reached()


async def test_wrong_upstream_credentials_fail_without_leaking_them(
    guard: EgressGuard,
    client: Client,
    site: Site,
    upstream_proxy: UpstreamProxy,
    rules: NetworkRules,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream_proxy.requests.clear()
    wrong = "wrong-Secret-42"
    caplog.set_level(logging.DEBUG, logger="kubeshot_capture")
    with guard.session(
        rules, max_download_bytes=10**7, upstream=credentials(upstream_proxy, wrong)
    ):
        status, _headers, body = await client.request(get(site.url("/page")))
    assert status == 502
    assert upstream_proxy.requests == [(f"CONNECT 127.0.0.3:{site.port}", False)]
    token = base64.b64encode(f"{upstream_proxy.USER}:{wrong}".encode()).decode()
    for secret in (wrong, token):
        assert secret not in body.decode()
        assert secret not in caplog.text
    assert "407" in caplog.text


async def test_browser_through_upstream_proxy(
    visit_factory: Any, site: Site, canary: Canary, upstream_proxy: UpstreamProxy
) -> None:
    upstream_proxy.requests.clear()
    visit: Visit = await visit_factory(
        rules_for(site, canary), upstream=credentials(upstream_proxy)
    )
    response = await visit.page.goto(
        site.url("/kind/img?to=" + canary.url("/x", host="canary.test"))
    )
    assert response is not None
    assert response.status == 200
    https = await visit.page.goto(site.tls_url("/page"))
    assert https is not None
    assert https.status == 200
    asked = [request for request, ok in upstream_proxy.requests if ok]
    assert f"CONNECT 127.0.0.3:{site.port}" in asked
    assert f"CONNECT 127.0.0.4:{site.tls_port}" in asked
    assert not any(CANARY_HOST in request for request, _ in upstream_proxy.requests)
    assert visit.session.blocked_requests >= 1
    assert not canary.reached()


# -- the download budget in the browser --------------------------------------------------------


async def test_browser_download_budget(visit_factory: Any, site: Site, canary: Canary) -> None:
    visit: Visit = await visit_factory(rules_for(site, canary), max_download_bytes=2_000_000)
    with contextlib.suppress(PlaywrightError):  # the cut may fail the navigation itself
        await visit.page.goto(site.url("/heavy?n=10&bytes=1000000"), timeout=15000)
    assert visit.session.download_exceeded
    assert visit.session.bytes_transferred <= 2_000_000


async def test_browser_within_budget(visit_factory: Any, site: Site, canary: Canary) -> None:
    visit: Visit = await visit_factory(rules_for(site, canary), max_download_bytes=20_000_000)
    await visit.page.goto(site.url("/fetch-all?n=4&bytes=1000000"), timeout=15000)
    await visit.page.wait_for_function("document.title.startsWith('done')")
    assert await visit.page.title() == "done 4000000"
    assert not visit.session.download_exceeded
    assert visit.session.bytes_transferred >= 4_000_000

"""Egress-guard test plumbing: a test site, a canary that records every connection it receives,
an upstream proxy that wants Basic credentials, and a guard whose DNS and connections are
injected so that nothing ever leaves this machine.

Addresses:
    127.0.0.3   the test site (HTTP), 127.0.0.4 the same site over TLS (self-signed)
    127.0.0.66  the canary, also listening on 127.0.0.1 and [::1] on the same port
    127.0.0.5   the upstream proxy
Names (the injected resolver): site.test -> 127.0.0.3, canary.test -> 127.0.0.66,
    mapped.test -> ::ffff:127.0.0.66, metadata.test -> 169.254.169.254, private.test -> 10.0.0.5,
    cgnat.test -> 100.64.0.7, v6.test -> ::1, flip.test -> public first, then the canary.
Any connection the guard makes to a non-loopback address is diverted to the canary and recorded
with the address the guard meant to reach: a leak shows up as a canary hit, never as traffic.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import socketserver
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from kubeshot.api import NetworkRules
from kubeshot_capture.browser import chromium_args
from kubeshot_capture.guard import EgressGuard, EgressSession, IPAddress, open_connection
from tests.support import Handler, start

SITE_HOST = "127.0.0.3"
TLS_HOST = "127.0.0.4"
PROXY_HOST = "127.0.0.5"
CANARY_HOST = "127.0.0.66"
PUBLIC_ADDRESS = "93.184.215.14"


# -- the canary --------------------------------------------------------------------------------


@dataclass
class Hit:
    local: str
    """The canary address that was reached (127.0.0.66, 127.0.0.1 or ::1)."""
    first_bytes: bytes


class _CanaryHandler(socketserver.BaseRequestHandler):
    server: _CanaryServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        # Recorded on accept (not after the first read), so that a hit always lands in the
        # test whose browser made the connection.
        hit = self.server.canary.record(sock.getsockname()[0], b"")
        sock.settimeout(2.0)
        with contextlib.suppress(OSError):
            hit.first_bytes = sock.recv(65536)
        body = b"<html><body>canary reached</body></html>"
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nAccess-Control-Allow-Origin: *\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            sock.sendall(head.encode() + body)


class _CanaryServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    canary: Canary


class _CanaryServer6(_CanaryServer):
    address_family = socket.AF_INET6


class Canary:
    """Listens on 127.0.0.66, 127.0.0.1 and [::1] (one port) and records every connection."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.diverted_log: list[str] = []
        """Non-loopback addresses the guard connected to (diverted here instead)."""
        self._lock = threading.Lock()
        self._servers: list[_CanaryServer] = []
        for _attempt in range(20):
            try:
                self._bind()
                break
            except OSError:
                self._close()
        else:  # pragma: no cover
            raise RuntimeError("no free port for the canary on all loopback addresses")
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self._udp: list[socket.socket] = []
        for family, host in (
            (socket.AF_INET, CANARY_HOST),
            (socket.AF_INET, "127.0.0.1"),
            (socket.AF_INET6, "::1"),
        ):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((host, self.port))
            self._udp.append(udp)
            threading.Thread(target=self._receive, args=(udp, host), daemon=True).start()

    def _receive(self, udp: socket.socket, host: str) -> None:
        while True:
            try:
                data, _peer = udp.recvfrom(65536)
            except OSError:
                return
            self.record(f"udp:{host}", data)

    def _bind(self) -> None:
        first = _CanaryServer((CANARY_HOST, 0), _CanaryHandler)
        self._servers = [first]
        self.port = first.server_address[1]
        self._servers.append(_CanaryServer(("127.0.0.1", self.port), _CanaryHandler))
        self._servers.append(_CanaryServer6(("::1", self.port), _CanaryHandler))
        for server in self._servers:
            server.canary = self

    def _close(self) -> None:
        for server in self._servers:
            server.server_close()
        self._servers = []

    def record(self, local: str, data: bytes) -> Hit:
        hit = Hit(local, data)
        with self._lock:
            self.hits.append(hit)
        return hit

    def note_divert(self, address: str) -> None:
        with self._lock:
            self.diverted_log.append(address)

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()
            self.diverted_log.clear()

    def reached(self) -> bool:
        return bool(self.hits or self.diverted_log)

    def summary(self) -> str:
        hits = [(h.local, h.first_bytes[:60]) for h in self.hits]
        return f"hits={hits} diverted={self.diverted_log}"

    def url(self, path: str = "/", host: str = CANARY_HOST, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def shutdown(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._close()
        for udp in self._udp:
            udp.close()


# -- the test site -----------------------------------------------------------------------------

PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b0d5"
    "3d0000000049454e44ae426082"
)

# One page per subresource kind; {to} is the target URL (HTML-escaped enough for tests).
KIND_PAGES: dict[str, str] = {
    "img": '<img src="{to}">',
    "iframe": '<iframe src="{to}"></iframe>',
    "script": '<script src="{to}"></script>',
    "stylesheet": '<link rel="stylesheet" href="{to}">',
    "css-background": "<div style=\"width:10px;height:10px;background:url('{to}')\"></div>",
    "fetch": "<script>fetch('{to}', {{mode: 'no-cors'}}).catch(() => {{}});</script>",
    "xhr": "<script>const x = new XMLHttpRequest(); x.open('GET', '{to}'); x.send();</script>",
    "websocket": "<script>try {{ new WebSocket('{to}'); }} catch (e) {{}}</script>",
    "beacon": "<script>navigator.sendBeacon('{to}', 'ping');</script>",
    "prefetch": '<link rel="prefetch" href="{to}">',
    "preload": '<link rel="preload" as="image" href="{to}">',
    "worker": "<script>new Worker('/worker.js?to={to_q}');</script>",
    "form-post": (
        '<iframe name="sink"></iframe><form id="f" method="post" action="{to}" target="sink">'
        '<input name="a" value="b"></form><script>document.getElementById("f").submit();</script>'
    ),
    "meta-refresh": '<meta http-equiv="refresh" content="0;url={to}">',
    "script-navigation": "<script>setTimeout(() => {{ location.href = '{to}'; }}, 10);</script>",
    "window-open": "<script>window.open('{to}');</script>",
    "event-source": "<script>new EventSource('{to}');</script>",
}
MAIN_FRAME_KINDS = frozenset({"meta-refresh", "script-navigation"})


def kind_page(kind: str, to: str) -> str:
    body = KIND_PAGES[kind].format(to=to, to_q=quote(to, safe=""))
    head = f"<!doctype html><html><head><title>{kind}</title></head>"
    return f"{head}<body><h1>{kind}</h1>{body}</body></html>"


class _SiteHandler(Handler):
    protocol_version = "HTTP/1.1"
    server: _SiteServer

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size + 2)[:-2]
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path.startswith("/echo"):
            self.server.requests.append(self.path)
            self.reply(200, f"POST {self.path} {body.decode()}".encode(), "text/plain")
            return
        self.do_GET()

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.server.headers.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/page":
            self.reply(
                200, b"<!doctype html><html><body><h1>allowed page</h1></body></html>", "text/html"
            )
        elif path == "/redirect":
            status = int(query.get("status", "302"))
            self.reply(status, b"", "text/plain", {"Location": query["to"]})
        elif path == "/chain":
            hops = int(query.get("n", "1"))
            to = query["to"]
            location = to if hops <= 1 else f"/chain?n={hops - 1}&to={quote(to, safe='')}"
            self.reply(int(query.get("status", "302")), b"", "text/plain", {"Location": location})
        elif path.startswith("/kind/"):
            html = kind_page(path.removeprefix("/kind/"), query["to"])
            self.reply(200, html.encode(), "text/html; charset=utf-8")
        elif path == "/worker.js":
            to = query["to"]
            script = f"fetch('{to}', {{mode: 'no-cors'}}).catch(() => {{}});"
            self.reply(200, script.encode(), "text/javascript")
        elif path == "/webrtc":
            server = query["server"]
            script = (
                "const pc = new RTCPeerConnection({iceServers: ["
                f"{{urls: 'stun:{server}'}}, "
                f"{{urls: 'turn:{server}?transport=udp', username: 'u', credential: 'p'}}]}});"
                "pc.createDataChannel('x');"
                "pc.onicegatheringstatechange = () => { document.title = pc.iceGatheringState; };"
                "pc.createOffer().then(o => pc.setLocalDescription(o));"
            )
            self.reply(200, f"<html><body><script>{script}</script>".encode(), "text/html")
        elif path == "/pixel.png":
            self.reply(200, PIXEL_PNG, "image/png")
        elif path == "/big":
            size = int(query.get("bytes", "1000000"))
            self.reply(200, b"x" * size, "application/octet-stream", {"Cache-Control": "no-store"})
        elif path == "/heavy":
            count = int(query.get("n", "8"))
            size = int(query.get("bytes", "1000000"))
            imgs = "".join(f'<img src="/big?bytes={size}&i={i}">' for i in range(count))
            self.reply(200, f"<html><body>heavy{imgs}</body></html>".encode(), "text/html")
        elif path == "/fetch-all":
            count = int(query.get("n", "4"))
            size = int(query.get("bytes", "1000000"))
            script = (
                f"Promise.all([...Array({count}).keys()].map(i => fetch('/big?bytes={size}&i=' + i)"
                ".then(r => r.arrayBuffer()))).then(b => { document.title = 'done ' + "
                "b.reduce((n, x) => n + x.byteLength, 0); }, e => { document.title = 'failed'; });"
            )
            self.reply(200, f"<html><body><script>{script}</script>".encode(), "text/html")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/trailers":  # a short chunked body, then `bytes` of trailer lines
            self._send_trailers(int(query.get("bytes", "1000000")), int(query.get("line", "100")))
        elif path == "/hang-up":  # keep-alive promised, then the connection is closed anyway
            self.reply(200, b"bye", "text/plain")
            self.close_connection = True
        elif path == "/echo":
            body = f"{self.command} {self.path}".encode()
            self.reply(200, body, "text/plain")
        else:
            self.reply(404, b"not found", "text/plain")

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "1234")
        self.end_headers()

    def _send_trailers(self, size: int, line_length: int) -> None:
        line = b"X-Pad: " + b"t" * max(line_length - 9, 1) + b"\r\n"
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\n")
            batch = line * max(65536 // len(line), 1)
            sent = 0
            while sent < size:
                self.wfile.write(batch)
                sent += len(batch)
            self.wfile.write(b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class _SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]
    headers: list[tuple[str, dict[str, str]]]
    """(path, request headers with lower-case names) of every GET."""


class Site:
    """The test site on 127.0.0.3 (HTTP) and 127.0.0.4 (HTTPS, self-signed)."""

    def __init__(self, certs: Path) -> None:
        import ssl

        self.http = _SiteServer((SITE_HOST, 0), _SiteHandler)
        self.http.requests = []
        self.http.headers = []
        self.tls = _SiteServer((TLS_HOST, 0), _SiteHandler)
        self.tls.requests = self.http.requests
        self.tls.headers = self.http.headers
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
        self.tls.socket = context.wrap_socket(self.tls.socket, server_side=True)
        self.port = self.http.server_address[1]
        self.tls_port = self.tls.server_address[1]
        for server in (self.http, self.tls):
            start(server)

    @property
    def requests(self) -> list[str]:
        return self.http.requests

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """The request headers of every GET of `path` (with its query) so far."""
        return [headers for seen, headers in self.http.headers if seen == path]

    def url(self, path: str, host: str = SITE_HOST) -> str:
        return f"http://{host}:{self.port}{path}"

    def tls_url(self, path: str, host: str = TLS_HOST) -> str:
        return f"https://{host}:{self.tls_port}{path}"

    def shutdown(self) -> None:
        for server in (self.http, self.tls):
            server.shutdown()
            server.server_close()


# -- an upstream proxy that wants credentials --------------------------------------------------


class UpstreamProxy:
    """A CONNECT-only proxy on 127.0.0.5 requiring Basic user:secret; records what it was asked."""

    USER = "proxyuser"
    PASSWORD = "s3cret-Pa55"

    def __init__(self) -> None:
        self.requests: list[tuple[str, bool]] = []
        proxy = self
        expected = "Basic " + base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline(65536)
                    if not line:
                        return
                    head += line
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                auth = next(
                    (
                        line.split(":", 1)[1].strip()
                        for line in lines[1:]
                        if line.lower().startswith("proxy-authorization:")
                    ),
                    None,
                )
                ok = auth == expected
                proxy.requests.append((f"{method} {target}", ok))
                if method != "CONNECT":
                    self.wfile.write(
                        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
                    )
                    return
                if not ok:
                    self.wfile.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                    )
                    return
                host, _, port = target.rpartition(":")
                host = host.strip("[]")
                if not ip_address(host).is_loopback:
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                remote = socket.create_connection((host, int(port)))
                self.wfile.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                self.wfile.flush()
                _splice(self.connection, remote, self.rfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((PROXY_HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def server_url(self) -> str:
        return f"http://{PROXY_HOST}:{self.port}"

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _splice(client: socket.socket, remote: socket.socket, buffered: Any) -> None:
    pending = buffered.peek() if hasattr(buffered, "peek") else b""
    if pending:
        remote.sendall(buffered.read(len(pending)))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=pump, args=(remote, client), daemon=True)
    thread.start()
    pump(client, remote)
    thread.join(timeout=5)
    remote.close()


# -- the guard's injected DNS and connections --------------------------------------------------

ZONE: dict[str, list[str]] = {
    "site.test": [SITE_HOST],
    "www.site.test": [SITE_HOST],
    "tls.site.test": [TLS_HOST],
    "canary.test": [CANARY_HOST],
    "sub.canary.test": [CANARY_HOST],
    "mapped.test": [f"::ffff:{CANARY_HOST}"],
    "metadata.test": ["169.254.169.254"],
    "private.test": ["10.0.0.5"],
    "cgnat.test": ["100.64.0.7"],
    "v6.test": ["::1"],
    "zero.test": ["0.0.0.0"],
    "public.test": [PUBLIC_ADDRESS],
}


@dataclass
class Network:
    """The guard's view of the world in tests: a zone file and a diverting connector."""

    canary: Canary
    flips: dict[str, int] = field(default_factory=dict)
    connections: list[tuple[str, int]] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        if host == "flip.test":  # DNS rebinding: public the first time, the canary afterwards
            count = self.flips[host] = self.flips.get(host, 0) + 1
            return [ip_address(PUBLIC_ADDRESS if count == 1 else CANARY_HOST)]
        if host not in ZONE:
            raise OSError(f"{host}: Name or service not known")
        return [ip_address(a) for a in ZONE[host]]

    async def connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.connections.append((host, port))
        try:
            address = ip_address(host)
        except ValueError:
            return await open_connection(host, port)  # the upstream proxy, by name
        mapped = getattr(address, "ipv4_mapped", None)
        if address.is_loopback or (mapped is not None and mapped.is_loopback):
            return await open_connection(host, port)
        self.canary.note_divert(str(address))
        return await open_connection(CANARY_HOST, self.canary.port)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=tls.site.test",
            "-addext",
            f"subjectAltName=DNS:tls.site.test,IP:{TLS_HOST}",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture(scope="session")
def canary_server() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.shutdown()


@pytest.fixture
def canary(canary_server: Canary) -> Canary:
    canary_server.reset()
    return canary_server


@pytest.fixture(scope="session")
def site(certs: Path) -> Iterator[Site]:
    server = Site(certs)
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def upstream_proxy() -> Iterator[UpstreamProxy]:
    proxy = UpstreamProxy()
    yield proxy
    proxy.shutdown()


@pytest.fixture(scope="session")
def network(canary_server: Canary) -> Network:
    return Network(canary_server)


@pytest_asyncio.fixture(scope="session")
async def guard(network: Network) -> AsyncIterator[EgressGuard]:
    async with EgressGuard(resolver=network.resolve, connector=network.connect) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def browser(chromium: str, guard: EgressGuard) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium,
            args=chromium_args() + guard.launch_args(),
            proxy=guard.browser_proxy,  # type: ignore[arg-type]
            headless=True,
        )
        yield launched
        await launched.close()


def rules_for(site: Site, canary: Canary, **overrides: object) -> NetworkRules:
    """Rules that open the test site (and its ports) but nothing else on loopback."""
    base: dict[str, object] = {
        "allowedCIDRs": [f"{SITE_HOST}/32", f"{TLS_HOST}/32"],
        "allowedPorts": [80, 443, site.port, site.tls_port, canary.port],
        "ignoreHTTPSErrors": True,
    }
    base.update(overrides)
    return NetworkRules.model_validate(base)


@dataclass
class Visit:
    """A page in a fresh context under one guard session (the context has the session's login)."""

    session: EgressSession
    context: BrowserContext
    page: Page


@pytest_asyncio.fixture
async def visit_factory(browser: Browser, guard: EgressGuard) -> AsyncIterator[Any]:
    opened: list[Visit] = []

    async def open_visit(
        rules: NetworkRules, max_download_bytes: int = 50 * 1024 * 1024, upstream: Any = None
    ) -> Visit:
        session = guard.session(rules, max_download_bytes=max_download_bytes, upstream=upstream)
        context = await browser.new_context(
            ignore_https_errors=rules.ignore_https_errors,
            proxy=guard.context_proxy(session.login),  # type: ignore[arg-type]
        )
        page = await context.new_page()
        visit = Visit(session, context, page)
        opened.append(visit)
        return visit

    yield open_visit
    for visit in opened:
        await visit.context.close()
        visit.session.close()

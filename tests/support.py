"""One of each piece of plumbing the tiers share: a free port, polling until something holds, a
metric's value, and
a threaded HTTP server for test pages (hack/gallery.py serves its pages with it too).

The Chromium fixture every browser-driving tier uses is `chromium` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# testenv/controlplane.py runs as a script of its own (stdlib only); loaded by the name
# "controlplane", as testenv/node.py (the node tier) imports it.
_spec = importlib.util.spec_from_file_location(
    "controlplane", Path(__file__).resolve().parents[1] / "testenv" / "controlplane.py"
)
assert _spec is not None
assert _spec.loader is not None
controlplane = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = controlplane
_spec.loader.exec_module(controlplane)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at the moment, for a process that must be told its port
    (controlplane.free_ports says why it is never one the kernel hands out)."""
    return int(controlplane.free_ports(1, host)[0])


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the first sample `name` carrying `labels` in a Prometheus exposition (0 when
    there is none)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port now."""
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "condition",
    interval: float = 0.1,
) -> Any:
    """Poll until predicate() is truthy and return it, or fail the test naming `what` (a
    callable is asked at the end, to say what was still missing)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {said}", pytrace=False)
        time.sleep(interval)
    return value


async def wait_until(
    predicate: Callable[[], Any], within: float = 30.0, interval: float = 0.1
) -> bool:
    """wait_for inside an event loop (it keeps running): whether predicate() (or what it
    awaits) became true within `within` seconds, for `assert` and `assert not` alike."""
    deadline = time.monotonic() + within
    while True:
        held = predicate()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


class Handler(BaseHTTPRequestHandler):
    """A quiet request handler; `reply` sends one whole response and shrugs off a client that
    hung up (a capture that was cancelled, a page that moved on)."""

    def log_message(self, *args: object) -> None:
        pass

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/html; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Site:
    """A running server: its port, and URLs on it."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.port = int(server.server_address[1])

    def url(self, path: str = "/", host: str | None = None) -> str:
        """`path` here, by `host` (a name the egress guard resolves to it) or the address."""
        return f"http://{host or str(self.server.server_address[0])}:{self.port}{path}"


def start(server: ThreadingHTTPServer) -> ThreadingHTTPServer:
    """Serve in a daemon thread (one more per request)."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> Iterator[Site]:
    """A threaded HTTP server on a free port of `host`, shut down on leaving."""
    server = start(ThreadingHTTPServer((host, 0), handler))
    try:
        yield Site(server)
    finally:
        server.shutdown()
        server.server_close()


class HostSite(Site):
    """Serves `routes` by Host name and path ((host, path) -> (content type, body)) on one
    address, for pages under made-up names and under names filter lists know as ad and tracker
    hosts; `hits` records the (host, path) of every GET."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        super().__init__(server)
        self.routes: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.hits: list[tuple[str, str]] = []

    def hosts(self) -> set[str]:
        return {host for host, _ in self.hits}


@contextmanager
def host_site(address: str) -> Iterator[HostSite]:
    holder: list[HostSite] = []

    class Routed(Handler):
        def do_GET(self) -> None:
            site = holder[0]
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            site.hits.append((host, self.path))
            found = site.routes.get((host, self.path))
            if found is None:
                self.reply(404, b"not found", "text/plain")
            else:
                self.reply(200, found[1], found[0])

    with serving(Routed, address) as served:
        holder.append(HostSite(served.server))
        yield holder[0]

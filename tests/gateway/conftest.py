"""Gateway tier: real gateways on loopback, a real HTTP client, real Chromium workers.

Gateways start once per session (each launches its own worker processes and Chromium):
`gateway` (plain HTTP on loopback, the main one), `tls_gateway` (HTTPS with a generated
certificate plus a plain-HTTP port, trusting 127.0.0.1 as a proxy) and `small_gateway` (one
worker, a queue of one: overload and recycling). `edge_gateway` and `capped_gateway` have tight
timeouts and budgets (`edge_gateway`) or a connection cap (`capped_gateway`) and no worker, for
what is refused before any capture. Test pages are served on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import pytest_asyncio
import yaml
from aiohttp import ClientSession, TCPConnector, web

from kubeshot.gateway import Settings, create_app, keys
from kubeshot.gateway.auth import hash_token
from kubeshot.gateway.backend import Backend
from kubeshot.gateway.metrics import metrics_app
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.pool import WORKER_TAG, LocalBackend
from kubeshot.gateway.serving import GatewaySite
from tests.support import Handler, free_port, listening, serving, wait_for, wait_until

TOKEN = "gateway-test-token-0123456789abcdef"
CI_TOKEN = "ci-token-0123456789abcdef0123456789"
LIMITED_TOKEN = "limited-token-0123456789abcdef012345"
SIGNING_SECRET = "k2:" + "s" * 32 + ",k1:" + "t" * 32
OLD_KEY_SECRET = "k1:" + "t" * 32
HOG_MIB = 2500
MAX_CAPTURES_PER_IDENTITY = 4

PAGE = """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
#red{position:absolute;left:0;top:0;width:100px;height:100px;background:#f00}</style></head>
<body><div id="red"></div><p style="position:absolute;top:300px">kubeshot gateway</p>
</body></html>"""
# Commits memory synchronously (typed arrays live outside the JS heap), then holds it while a
# slow image keeps the page from finishing.
HOG = f"""<!doctype html><html><body><script>
window.keep = [];
for (let i = 0; i < {HOG_MIB // 64}; i++) {{ const a = new Float64Array(8 << 20); a.fill(i);
  window.keep.push(a); }}
</script><img src="/slow?s=20"><p>hog</p></body></html>"""

# What the target answered (test_target_status.py): a 404 with a title, a redirect.
MISSING_TITLE = "Seite „nicht“ gefunden — 中文 100%"
ROUTES: dict[str, tuple[int, str]] = {
    "/": (200, PAGE),
    "/hog": (200, HOG),
    "/slow": (200, PAGE),  # after ?s= seconds (2 unless told)
    "/missing": (404, f"<!doctype html><title>{MISSING_TITLE}</title><p>gone</p>"),
    "/landed": (200, "<title>Landed</title><p>here</p>"),
}


class _PageHandler(Handler):
    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/moved":
            self.reply(302, headers={"Location": "/landed"})
            return
        if path == "/slow":
            time.sleep(float(parse_qs(query).get("s", ["2"])[0]))
        status, body = ROUTES.get(path, (404, "not found"))
        self.reply(status, body.encode())


@dataclass
class Pages:
    base: str
    port: int


@pytest.fixture(scope="session")
def pages() -> Iterator[Pages]:
    with serving(_PageHandler) as site:
        yield Pages(site.url(""), site.port)


@pytest.fixture(scope="session")
def policy_file(pages: Pages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    network = {"allowedCIDRs": ["127.0.0.0/8"], "allowedPorts": [80, 443, pages.port]}
    documents = [
        {"metadata": {"name": "default"}, "spec": {"network": network}},
        {
            "metadata": {"name": "strict"},
            "spec": {
                "network": {**network, "blockedDomains": ["blocked.example"]},
                "features": {"allowedFormats": ["png"]},
                "limits": {"maxViewport": {"width": 800, "height": 600}, "timeoutSeconds": 10},
            },
        },
        {"metadata": {"name": "lowmem"}, "spec": {"network": network, "limits": {"memory": "1Gi"}}},
        {"metadata": {"name": "public"}, "spec": {"network": {"allowedPorts": [pages.port]}}},
    ]
    path = tmp_path_factory.mktemp("policies") / "policies.yaml"
    path.write_text(yaml.safe_dump_all(documents))
    return path


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {
                        "name": "ci",
                        "sha256": hash_token(CI_TOKEN),
                        "policies": ["default", "strict"],
                    },
                    {
                        "name": "limited",
                        "sha256": hash_token(LIMITED_TOKEN),
                        "policies": ["strict"],
                        "rateLimit": "3 per second",
                    },
                ]
            }
        )
    )
    return path


@dataclass
class Gateway:
    """A running gateway and how to reach it."""

    url: str
    app: web.Application
    runner: web.AppRunner
    settings: Settings
    plain_url: str | None = None
    metrics_runner: web.AppRunner | None = None

    @property
    def metrics_url(self) -> str:
        """The metrics port's /metrics (not served on the callers' port)."""
        return f"http://127.0.0.1:{self.settings.metrics_port}/metrics"

    @property
    def backend(self) -> LocalBackend:
        backend = self.app[keys.BACKEND]
        assert isinstance(backend, LocalBackend)
        return backend

    def auth(self, token: str = TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def wait_ready(self, session: ClientSession, within: float = 90) -> None:
        await wait_ready(session, self.url, within)

    async def finished(self, session: ClientSession, job_id: str) -> dict[str, Any]:
        """The async capture's job once it succeeded or failed."""
        job: dict[str, Any] = {}

        async def done() -> bool:
            async with session.get(f"{self.url}/v1/captures/{job_id}", headers=self.auth()) as r:
                assert r.status == 200
                job.update(await r.json())
            return job["phase"] in {"Succeeded", "Failed"}

        assert await wait_until(done, 60), f"job {job_id} never finished: {job}"
        return job

    async def stop(self) -> None:
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        await self.runner.cleanup()


async def wait_ready(session: ClientSession, url: str, within: float = 60) -> None:
    """Until the gateway at `url` answers /readyz with 200."""

    async def ready() -> bool:
        async with session.get(f"{url}/readyz") as response:
            return response.status == 200

    assert await wait_until(ready, within, 0.2), f"the gateway at {url} never became ready"


async def start_gateway(
    settings: Settings,
    ssl_context: ssl.SSLContext | None = None,
    backend: Backend | None = None,
) -> Gateway:
    """Serve create_app(settings) on 127.0.0.1:settings.port (and the plain redirect port, and
    /metrics on settings.metrics_port) as `kubeshot serve` does: through GatewaySites and their
    connection guard."""
    app = create_app(settings, backend=backend)
    metrics_runner = web.AppRunner(metrics_app(app[keys.METRICS]))
    await metrics_runner.setup()
    await web.TCPSite(metrics_runner, "127.0.0.1", settings.metrics_port).start()
    runner = web.AppRunner(app, shutdown_timeout=settings.http_shutdown_timeout)
    await runner.setup()
    guard = app[keys.CONNECTIONS]
    await GatewaySite(
        runner,
        "127.0.0.1",
        settings.port,
        guard=guard,
        ssl_context=ssl_context,
        handshake_timeout=settings.header_timeout,
    ).start()
    scheme = "https" if ssl_context else "http"
    gateway = Gateway(
        f"{scheme}://127.0.0.1:{settings.port}",
        app,
        runner,
        settings,
        metrics_runner=metrics_runner,
    )
    if settings.http_redirect_port is not None:
        await GatewaySite(runner, "127.0.0.1", settings.http_redirect_port, guard=guard).start()
        gateway.plain_url = f"http://127.0.0.1:{settings.http_redirect_port}"
    return gateway


def base_settings(policy_file: Path, tokens_file: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "auth_token": TOKEN,
        "tokens_file": tokens_file,
        "url_signing_secret": SIGNING_SECRET,
        "policy_files": [policy_file],
        "rate_limit_capture": "1000 per second",
        "rate_limit_signed": "1000 per second",
        "rate_limit_signed_global": "1000 per second",
        # Every test client connects from 127.0.0.1, and their pools keep connections open.
        "max_connections_per_address": 1000,
        "max_captures_per_identity": MAX_CAPTURES_PER_IDENTITY,
        "workers": 2,
        "shutdown_grace": 5,
        "port": free_port(),
        "metrics_port": free_port(),
    }
    values.update(overrides)
    return Settings(**values)


@pytest_asyncio.fixture(scope="session")
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession() as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def gateway(
    chromium: str, pages: Pages, policy_file: Path, tokens_file: Path, session: ClientSession
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(base_settings(policy_file, tokens_file))
    await gw.wait_ready(session)
    yield gw
    await gw.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kubeshot-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="session")
def client_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


@pytest_asyncio.fixture(scope="session")
async def tls_gateway(
    chromium: str,
    policy_file: Path,
    tokens_file: Path,
    tls_files: tuple[Path, Path],
    client_tls: ssl.SSLContext,
) -> AsyncIterator[Gateway]:
    cert, key = tls_files
    settings = base_settings(
        policy_file,
        tokens_file,
        tls_cert=cert,
        tls_key=key,
        trusted_proxies="127.0.0.1/32",
        rate_limit_signed="2 per 10 seconds",
        workers=1,
        http_redirect_port=free_port(),
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    gw = await start_gateway(settings, ssl_context=server_tls)
    async with ClientSession(connector=TCPConnector(ssl=client_tls)) as client:
        await gw.wait_ready(client)
    yield gw
    await gw.stop()


@pytest_asyncio.fixture(scope="session")
async def small_gateway(
    chromium: str, policy_file: Path, tokens_file: Path, session: ClientSession
) -> AsyncIterator[Gateway]:
    # One identity fills the queue here on purpose (overload): no fair share, no per-identity cap.
    settings = base_settings(
        policy_file,
        tokens_file,
        workers=1,
        queue_size=1,
        captures_per_worker=2,
        queue_timeout=20,
        fair_share=False,
        max_captures_per_identity=100,
    )
    gw = await start_gateway(settings)
    await gw.wait_ready(session)
    yield gw
    await gw.stop()


EDGE_SIGNED_BUDGET = 3
CAPPED_CONNECTIONS = 4


def _workerless(policy_file: Path) -> LocalBackend:
    """The local backend with no worker: for gateways whose tests never reach a capture."""
    return LocalBackend(workers=0, policies=PolicySet.from_files([policy_file]))


@pytest_asyncio.fixture(scope="session")
async def edge_gateway(policy_file: Path, tokens_file: Path) -> AsyncIterator[Gateway]:
    """One-second header and body timeouts, a signed-URL budget of EDGE_SIGNED_BUDGET shared by
    every client, 127.0.0.1 a trusted proxy (so X-Forwarded-For names clients)."""
    settings = base_settings(
        policy_file,
        tokens_file,
        header_timeout=1,
        body_timeout=1,
        trusted_proxies="127.0.0.1/32",
        rate_limit_signed="100 per minute",
        rate_limit_signed_global=f"{EDGE_SIGNED_BUDGET} per minute",
    )
    gw = await start_gateway(settings, backend=_workerless(policy_file))
    yield gw
    await gw.stop()


@pytest_asyncio.fixture(scope="session")
async def capped_gateway(policy_file: Path, tokens_file: Path) -> AsyncIterator[Gateway]:
    """At most CAPPED_CONNECTIONS open connections per client address (default timeouts)."""
    settings = base_settings(
        policy_file, tokens_file, max_connections_per_address=CAPPED_CONNECTIONS
    )
    gw = await start_gateway(settings, backend=_workerless(policy_file))
    yield gw
    await gw.stop()


def tagged_processes() -> dict[str, set[int]]:
    """Every process carrying a worker tag in its environment, by tag."""
    found: dict[str, set[int]] = {}
    prefix = (WORKER_TAG + "=").encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(prefix):
                found.setdefault(entry.decode(), set()).add(int(name))
    return found


def zombie_children() -> list[tuple[int, str]]:
    """Zombie children of this process (the gateway under test is their subreaper)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                text = f.read().decode("ascii", "replace")
        except OSError:
            continue
        comm = text[text.find("(") + 1 : text.rfind(")")]
        state, ppid = text[text.rfind(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == os.getpid():
            found.append((int(name), comm))
    return found


REDIS_PASSWORD = "redis-test-password-0123456789abcdef"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's) on 127.0.0.1, a free port, a temporary directory, no
    persistence, behind a password: the URL the gateway replicas share."""
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@contextlib.contextmanager
def run_redis(work: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """redis-server on `host` (a free port), its directory `work`: see redis_url."""
    port = free_port(host)
    options = {"bind": host, "port": str(port), "dir": str(work), "save": ""}
    options |= {"appendonly": "no", "requirepass": REDIS_PASSWORD}
    process = subprocess.Popen(
        ["redis-server", *(a for k, v in options.items() for a in (f"--{k}", v))],
        stdout=(work / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: listening(port, host), 20)
        yield f"redis://:{REDIS_PASSWORD}@{host}:{port}/0"
    finally:
        process.terminate()
        process.wait(10)

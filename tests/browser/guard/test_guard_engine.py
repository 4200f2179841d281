"""The guard inside the capture engine and `kubeshot capture`: exit codes and what reached the
canary. Engine tests inject the test network; CLI tests use only loopback literals and
`localhost`, which the guard never asks DNS about."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    FailureReason,
    ProxyCredentials,
    ScreenshotPolicySpec,
)
from kubeshot_capture.guard import EgressGuard
from tests.browser.guard.conftest import (
    CANARY_HOST,
    KIND_PAGES,
    MAIN_FRAME_KINDS,
    SITE_HOST,
    TLS_HOST,
    Canary,
    Network,
    Site,
    UpstreamProxy,
    rules_for,
)
from tests.support import wait_until

MiB = 1024 * 1024


@pytest_asyncio.fixture(scope="module")
async def engine(chromium: str, network: Network) -> AsyncIterator[Any]:
    from kubeshot_capture.engine import CaptureEngine

    guard = EgressGuard(resolver=network.resolve, connector=network.connect)
    async with CaptureEngine(spare_contexts=1, guard=guard) as running:
        yield running


def policy(site: Site, canary: Canary, max_download_bytes: int = 50 * MiB, **network: Any) -> Any:
    rules = rules_for(site, canary, **network).to_wire()
    return ScreenshotPolicySpec.model_validate(
        {"network": rules, "limits": {"maxDownloadBytes": max_download_bytes, "timeoutSeconds": 30}}
    )


def options(url: str, **extra: Any) -> CaptureOptions:
    return CaptureOptions.model_validate(
        {"url": url, "viewport": {"width": 400, "height": 300}, **extra}
    )


async def capture_error(engine: Any, url: str, spec: Any, **extra: Any) -> CaptureError:
    with pytest.raises(CaptureError) as caught:
        await engine.capture(options(url, **extra), spec)
    return caught.value


async def test_allowed_page_is_captured(engine: Any, site: Site, canary: Canary) -> None:
    artifact = await engine.capture(options(site.url("/page")), policy(site, canary))
    assert artifact.report.blocked_requests == 0
    assert artifact.report.bytes_transferred > 0
    assert not canary.reached()


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.66:{p}/",
        "http://2130706498:{p}/",
        "http://[::ffff:7f00:42]:{p}/",
        "http://localhost:{p}/",
        "http://canary.test:{p}/",
        "https://canary.test:{p}/",
        "http://169.254.169.254:{p}/",
        "http://metadata.test:{p}/",
        "http://0.0.0.0:{p}/",
    ],
)
async def test_blocked_main_frame_fails_with_blocked_by_policy(
    engine: Any, site: Site, canary: Canary, template: str
) -> None:
    error = await capture_error(engine, template.format(p=canary.port), policy(site, canary))
    assert error.reason is FailureReason.BLOCKED_BY_POLICY
    assert error.reason.exit_code == 3
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("http", "http://127.0.0.66:{p}/"),
        ("http", "http://canary.test:{p}/"),
        ("http", "https://canary.test:{p}/"),
        ("https", "http://metadata.test:{p}/"),
        ("https", "https://127.0.0.66:{p}/"),
    ],
)
async def test_redirect_to_blocked_target_fails_with_blocked_by_policy(
    engine: Any, site: Site, canary: Canary, status: int, start: str, target: str
) -> None:
    path = f"/redirect?status={status}&to={quote(target.format(p=canary.port), safe='')}"
    url = site.url(path) if start == "http" else site.tls_url(path)
    error = await capture_error(engine, url, policy(site, canary))
    assert error.reason is FailureReason.BLOCKED_BY_POLICY, error
    assert not canary.reached(), canary.summary()


async def test_redirect_chain_to_blocked_target(engine: Any, site: Site, canary: Canary) -> None:
    target = quote(f"http://canary.test:{canary.port}/", safe="")
    error = await capture_error(
        engine,
        site.url(f"/chain?n=5&status=301&to={target}", host="site.test"),
        policy(site, canary),
    )
    assert error.reason is FailureReason.BLOCKED_BY_POLICY
    assert not canary.reached()


@pytest.mark.parametrize("kind", sorted(KIND_PAGES))
async def test_blocked_subresource_capture_succeeds(
    engine: Any, site: Site, canary: Canary, kind: str
) -> None:
    scheme = "ws" if kind == "websocket" else "http"
    to = quote(f"{scheme}://canary.test:{canary.port}/{kind}", safe="")
    artifact = await engine.capture(
        options(site.url(f"/kind/{kind}?to={to}"), delayMs=300), policy(site, canary)
    )
    assert artifact.report.blocked_requests >= 1
    assert artifact.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not canary.reached(), canary.summary()
    if kind not in MAIN_FRAME_KINDS:
        assert artifact.report.final_url.startswith(site.url("/kind/"))


async def test_html_input_cannot_reach_blocked_targets(
    engine: Any, site: Site, canary: Canary
) -> None:
    html = (
        f"<h1>html input</h1><img src='http://127.0.0.66:{canary.port}/img'>"
        f"<iframe src='http://canary.test:{canary.port}/frame'></iframe>"
        "<iframe src='file:///etc/passwd'></iframe>"
        "<iframe src='view-source:file:///etc/passwd'></iframe>"
        f"<script>fetch('http://169.254.169.254:{canary.port}/latest/meta-data/')"
        ".catch(() => {{}});</script>"
    )
    artifact = await engine.capture(
        CaptureOptions.model_validate({"html": html, "format": "html", "delayMs": 300}),
        policy(site, canary),
    )
    assert b"root:x:0:0" not in artifact.data
    assert artifact.report.blocked_requests >= 3
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize("context", ["spare", "fresh"])
async def test_html_input_loads_allowed_subresources(
    engine: Any, site: Site, canary: Canary, context: str
) -> None:
    """An html capture's first requests are subresources, which cannot answer the guard's 407
    challenge: the capture's context presents its login before the content is set."""
    site.requests.clear()
    fresh = context == "fresh"  # ignoreHTTPSErrors needs a context of its own
    tag = f"html-{context}"
    html = f"<img src='{site.url(f'/pixel.png?{tag}')}'>"
    if fresh:
        html += f"<img src='{site.tls_url(f'/pixel.png?{tag}-tls')}'>"
    artifact = await engine.capture(
        CaptureOptions.model_validate({"html": html, "format": "html"}),
        policy(site, canary, ignoreHTTPSErrors=fresh),
    )
    expected = [f"/pixel.png?{tag}", f"/pixel.png?{tag}-tls"] if fresh else [f"/pixel.png?{tag}"]
    assert sorted(site.requests) == expected
    assert artifact.report.blocked_requests == 0
    assert artifact.report.bytes_transferred > 0


async def test_requests_from_outside_the_captures_context_are_refused(
    engine: Any, site: Site, canary: Canary
) -> None:
    """While a capture whose policy opens the canary runs, a context of the same browser without
    the capture's login (the launch-level proxy, as the browser's own background requests use)
    reaches nothing and is not counted."""
    outsider = await engine.browser.new_context()

    async def meanwhile() -> int | None:
        await asyncio.sleep(0.3)  # the capture's session is open for 1.5 s more
        page = await outsider.new_page()
        try:
            response = await page.goto(canary.url("/outsider"))
        except PlaywrightError:
            return None
        return response.status if response is not None else None

    try:
        artifact, status = await asyncio.gather(
            engine.capture(
                options(site.url("/page"), delayMs=1500),
                policy(site, canary, allowedCIDRs=["127.0.0.0/8"]),
            ),
            meanwhile(),
        )
    finally:
        await outsider.close()
    assert status in (None, 407)
    assert not canary.reached(), canary.summary()
    assert artifact.report.blocked_requests == 0


async def test_download_budget_exceeded(engine: Any, site: Site, canary: Canary) -> None:
    error = await capture_error(
        engine,
        site.url("/heavy?n=8&bytes=1000000"),
        policy(site, canary, max_download_bytes=2 * MiB),
    )
    assert error.reason is FailureReason.DOWNLOAD_LIMIT_EXCEEDED
    assert error.reason.exit_code == 5


async def test_chunked_trailers_count_against_the_download_budget(
    engine: Any, site: Site, canary: Canary
) -> None:
    """Trailer lines after the last chunk are bytes the page fetched: 4 MB of them once passed a
    1 MiB budget uncounted."""
    error = await capture_error(
        engine, site.url("/trailers?bytes=4000000"), policy(site, canary, max_download_bytes=MiB)
    )
    assert error.reason is FailureReason.DOWNLOAD_LIMIT_EXCEEDED


async def test_refusal_page_reveals_nothing_of_the_internal_network(
    engine: Any, site: Site, canary: Canary, caplog: pytest.LogCaptureFixture
) -> None:
    """`format: html` of a page that meta-refreshes to an internal name returns the guard's
    refusal page: it must not say what the name resolves to (the log does)."""
    caplog.set_level(logging.INFO, logger="kubeshot_capture.guard")
    to = quote("http://private.test/", safe="")
    artifact = await engine.capture(
        options(site.url(f"/kind/meta-refresh?to={to}"), format="html", waitForSelector="pre"),
        policy(site, canary),
    )
    page = artifact.data.decode()
    assert "egress guard" in page  # the refusal page is what was captured
    for secret in ("10.0.0.5", "resolves", "private"):
        assert secret not in page, page
    assert artifact.report.blocked_requests >= 1
    assert "private.test resolves to 10.0.0.5" in caplog.text


def caller_header_cases(site: Site, canary: Canary) -> dict[str, tuple[str, str]]:
    """(URL to capture, path the target origin receives) per way of reaching a third party."""
    to = quote(canary.url("/third-party.png"), safe="")
    landing = quote(canary.url("/landing"), safe="")
    return {
        "subresource": (site.url(f"/kind/img?to={to}"), f"/kind/img?to={to}"),
        "https-subresource": (site.tls_url(f"/kind/img?to={to}"), f"/kind/img?to={to}"),
        "redirect": (site.url(f"/redirect?to={landing}"), f"/redirect?to={landing}"),
    }


@pytest.mark.parametrize("block_ads", [False, True], ids=["plain", "with-ad-route"])
@pytest.mark.parametrize("case", ["subresource", "https-subresource", "redirect"])
async def test_caller_headers_go_to_the_target_origin_only(
    engine: Any, site: Site, canary: Canary, case: str, block_ads: bool
) -> None:
    url, path = caller_header_cases(site, canary)[case]
    opened = policy(
        site, canary, allowedCIDRs=[f"{SITE_HOST}/32", f"{TLS_HOST}/32", f"{CANARY_HOST}/32"]
    )
    secret = "caller-secret-for-the-target"
    extra = {"headers": {"X-Caller-Token": secret}, "blockAds": block_ads}
    await engine.capture(options(url, **extra), opened)
    assert site.headers_of(path)[-1].get("x-caller-token") == secret

    def sent() -> bytes:
        return b"".join(hit.first_bytes for hit in canary.hits)

    assert await wait_until(lambda: b"GET /" in sent()), canary.summary()  # the third party
    assert secret.encode() not in sent()
    assert b"x-caller-token" not in sent().lower()


async def test_capture_through_upstream_proxy(
    engine: Any, site: Site, canary: Canary, upstream_proxy: UpstreamProxy
) -> None:
    upstream_proxy.requests.clear()
    credentials = ProxyCredentials.model_validate(
        {
            "server": upstream_proxy.server_url(),
            "username": upstream_proxy.USER,
            "password": upstream_proxy.PASSWORD,
        }
    )
    artifact = await engine.capture(
        options(site.url("/page", host="site.test")), policy(site, canary), proxy=credentials
    )
    assert artifact.report.blocked_requests == 0
    assert (f"CONNECT 127.0.0.3:{site.port}", True) in upstream_proxy.requests


# -- the CLI -------------------------------------------------------------------------------------


def kubeshot(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubeshot.cli", "capture", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def policy_file(tmp_path: Path, site: Site, canary: Canary) -> Any:
    def write(cidrs: list[str], max_download_bytes: int = 50 * MiB) -> str:
        path = tmp_path / "policy.yaml"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "kubeshot.dev/v1alpha1",
                    "kind": "ScreenshotPolicy",
                    "metadata": {"name": "guard-test"},
                    "spec": {
                        "network": {
                            "allowedCIDRs": cidrs,
                            "allowedPorts": [80, 443, site.port, site.tls_port, canary.port],
                        },
                        "limits": {"maxDownloadBytes": max_download_bytes},
                    },
                }
            )
        )
        return str(path)

    return write


CLI_BLOCKED = [
    "http://127.0.0.66:{p}/",
    "http://2130706498:{p}/",
    "http://0177.0.0.0102:{p}/",
    "http://[::ffff:127.0.0.66]:{p}/",
    "http://localhost:{p}/",
    "http://0.0.0.0:{p}/",
    "https://127.0.0.66:{p}/",
    "http://metadata.google.internal/computeMetadata/v1/",
]


@pytest.mark.parametrize("template", CLI_BLOCKED)
def test_cli_blocked_target_exits_3(
    tmp_path: Path, canary: Canary, policy_file: Any, template: str
) -> None:
    out = tmp_path / "out.png"
    result = kubeshot(template.format(p=canary.port), "-o", str(out), "--policy", policy_file([]))
    assert result.returncode == 3, result.stderr
    assert "BlockedByPolicy" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert not canary.reached(), canary.summary()


def test_cli_blocked_with_default_ports_exits_3(tmp_path: Path, canary: Canary) -> None:
    result = kubeshot(canary.url("/"), "-o", str(tmp_path / "out.png"))
    assert result.returncode == 3, result.stderr
    assert not canary.reached()


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "view-source:http://127.0.0.66/",
        "chrome://version",
        "ftp://127.0.0.66/",
        "javascript:alert(1)",
        "data:text/html,x",
        "gopher://127.0.0.66:70/",
    ],
)
def test_cli_refuses_other_schemes(tmp_path: Path, canary: Canary, url: str) -> None:
    out = tmp_path / "out.png"
    result = kubeshot(url, "-o", str(out))
    assert result.returncode in (2, 3), result.stderr
    assert not out.exists()
    assert not canary.reached()


def test_cli_allow_cidr_opens_loopback(tmp_path: Path, canary: Canary, policy_file: Any) -> None:
    out = tmp_path / "out.png"
    result = kubeshot(
        canary.url("/"), "-o", str(out), "--policy", policy_file([]), "--allow-cidr", "127.0.0.0/8"
    )
    assert result.returncode == 0, result.stderr
    assert out.exists()
    assert canary.reached()


@pytest.mark.parametrize("status", [302, 308])
def test_cli_redirect_to_blocked_target_exits_3(
    tmp_path: Path, site: Site, canary: Canary, policy_file: Any, status: int
) -> None:
    to = quote(f"http://localhost:{canary.port}/", safe="")
    result = kubeshot(
        site.url(f"/redirect?status={status}&to={to}"),
        "-o",
        str(tmp_path / "o.png"),
        "--policy",
        policy_file(["127.0.0.3/32"]),
    )
    assert result.returncode == 3, result.stderr
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize("kind", ["iframe", "websocket", "worker"])
def test_cli_blocked_subresource_still_captures(
    tmp_path: Path, site: Site, canary: Canary, policy_file: Any, kind: str
) -> None:
    scheme = "ws" if kind == "websocket" else "http"
    to = quote(f"{scheme}://127.0.0.66:{canary.port}/{kind}", safe="")
    out = tmp_path / "out.png"
    result = kubeshot(
        site.url(f"/kind/{kind}?to={to}"),
        "-o",
        str(out),
        "--json",
        "--delay",
        "300",
        "--policy",
        policy_file(["127.0.0.3/32"]),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["blockedRequests"] >= 1
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not canary.reached(), canary.summary()


def test_cli_download_budget_exits_5(
    tmp_path: Path, site: Site, canary: Canary, policy_file: Any
) -> None:
    out = tmp_path / "out.png"
    result = kubeshot(
        site.url("/heavy?n=6&bytes=1000000"),
        "-o",
        str(out),
        "--policy",
        policy_file(["127.0.0.3/32"], max_download_bytes=MiB),
    )
    assert result.returncode == 5, result.stderr
    assert "DownloadLimitExceeded" in result.stderr
    assert not out.exists()

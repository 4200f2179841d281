"""Every request belongs to the capture whose context sent it (real Chromium, one browser).

Each browser context presents its capture's proxy login; the guard judges and counts a request
under that capture's session only. Requests with no login (the browser's own background
traffic, a context without one) or a stale one get a 407 and go nowhere. Every refusal here has
a twin that proves the same request does arrive when it is attributed to a capture allowing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext
from playwright.async_api import Error as PlaywrightError

from kubeshot_capture.guard import LOGIN_URL, EgressGuard, ProxyLogin
from tests.browser.guard.conftest import CANARY_HOST, Canary, Site, Visit, rules_for
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)
IMAGES = 6


def images(site: Site, canary: Canary, capture: str) -> str:
    """A page asking for the same images from the site (HTTP and HTTPS) and from the canary."""
    tags = []
    for index in range(IMAGES):
        tag = f"capture={capture}&i={index}"
        tags += [
            f'<img src="{site.url(f"/pixel.png?{tag}")}">',
            f'<img src="{site.tls_url(f"/pixel.png?{tag}&tls")}">',
            f'<img src="{canary.url(f"/pixel.png?{tag}")}">',
        ]
    return f"<!doctype html><html><body>{''.join(tags)}</body></html>"


async def show(visit: Visit, html: str) -> None:
    """What the engine does with `html` input: present the login, then set the content."""
    with contextlib.suppress(PlaywrightError):  # 204: the page stays on about:blank
        await visit.page.goto(LOGIN_URL)
    assert visit.page.url == "about:blank"
    await visit.page.set_content(html)


def canary_paths(canary: Canary) -> str:
    return " ".join(hit.first_bytes.split(b"\r\n", 1)[0].decode("latin-1") for hit in canary.hits)


async def test_concurrent_captures_each_get_their_own_policy(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    """A may reach the site and not the canary, B the canary and not the site; both load a page
    asking for both, at the same time, through one browser and one guard."""
    site.requests.clear()
    a: Visit = await visit_factory(rules_for(site, canary))
    b: Visit = await visit_factory(rules_for(site, canary, allowedCIDRs=[f"{CANARY_HOST}/32"]))
    await asyncio.gather(show(a, images(site, canary, "A")), show(b, images(site, canary, "B")))
    assert await wait_until(lambda: canary_paths(canary).count("capture=B") == IMAGES), (
        canary.summary()
    )
    assert await wait_until(lambda: sum("capture=A" in p for p in site.requests) == 2 * IMAGES)
    await asyncio.sleep(0.3)  # anything misattributed would have arrived by now
    assert not any("capture=B" in path for path in site.requests), site.requests
    assert "capture=A" not in canary_paths(canary), canary.summary()
    assert canary.diverted_log == []
    # Each refusal is recorded in the session of the capture that asked.
    assert a.session.blocked_reason(canary.url("/pixel.png")) is not None
    assert a.session.blocked_reason(site.url("/pixel.png")) is None
    assert b.session.blocked_reason(site.url("/pixel.png")) is not None
    assert b.session.blocked_reason(site.tls_url("/pixel.png")) is not None
    assert b.session.blocked_reason(canary.url("/pixel.png")) is None
    assert a.session.blocked_requests >= 1
    assert b.session.blocked_requests >= 2
    assert a.session.bytes_transferred > 0
    assert b.session.bytes_transferred > 0


async def test_one_captures_downloads_are_not_charged_to_another(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    small: Visit = await visit_factory(rules_for(site, canary), max_download_bytes=2_000_000)
    large: Visit = await visit_factory(rules_for(site, canary), max_download_bytes=20_000_000)

    async def heavy() -> None:
        with contextlib.suppress(PlaywrightError):  # the cut may fail the navigation itself
            await small.page.goto(site.url("/heavy?n=10&bytes=1000000"), timeout=20000)

    async def fetch_all() -> None:
        await large.page.goto(site.url("/fetch-all?n=4&bytes=1000000"), timeout=20000)
        await large.page.wait_for_function("document.title.startsWith('done')", timeout=20000)

    await asyncio.gather(heavy(), fetch_all())
    assert small.session.download_exceeded
    assert small.session.bytes_transferred <= 2_000_000
    assert await large.page.title() == "done 4000000"
    assert not large.session.download_exceeded
    # Its own 4 MB and a page, not a byte of the small capture's.
    assert 4_000_000 <= large.session.bytes_transferred < 4_100_000


async def goto_status(context: BrowserContext, url: str) -> int | None:
    """The response status of a navigation (a proxy's 407 page included), None if it failed."""
    page = await context.new_page()
    try:
        response = await page.goto(url, timeout=10000)
    except PlaywrightError:
        return None
    finally:
        await page.close()
    return response.status if response is not None else None


@pytest.mark.parametrize("login", ["none", "never-registered", "ended-capture"])
async def test_a_context_without_a_captures_login_reaches_nothing(
    browser: Browser, guard: EgressGuard, site: Site, canary: Canary, login: str
) -> None:
    """Like the browser's own background traffic: the launch-level proxy has no login. And like
    a spare context before its capture, or a context left open after its capture ended."""
    site.requests.clear()
    open_rules = rules_for(site, canary, allowedCIDRs=["127.0.0.0/8"])  # site and canary
    with guard.session(open_rules, max_download_bytes=10**7) as open_session:
        if login == "none":
            context = await browser.new_context()
        else:
            stale = ProxyLogin.generate()
            if login == "ended-capture":
                with guard.session(open_rules, max_download_bytes=10**7, login=stale):
                    pass
            context = await browser.new_context(proxy=guard.context_proxy(stale))  # type: ignore[arg-type]
        try:
            status = await goto_status(context, canary.url(f"/{login}"))
            assert status in (None, 407)
            await goto_status(context, site.tls_url(f"/page?{login}"))
            await goto_status(context, site.url(f"/page?{login}"))
        finally:
            await context.close()
        await asyncio.sleep(0.3)
        assert not canary.reached(), canary.summary()
        assert site.requests == []
        assert (open_session.blocked_requests, open_session.bytes_transferred) == (0, 0)
        # The twin: a context with the session's login gets there (its first request a tunnel).
        twin = await browser.new_context(
            proxy=guard.context_proxy(open_session.login),  # type: ignore[arg-type]
            ignore_https_errors=True,
        )
        try:
            assert await goto_status(twin, site.tls_url(f"/page?{login}")) == 200
            assert await goto_status(twin, canary.url(f"/{login}")) == 200
            assert await goto_status(twin, site.url(f"/page?{login}")) == 200
        finally:
            await twin.close()
        assert open_session.blocked_requests == 0
        assert open_session.bytes_transferred > 0
    assert canary.reached()
    assert [path for path in site.requests if path.startswith("/page")] == [f"/page?{login}"] * 2


async def test_a_request_with_no_login_gets_407_and_reaches_no_canary(
    guard: EgressGuard, site: Site, canary: Canary
) -> None:
    """urllib through the guard's port, as any local process could: no login, no network."""
    open_rules = rules_for(site, canary, allowedCIDRs=[f"{CANARY_HOST}/32"])
    proxy = urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{guard.port}"})
    opener = urllib.request.build_opener(proxy)

    def fetch(url: str, header: bytes | None = None) -> tuple[int, str | None]:
        request = urllib.request.Request(url)
        if header is not None:
            request.add_header("Proxy-Authorization", header.decode())
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Proxy-Authenticate"]

    with guard.session(open_rules, max_download_bytes=10**7) as session:
        refused = await asyncio.to_thread(fetch, canary.url("/urllib"))
        assert refused == (407, 'Basic realm="kubeshot"')
        assert not canary.reached(), canary.summary()
        assert session.bytes_transferred == 0
        admitted = await asyncio.to_thread(fetch, canary.url("/urllib"), session.login.header())
        assert admitted == (200, None)
    assert await wait_until(canary.reached)

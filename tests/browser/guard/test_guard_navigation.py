"""Main-frame navigations and redirects to blocked targets never reach them (real Chromium).

Every blocked case has an allowed twin that proves the same request does reach the canary when
the rules open it, so a test cannot pass just because the browser never asked.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Error as PlaywrightError

from tests.browser.guard.conftest import (
    CANARY_HOST,
    PUBLIC_ADDRESS,
    Canary,
    Network,
    Site,
    Visit,
    rules_for,
)
from tests.support import wait_until

OPEN_ALL = {"allowedCIDRs": ["127.0.0.0/8", "::1/128", "0.0.0.0/0", "::/0"]}


async def navigate(visit: Visit, url: str) -> tuple[int | None, str | None]:
    """(status, error) of a main-frame navigation; the guard's refusals are 403 or errors."""
    try:
        response = await visit.page.goto(url, wait_until="load", timeout=15000)
    except PlaywrightError as exc:
        return None, exc.message.splitlines()[0]
    return (response.status if response is not None else None), None


async def settled_content(visit: Visit) -> str:
    for _ in range(20):
        try:
            return await visit.page.content()
        except PlaywrightError:  # still navigating (to an error page)
            await asyncio.sleep(0.1)
    return await visit.page.content()


def chain_reason(visit: Visit, url: str, response_urls: list[str]) -> str | None:
    return visit.session.blocked_reason(url) or visit.session.first_blocked_reason(response_urls)


# (url template, what the refusal says); {p} is the canary port.
BLOCKED_TARGETS = [
    ("http://127.0.0.66:{p}/", "loopback"),
    ("http://127.66:{p}/", "loopback"),
    ("http://2130706498:{p}/", "loopback"),
    ("http://0x7f000042:{p}/", "loopback"),
    ("http://0177.0.0.0102:{p}/", "loopback"),
    ("http://0x7f.0.0.0x42:{p}/", "loopback"),
    ("http://127.0.0.66.:{p}/", "loopback"),
    ("http://%31%32%37.0.0.66:{p}/", "loopback"),
    ("http://127.0.0.1:{p}/", "loopback"),
    ("http://localhost:{p}/", "loopback"),
    ("http://LOCALHOST.:{p}/", "loopback"),
    ("http://foo.localhost:{p}/", "loopback"),
    ("http://0.0.0.0:{p}/", "unspecified"),
    ("http://0:{p}/", "unspecified"),
    ("http://[::1]:{p}/", "loopback"),
    ("http://[::ffff:127.0.0.66]:{p}/", "loopback"),
    ("http://[::ffff:7f00:42]:{p}/", "loopback"),
    ("http://[64:ff9b::7f00:42]:{p}/", "loopback"),
    ("http://[::127.0.0.66]:{p}/", "IPv4-compatible"),
    ("http://[2002:7f00:42::1]:{p}/", "6to4"),
    ("http://[2001::7f00:42]:{p}/", "Teredo"),
    ("http://169.254.169.254:{p}/latest/meta-data/", "metadata"),
    ("http://[fd00:ec2::254]:{p}/", "metadata"),
    ("http://[::ffff:169.254.169.254]:{p}/", "metadata"),
    ("http://10.0.0.5:{p}/", "private"),
    ("http://172.16.0.5:{p}/", "private"),
    ("http://192.168.0.5:{p}/", "private"),
    ("http://100.64.0.7:{p}/", "carrier-grade"),
    ("http://169.254.1.1:{p}/", "link-local"),
    ("http://[fe80::1]:{p}/", "link-local"),
    ("http://[fc00::5]:{p}/", "unique-local"),
    ("http://[fec0::5]:{p}/", "site-local"),
    ("http://192.0.2.5:{p}/", "documentation"),
    ("http://198.18.0.5:{p}/", "benchmarking"),
    ("http://240.0.0.5:{p}/", "reserved"),
    ("http://canary.test:{p}/", "resolves to 127.0.0.66"),
    ("http://sub.canary.test:{p}/", "resolves to 127.0.0.66"),
    ("http://mapped.test:{p}/", "loopback"),
    ("http://metadata.test:{p}/", "metadata"),
    ("http://private.test:{p}/", "private"),
    ("http://cgnat.test:{p}/", "carrier-grade"),
    ("http://v6.test:{p}/", "loopback"),
    ("http://zero.test:{p}/", "unspecified"),
    ("https://127.0.0.66:{p}/", "loopback"),
    ("https://canary.test:{p}/", "resolves to 127.0.0.66"),
    ("https://[::1]:{p}/", "loopback"),
    ("https://169.254.169.254:{p}/", "metadata"),
    ("https://0x7f000001:{p}/", "loopback"),
]


@pytest.mark.parametrize(("template", "expected"), BLOCKED_TARGETS)
async def test_blocked_main_frame_never_reaches_target(
    visit_factory: Any, site: Site, canary: Canary, template: str, expected: str
) -> None:
    url = template.format(p=canary.port)
    visit: Visit = await visit_factory(rules_for(site, canary))
    status, error = await navigate(visit, url)
    assert status == 403 or error is not None, (status, error)
    reason = visit.session.blocked_reason(url)
    assert reason is not None
    assert expected.lower() in reason.lower(), reason
    assert visit.session.blocked_requests >= 1
    assert not canary.reached(), canary.summary()


ALLOWED_TWINS = [
    "http://127.0.0.66:{p}/",
    "http://2130706498:{p}/",
    "http://0x7f000042:{p}/",
    "http://localhost:{p}/",
    "http://[::1]:{p}/",
    "http://[::ffff:127.0.0.66]:{p}/",
    "http://canary.test:{p}/",
    "http://169.254.169.254:{p}/",
    "http://metadata.test:{p}/",
    "http://10.0.0.5:{p}/",
    "https://canary.test:{p}/",
]


@pytest.mark.parametrize("template", ALLOWED_TWINS)
async def test_allowed_twin_does_reach_the_canary(
    visit_factory: Any, site: Site, canary: Canary, template: str
) -> None:
    url = template.format(p=canary.port)
    visit: Visit = await visit_factory(rules_for(site, canary, **OPEN_ALL))
    status, error = await navigate(visit, url)
    assert canary.reached(), (status, error)
    assert visit.session.blocked_requests == 0
    assert visit.session.blocked_reason(url) is None


async def test_policy_port_domain_and_allow_list_rules(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"allowedCIDRs": [f"{CANARY_HOST}/32"], "blockedDomains": ["canary.test"]}, "blocked"),
        ({"allowedCIDRs": [f"{CANARY_HOST}/32"], "allowedDomains": ["site.test"]}, "allowed"),
    ]
    for overrides, expected in cases:
        visit: Visit = await visit_factory(rules_for(site, canary, **overrides))
        url = f"http://sub.canary.test:{canary.port}/"
        status, error = await navigate(visit, url)
        reason = visit.session.blocked_reason(url)
        assert reason is not None
        assert expected in reason
        assert status == 403 or error is not None
        visit.session.close()
        await visit.context.close()
    assert not canary.reached(), canary.summary()


async def test_internet_keeps_to_allowed_ports_while_allowed_cidrs_open_any_port(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    rules = rules_for(site, canary, allowedCIDRs=[f"{CANARY_HOST}/32"], allowedPorts=[80, 443])
    visit: Visit = await visit_factory(rules)
    public = f"http://public.test:{canary.port}/"
    status, error = await navigate(visit, public)
    assert status == 403 or error is not None
    assert "port" in (visit.session.blocked_reason(public) or "")
    assert not canary.reached(), canary.summary()  # no diverted connection either
    status, _error = await navigate(visit, f"http://canary.test:{canary.port}/")
    assert status == 200  # the opened range, on a port outside allowedPorts
    assert canary.reached()


async def test_allowed_ports_are_judged_on_every_request_for_a_name(
    visit_factory: Any, site: Site, canary: Canary, network: Network
) -> None:
    """The guard keeps one DNS answer per name for the capture, but not its verdict: once a page
    on public.test:80 loaded, the same name on another port is still refused (with allowedCIDRs
    set, the port is judged after resolving)."""
    rules = rules_for(site, canary, allowedCIDRs=[f"{CANARY_HOST}/32"], allowedPorts=[80, 443])
    visit: Visit = await visit_factory(rules)
    before = len(network.connections)
    status, error = await navigate(visit, "http://public.test/")
    assert (status, error) == (200, None)  # diverted to the canary by the test network
    off_port = [f"http://public.test:{canary.port}/fetch", f"https://public.test:{canary.port}/"]
    for url in off_port:
        outcome = await visit.page.evaluate(
            "url => fetch(url, {mode: 'no-cors'}).then(() => 'answered', () => 'failed')", url
        )
        assert outcome in ("answered", "failed")
        assert "port" in (visit.session.blocked_reason(url) or ""), url
    status, error = await navigate(visit, off_port[0])
    assert status == 403 or error is not None
    made = network.connections[before:]
    assert (PUBLIC_ADDRESS, 80) in made
    assert (PUBLIC_ADDRESS, canary.port) not in made, made


REDIRECT_TARGETS = [
    "http://127.0.0.66:{p}/",
    "http://2130706498:{p}/",
    "http://[::ffff:7f00:42]:{p}/",
    "http://localhost:{p}/",
    "http://canary.test:{p}/",
    "http://mapped.test:{p}/",
    "http://169.254.169.254:{p}/latest/meta-data/",
    "http://metadata.test:{p}/",
    "https://canary.test:{p}/",
    "https://127.0.0.66:{p}/",
]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("template", REDIRECT_TARGETS)
async def test_redirect_to_blocked_target(
    visit_factory: Any, site: Site, canary: Canary, status: int, template: str
) -> None:
    target = template.format(p=canary.port)
    start = site.url(f"/redirect?status={status}&to={quote(target, safe='')}")
    visit: Visit = await visit_factory(rules_for(site, canary))
    hops: list[str] = []
    visit.page.on("request", lambda r: hops.append(r.url) if r.is_navigation_request() else None)
    got, error = await navigate(visit, start)
    assert got == 403 or error is not None, (got, error)
    reason = visit.session.blocked_reason(start) or visit.session.first_blocked_reason(hops)
    assert reason is not None
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_allowed_twin(
    visit_factory: Any, site: Site, canary: Canary, status: int
) -> None:
    target = f"http://canary.test:{canary.port}/"
    start = site.url(f"/redirect?status={status}&to={quote(target, safe='')}")
    visit: Visit = await visit_factory(rules_for(site, canary, **OPEN_ALL))
    got, _error = await navigate(visit, start)
    assert got == 200
    assert canary.reached()
    assert visit.session.blocked_reason(start) is None


@pytest.mark.parametrize(
    "target", ["http://127.0.0.66:{p}/", "http://canary.test:{p}/", "https://canary.test:{p}/"]
)
@pytest.mark.parametrize("start_host", ["127.0.0.3", "site.test", "www.site.test"])
async def test_redirect_chain_to_blocked_target(
    visit_factory: Any, site: Site, canary: Canary, target: str, start_host: str
) -> None:
    final = target.format(p=canary.port)
    start = site.url(f"/chain?n=4&status=307&to={quote(final, safe='')}", host=start_host)
    visit: Visit = await visit_factory(rules_for(site, canary))
    hops: list[str] = []
    visit.page.on("request", lambda r: hops.append(r.url) if r.is_navigation_request() else None)
    got, error = await navigate(visit, start)
    assert got == 403 or error is not None
    assert len([h for h in hops if "/chain" in h]) == 4
    assert visit.session.first_blocked_reason(hops) is not None
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.66:{p}/", "https://canary.test:{p}/", "http://metadata.test:{p}/"],
)
async def test_https_redirect_to_blocked_target(
    visit_factory: Any, site: Site, canary: Canary, target: str
) -> None:
    final = target.format(p=canary.port)
    start = site.tls_url(f"/redirect?status=302&to={quote(final, safe='')}")
    visit: Visit = await visit_factory(rules_for(site, canary))
    hops: list[str] = []
    visit.page.on("request", lambda r: hops.append(r.url) if r.is_navigation_request() else None)
    got, error = await navigate(visit, start)
    assert got == 403 or error is not None
    assert visit.session.first_blocked_reason(hops) is not None
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize(
    "target",
    [
        "file:///etc/passwd",
        "view-source:http://127.0.0.66/",
        "chrome://version",
        "ftp://127.0.0.66/",
        "data:text/html,<b>x</b>",
        "javascript:alert(1)",
    ],
)
async def test_redirect_to_other_schemes_goes_nowhere(
    visit_factory: Any, site: Site, canary: Canary, target: str
) -> None:
    start = site.url(f"/redirect?status=302&to={quote(target, safe='')}")
    visit: Visit = await visit_factory(rules_for(site, canary))
    got, error = await navigate(visit, start)
    assert error is not None or got == 302 or got is None
    assert "root:" not in await settled_content(visit)
    assert visit.session.blocked_reason(start) is not None
    assert not canary.reached(), canary.summary()


async def test_dns_rebinding_connects_only_to_checked_address(
    visit_factory: Any, site: Site, canary: Canary, network: Network
) -> None:
    """flip.test answers a public address first and the canary afterwards: the guard connects
    only to the address it checked, never to the name, so the second answer never matters."""
    visit: Visit = await visit_factory(rules_for(site, canary))
    already = len(network.connections)
    for attempt in range(3):
        await navigate(visit, f"http://flip.test:{canary.port}/?{attempt}")
    made = network.connections[already:]
    assert made
    assert {host for host, _port in made} == {PUBLIC_ADDRESS}
    assert set(canary.diverted_log) == {PUBLIC_ADDRESS}


@pytest.mark.parametrize(
    "target", ["https://127.0.0.66:{p}/", "https://canary.test:{p}/", "https://[::1]:{p}/"]
)
async def test_navigation_watch_sees_hops_inside_tls(
    visit_factory: Any, site: Site, canary: Canary, target: str
) -> None:
    """An HTTPS page redirecting to a blocked HTTPS target: the guard never sees the redirect
    (it is inside the tunnel); the watch sees the refused hop."""
    final = target.format(p=canary.port)
    start = site.tls_url(f"/redirect?status=302&to={quote(final, safe='')}")
    visit: Visit = await visit_factory(rules_for(site, canary))
    with visit.session.watch_navigation(visit.page) as watch:
        _status, error = await navigate(visit, start)
    assert error is not None
    assert visit.session.blocked_reason(start) is None  # the first URL itself was fine
    reason = watch.blocked_reason()
    assert reason is not None
    assert "loopback" in reason
    assert watch.urls[0] == start
    assert not canary.reached(), canary.summary()


async def test_navigation_watch_ignores_navigations_the_page_starts(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    """A meta refresh or script navigation to a blocked target is refused, but it is not the
    capture's own navigation: the watch does not count it."""
    visit: Visit = await visit_factory(rules_for(site, canary))
    to = quote(f"http://canary.test:{canary.port}/", safe="")
    start = site.url(
        f"/chain?n=2&status=302&to={quote(site.url(f'/kind/meta-refresh?to={to}'), safe='')}"
    )
    with visit.session.watch_navigation(visit.page) as watch:
        status, _error = await navigate(visit, start)
        assert status == 200
        assert await wait_until(lambda: visit.session.blocked_requests >= 1)
    assert len(watch.urls) == 3  # start, one chain hop, the meta-refresh page
    assert watch.blocked_reason() is None
    assert not canary.reached()

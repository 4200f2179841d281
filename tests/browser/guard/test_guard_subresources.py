"""Blocked subresources never reach their target, and the page itself still loads.

Each kind (img, iframe, fetch, WebSocket, beacon, prefetch, worker, form post, meta refresh,
script navigation, ...) is tried against blocked targets spelled as a literal loopback address,
a name resolving to loopback, and the metadata address; its allowed twin proves the browser
really makes that request when the rules open it.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest

from tests.browser.guard.conftest import (
    KIND_PAGES,
    MAIN_FRAME_KINDS,
    Canary,
    Site,
    Visit,
    rules_for,
)
from tests.support import wait_until

OPEN_ALL = {"allowedCIDRs": ["127.0.0.0/8", "::1/128", "169.254.169.254/32"]}
TARGETS = {
    "literal": "{scheme}://127.0.0.66:{p}/{kind}",
    "name": "{scheme}://canary.test:{p}/{kind}",
    "metadata": "{scheme}://169.254.169.254:{p}/{kind}",
}


def target_url(kind: str, spelling: str, port: int, secure: bool = False) -> str:
    scheme = "ws" if kind == "websocket" else "http"
    if secure:
        scheme += "s"
    return TARGETS[spelling].format(scheme=scheme, p=port, kind=kind)


async def open_kind_page(visit: Visit, site: Site, kind: str, to: str) -> None:
    url = site.url(f"/kind/{kind}?to={quote(to, safe='')}")
    response = await visit.page.goto(url, wait_until="load", timeout=15000)
    assert response is not None
    assert response.status == 200


@pytest.mark.parametrize("spelling", ["literal", "name", "metadata"])
@pytest.mark.parametrize("kind", list(KIND_PAGES))
async def test_blocked_subresource_never_reaches_target(
    visit_factory: Any, site: Site, canary: Canary, kind: str, spelling: str
) -> None:
    to = target_url(kind, spelling, canary.port)
    visit: Visit = await visit_factory(rules_for(site, canary))
    await open_kind_page(visit, site, kind, to)
    assert await wait_until(lambda: visit.session.blocked_requests >= 1), "never attempted"
    await asyncio.sleep(0.2)
    assert not canary.reached(), canary.summary()
    assert visit.session.blocked_reason(to) is not None
    if kind not in MAIN_FRAME_KINDS:
        assert await visit.page.text_content("h1") == kind  # the page itself is intact


@pytest.mark.parametrize("kind", list(KIND_PAGES))
async def test_blocked_subresource_over_tls_target(
    visit_factory: Any, site: Site, canary: Canary, kind: str
) -> None:
    to = target_url(kind, "name", canary.port, secure=True)
    visit: Visit = await visit_factory(rules_for(site, canary))
    await open_kind_page(visit, site, kind, to)
    assert await wait_until(lambda: visit.session.blocked_requests >= 1), "never attempted"
    await asyncio.sleep(0.2)
    assert not canary.reached(), canary.summary()


@pytest.mark.parametrize("spelling", ["literal"])
@pytest.mark.parametrize("kind", list(KIND_PAGES))
async def test_allowed_twin_reaches_the_canary(
    visit_factory: Any, site: Site, canary: Canary, kind: str, spelling: str
) -> None:
    to = target_url(kind, spelling, canary.port)
    visit: Visit = await visit_factory(rules_for(site, canary, **OPEN_ALL))
    await open_kind_page(visit, site, kind, to)
    assert await wait_until(canary.reached), f"{kind} made no request to {to}"
    assert visit.session.blocked_requests == 0
    if spelling == "metadata":
        assert "169.254.169.254" in canary.diverted_log


async def test_allowed_page_with_every_kind_has_no_false_blocks(
    visit_factory: Any, site: Site, canary: Canary
) -> None:
    """Subresources on the allowed site itself all load; nothing is refused."""
    visit: Visit = await visit_factory(rules_for(site, canary))
    for kind in KIND_PAGES:
        if kind in MAIN_FRAME_KINDS or kind == "websocket":
            continue
        await open_kind_page(visit, site, kind, site.url("/pixel.png"))
    await asyncio.sleep(0.3)
    assert visit.session.blocked_requests == 0
    assert visit.session.bytes_transferred > 0
    assert not canary.reached()

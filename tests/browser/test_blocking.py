"""blockAds and hideCookieBanners against maintained sources, judged by the pixels and the wire.

One server on 127.0.0.7 answers for a news site and for two hosts the filter lists know as ad and
tracker hosts (ib.adnxs.com, b.scorecardresearch.com); the engine's egress guard resolves those
names to it, so nothing leaves the machine. Each response is recorded with the Host it was for.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from kubeshot.api import CaptureError, CaptureOptions, FailureReason, ScreenshotPolicySpec
from kubeshot_capture.blocklists import (
    FILTER_LISTS_ENV,
    REQUIRED_LISTS,
    ad_blocker,
    build_ad_blocker,
    filter_lists_dir,
    write_engine_cache,
)
from kubeshot_capture.guard import EgressGuard, IPAddress
from tests.conftest import need
from tests.support import HostSite, host_site

HOST = "127.0.0.7"
NEWS = "news.kubeshot.test"
AD = "ib.adnxs.com"
TRACKER = "b.scorecardresearch.com"
GREEN, RED, BLUE, WHITE = (0, 160, 0), (255, 0, 0), (0, 0, 255), (255, 255, 255)
MAGENTA = (255, 0, 255)


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (100, 100), colour).save(out, "PNG")
    return out.getvalue()


def pages(port: int) -> dict[tuple[str, str], tuple[str, bytes]]:
    box = "position:absolute;top:0;width:100px;height:100px"
    ads = f"""<!doctype html><html><head><style>html,body{{margin:0;background:#fff}}</style>
      </head><body>
      <img src="/ads/banner.png" style="{box};left:0">
      <img src="http://{AD}:{port}/ad.png" style="{box};left:200px">
      <div class="ad-slot" style="{box};top:100px;left:0;background:#f0f"></div>
      <script src="http://{TRACKER}:{port}/beacon.js"></script></body></html>"""
    # OneTrust's markup as sites embed it: its reject button removes the banner, as OneTrust's
    # own script does when a visitor declines.
    consent = """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
      #onetrust-banner-sdk{position:fixed;left:0;top:0;width:100%;height:100%;background:#f00}
      </style></head><body><p>article</p><div id="onetrust-consent-sdk">
      <div id="onetrust-banner-sdk" role="dialog"><p>We use cookies.</p>
      <button id="onetrust-accept-btn-handler">Accept All Cookies</button>
      <button id="onetrust-reject-all-handler"
        onclick="document.getElementById('onetrust-consent-sdk').remove();
                 document.body.dataset.consent = 'rejected'">Reject All</button>
      </div></div></body></html>"""
    beacon = f"""const d = document.createElement('div');
      d.style.cssText = '{box};left:400px;background:#00f';
      document.body.appendChild(d);"""
    return {
        (NEWS, "/"): ("text/html", ads.encode()),
        (NEWS, "/consent"): ("text/html", consent.encode()),
        (NEWS, "/ads/banner.png"): ("image/png", png(GREEN)),
        (AD, "/ad.png"): ("image/png", png(RED)),
        (TRACKER, "/beacon.js"): ("text/javascript", beacon.encode()),
    }


async def resolve(host: str, port: int) -> Sequence[IPAddress]:
    if host in {NEWS, AD, TRACKER}:
        return [ip_address(HOST)]
    raise OSError(f"{host}: Name or service not known")


@pytest.fixture(scope="module")
def server() -> Iterator[HostSite]:
    """Serves `pages` by Host and path on 127.0.0.7; `hits` records (host, path) of each."""
    with host_site(HOST) as running:
        running.routes.update(pages(running.port))
        yield running


@pytest.fixture(scope="module")
def lists() -> Path:
    directory = filter_lists_dir()
    need(
        all((directory / name).is_file() for name in REQUIRED_LISTS),
        f"no filter lists at {directory}: install webext-ublock-origin-chromium (make setup)",
    )
    return directory


@pytest_asyncio.fixture(scope="module")
async def named_engine(chromium: str) -> AsyncIterator[Any]:
    """An engine whose egress guard resolves the test's host names to 127.0.0.7."""
    from kubeshot_capture.engine import CaptureEngine

    async with CaptureEngine(spare_contexts=1, guard=EgressGuard(resolver=resolve)) as running:
        yield running


@pytest.fixture(scope="module")
def policy(server: HostSite) -> ScreenshotPolicySpec:
    return ScreenshotPolicySpec.model_validate(
        {"network": {"allowedCIDRs": [f"{HOST}/32"], "allowedPorts": [server.port]}}
    )


async def capture(engine: Any, policy: ScreenshotPolicySpec, **raw: Any) -> Any:
    options = {"viewport": {"width": 600, "height": 200}, **raw}
    return await engine.capture(CaptureOptions.model_validate(options), policy)


def colour_at(data: bytes, x: int, y: int) -> tuple[int, int, int]:
    pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def near(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(x - y) <= 40 for x, y in zip(a, b, strict=True))


def test_lists_judge_third_parties_by_the_page_that_asks(lists: Path) -> None:
    blocker = ad_blocker()
    page = f"http://{NEWS}/"
    assert blocker.blocks(f"http://{AD}/ad.png", page, "image")
    assert blocker.blocks(f"http://{TRACKER}/beacon.js", page, "script")
    assert not blocker.blocks(f"http://{NEWS}/ads/banner.png", page, "image")
    assert not blocker.blocks(f"http://{NEWS}/pagead/track.gif", page, "image")


async def test_block_ads_blocks_third_party_ads_and_keeps_first_party_paths(
    named_engine: Any, policy: ScreenshotPolicySpec, server: HostSite, lists: Path
) -> None:
    url = server.url("/", NEWS)
    server.hits.clear()
    plain = await capture(named_engine, policy, url=url)
    assert {AD, TRACKER} <= server.hosts()  # the control: both load without blockAds
    assert near(colour_at(plain.data, 250, 50), RED)
    assert near(colour_at(plain.data, 450, 50), BLUE)
    assert near(colour_at(plain.data, 50, 150), MAGENTA)

    server.hits.clear()
    blocked = await capture(named_engine, policy, url=url, blockAds=True)
    assert server.hosts() == {NEWS}, server.hits  # nothing reached the ad or tracker host
    assert (NEWS, "/ads/banner.png") in server.hits  # the site's own /ads/ path is no ad
    assert near(colour_at(blocked.data, 50, 50), GREEN)
    assert near(colour_at(blocked.data, 250, 50), WHITE)
    assert near(colour_at(blocked.data, 450, 50), WHITE)
    assert near(colour_at(blocked.data, 50, 150), WHITE)  # the lists' element hiding: .ad-slot
    assert blocked.report.blocked_requests == 2


async def test_block_ads_without_lists_is_refused(
    named_engine: Any,
    policy: ScreenshotPolicySpec,
    server: HostSite,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FILTER_LISTS_ENV, str(tmp_path))
    with pytest.raises(CaptureError) as info:
        await capture(named_engine, policy, url=server.url("/", NEWS), blockAds=True)
    assert info.value.reason is FailureReason.INVALID_SPEC
    assert "blockAds is unavailable" in info.value.message and str(tmp_path) in info.value.message


async def test_hide_cookie_banners_rejects_a_onetrust_banner(
    named_engine: Any, policy: ScreenshotPolicySpec, server: HostSite
) -> None:
    url = server.url("/consent", NEWS)
    shown = await capture(named_engine, policy, url=url)
    assert near(colour_at(shown.data, 300, 100), RED)
    hidden = await capture(named_engine, policy, url=url, hideCookieBanners=True)
    assert near(colour_at(hidden.data, 300, 100), WHITE)
    # Declined, not just covered up: autoconsent pressed the banner's own reject button.
    html = await capture(named_engine, policy, url=url, hideCookieBanners=True, format="html")
    assert b'data-consent="rejected"' in html.data
    assert b"onetrust-banner-sdk" not in html.data.split(b"</style>", 1)[1]


def test_a_compiled_engine_is_used_only_for_the_lists_it_was_made_from(tmp_path: Path) -> None:
    def lists(name: str, rule: str) -> Path:
        directory = tmp_path / name
        for path in REQUIRED_LISTS:
            (directory / path).parent.mkdir(parents=True, exist_ok=True)
            (directory / path).write_text(rule if "easylist.txt" in path else "")
        return directory

    one, two = lists("one", "||ads.one.test^\n"), lists("two", "||ads.two.test^\n")
    cache = tmp_path / "engine.bin"
    write_engine_cache(one, cache)
    page = "http://site.test/"
    loaded = build_ad_blocker(one, cache)
    assert loaded.blocks("http://ads.one.test/a.png", page, "image")
    # Lists changed since: the cache is ignored and the new lists are compiled.
    fresh = build_ad_blocker(two, cache)
    assert fresh.blocks("http://ads.two.test/a.png", page, "image")
    assert not fresh.blocks("http://ads.one.test/a.png", page, "image")
    # The cache really is what gets loaded: one's engine under two's fingerprint answers as one.
    write_engine_cache(two, tmp_path / "two.bin")
    header = (tmp_path / "two.bin").read_bytes().split(b"\n", 1)[0]
    cache.write_bytes(header + b"\n" + cache.read_bytes().split(b"\n", 1)[1])
    assert build_ad_blocker(two, cache).blocks("http://ads.one.test/a.png", page, "image")


async def test_hide_cookie_banners_in_html_input(named_engine: Any, server: HostSite) -> None:
    # html input is written into about:blank, where the script added before navigation never
    # ran: the engine runs it in the written document.
    consent = server.routes[(NEWS, "/consent")][1].decode()
    hidden = await capture(
        named_engine, ScreenshotPolicySpec(), html=consent, hideCookieBanners=True
    )
    assert near(colour_at(hidden.data, 300, 100), WHITE)

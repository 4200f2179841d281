"""WebRTC cannot send UDP around the guard: STUN/TURN to a private address never leaves.

Chromium sends WebRTC's UDP directly, proxy or not. `EgressGuard.launch_args()` alone must stop
it; the twin runs the same page without those flags and shows the canary does receive STUN
datagrams there, so the test can see a leak.
"""

from __future__ import annotations

from playwright.async_api import async_playwright

from kubeshot_capture.browser import chromium_args
from kubeshot_capture.guard import EgressGuard
from tests.browser.guard.conftest import Canary, Site, rules_for
from tests.support import wait_until


async def run_webrtc_page(
    chromium: str, guard: EgressGuard, site: Site, canary: Canary, args: list[str]
) -> bool:
    """Whether the canary heard from the page's ICE gathering within a few seconds."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium,
            args=args,
            proxy=guard.browser_proxy,  # type: ignore[arg-type]
        )
        try:
            with guard.session(rules_for(site, canary), max_download_bytes=10**7) as session:
                page = await browser.new_page(proxy=guard.context_proxy(session.login))  # type: ignore[arg-type]
                await page.goto(site.url(f"/webrtc?server=127.0.0.66:{canary.port}"))
                return await wait_until(canary.reached, within=4.0)
        finally:
            await browser.close()


def without_webrtc_flags() -> list[str]:
    return [a for a in chromium_args() if "webrtc" not in a]


async def test_webrtc_udp_does_not_bypass_the_guard(
    chromium: str, guard: EgressGuard, site: Site, canary: Canary
) -> None:
    args = without_webrtc_flags() + guard.launch_args()
    assert not await run_webrtc_page(chromium, guard, site, canary, args), canary.summary()


async def test_webrtc_twin_without_the_flags_leaks(
    chromium: str, guard: EgressGuard, site: Site, canary: Canary
) -> None:
    assert await run_webrtc_page(chromium, guard, site, canary, without_webrtc_flags())
    assert any(hit.local.startswith("udp:") for hit in canary.hits)

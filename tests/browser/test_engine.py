"""Every capture option and format, through the real engine and real Chromium.

Each test decodes the artifact and checks what the option should have changed.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest
from PIL import Image
from pypdf import PdfReader

from kubeshot.api import CaptureError, CaptureOptions, FailureReason, ScreenshotPolicySpec
from tests.browser.conftest import TestSite

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def shot(engine: Any, policy: ScreenshotPolicySpec, **raw: Any) -> tuple[bytes, Any]:
    artifact = await engine.capture(CaptureOptions.model_validate(raw), policy)
    return artifact.data, artifact.report


def image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def rgb(img: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    pixel = img.convert("RGBA").getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def close(a: tuple[int, ...], b: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def dom_json(data: bytes) -> dict[str, Any]:
    match = re.search(rb'<pre id="out">(.*?)</pre>', data)
    assert match, data[:500]
    return json.loads(match.group(1).decode().replace("&quot;", '"').replace("&amp;", "&"))


async def test_png_viewport_and_report(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, report = await shot(
        engine, local_policy, url=site.url("/page"), viewport={"width": 640, "height": 480}
    )
    img = image(data)
    assert img.format == "PNG" and img.size == (640, 480)
    assert close(rgb(img, 50, 50), (255, 0, 0)) and close(rgb(img, 500, 400), (255, 255, 255))
    assert (report.width, report.height, report.bytes) == (640, 480, len(data))
    assert report.content_type == "image/png" and len(report.sha256) == 64
    assert report.final_url == site.url("/page")
    assert report.timings.total_ms > 0


async def test_jpeg_quality_changes_the_encoding(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    low, _ = await shot(engine, local_policy, url=site.url("/page"), format="jpeg", quality=5)
    high, _ = await shot(engine, local_policy, url=site.url("/page"), format="jpeg", quality=100)
    assert image(low).format == image(high).format == "JPEG"
    assert len(low) < len(high)


async def test_webp_is_really_webp(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, report = await shot(
        engine, local_policy, url=site.url("/page"), format="webp", quality=90
    )
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    img = image(data)
    assert img.format == "WEBP" and img.size == (1280, 720)
    assert close(rgb(img, 50, 50), (255, 0, 0))
    assert report.content_type == "image/webp"


async def test_webp_keeps_transparency(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(
        engine, local_policy, url=site.url("/transparent"), format="webp", omitBackground=True
    )
    img = image(data).convert("RGBA")
    pixel = img.getpixel((100, 100))
    assert isinstance(pixel, tuple) and pixel[3] == 0


async def test_omit_background_png(engine: Any, local_policy: Any, site: TestSite) -> None:
    opaque, _ = await shot(engine, local_policy, url=site.url("/transparent"))
    clear, _ = await shot(engine, local_policy, url=site.url("/transparent"), omitBackground=True)
    assert image(opaque).convert("RGBA").getpixel((100, 100)) == (255, 255, 255, 255)
    corner = image(clear).convert("RGBA").getpixel((100, 100))
    assert isinstance(corner, tuple) and corner[3] == 0
    assert close(rgb(image(clear), 5, 5), (0, 255, 0))


async def test_full_page_and_its_height_cap(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/tall"), fullPage=True)
    img = image(data)
    assert img.size == (1280, 3000)
    assert close(rgb(img, 10, 2500), (0, 0, 255))
    capped_policy = local_policy.model_copy(
        update={"limits": local_policy.limits.model_copy(update={"max_full_page_height": 1500})}
    )
    data, _ = await shot(engine, capped_policy, url=site.url("/tall"), fullPage=True)
    assert image(data).size == (1280, 1500)


async def test_selector_captures_one_element(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, report = await shot(engine, local_policy, url=site.url("/page"), selector="#box")
    img = image(data)
    assert img.size == (120, 80) and (report.width, report.height) == (120, 80)
    assert close(rgb(img, 10, 10), (0, 0, 255))


async def test_selector_with_html_format_returns_the_element(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, report = await shot(
        engine, local_policy, url=site.url("/page"), format="html", selector="#box"
    )
    assert data.decode() == '<div id="box">box</div>'
    assert report.content_type.startswith("text/html")


@pytest.mark.parametrize(
    ("path", "options", "reason", "message"),
    [
        ("/page", {"selector": "#missing"}, FailureReason.NAVIGATION_FAILED, "matched no element"),
        ("/page", {"selector": "##("}, FailureReason.INVALID_SPEC, ""),
        # A script that throws is the caller's error.
        (
            "/page",
            {"customJavaScript": "nope.nope()"},
            FailureReason.INVALID_SPEC,
            "customJavaScript failed",
        ),
        ("/slow?s=10", {"timeoutSeconds": 1}, FailureReason.TIMEOUT, ""),
    ],
    ids=["selector-matching-nothing", "invalid-selector", "failing-javascript", "timeout"],
)
async def test_a_capture_that_cannot_be_made_fails_with_its_reason(
    engine: Any,
    local_policy: Any,
    site: TestSite,
    path: str,
    options: dict[str, Any],
    reason: FailureReason,
    message: str,
) -> None:
    with pytest.raises(CaptureError) as info:
        await shot(engine, local_policy, url=site.url(path), **options)
    assert info.value.reason is reason
    assert message in info.value.message


async def test_device_scale_factor(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/page"),
        viewport={"width": 300, "height": 200},
        deviceScaleFactor=2,
    )
    img = image(data)
    assert img.size == (600, 400)
    assert close(rgb(img, 190, 190), (255, 0, 0)) and close(rgb(img, 210, 210), (255, 255, 255))


async def test_pdf_with_options(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, report = await shot(
        engine,
        local_policy,
        url=site.url("/tall"),
        format="pdf",
        pdf={"format": "Letter", "landscape": True, "pageRanges": "1"},
    )
    reader = PdfReader(io.BytesIO(data))
    box = reader.pages[0].mediabox
    assert (round(box.width), round(box.height)) == (792, 612)  # Letter, landscape
    assert len(reader.pages) == 1 and report.pages == 1
    default, _ = await shot(engine, local_policy, url=site.url("/tall"), format="pdf")
    a4 = PdfReader(io.BytesIO(default))
    assert (round(a4.pages[0].mediabox.width), round(a4.pages[0].mediabox.height)) in {
        (595, 842),
        (596, 843),
    }  # A4 in points, rounded either way
    assert len(a4.pages) > 1


async def test_html_format_is_the_rendered_dom(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/env"), format="html")
    assert dom_json(data)["w"] == 1280  # the script ran before the DOM was taken


async def test_context_options_reach_the_page(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/env"),
        format="html",
        userAgent="kubeshot-test/1.0",
        locale="de-DE",
        timezone="Asia/Tokyo",
        viewport={"width": 800, "height": 600},
        cookies=[{"name": "session", "value": "abc"}],
    )
    env = dom_json(data)
    assert env["ua"] == "kubeshot-test/1.0"
    assert env["lang"] == "de-DE"
    assert env["tz"] == "Asia/Tokyo"
    assert env["cookie"] == "session=abc"
    assert (env["w"], env["h"]) == (800, 600)


async def test_headers_and_cookies_reach_the_server(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/headers"),
        format="html",
        headers={"X-Kubeshot-Test": "yes"},
        cookies=[{"name": "c1", "value": "v1"}],
        userAgent="ua-check",
        locale="fr-FR",
    )
    seen = dom_json(data)
    assert seen["x-kubeshot-test"] == "yes"
    assert seen["cookie"] == "c1=v1"
    assert seen["user-agent"] == "ua-check"
    assert seen["accept-language"].startswith("fr-FR")


async def test_geolocation(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/geo"),
        format="html",
        geolocation={"latitude": 52.52, "longitude": 13.405},
        waitForSelector=".done",
    )
    assert b"52.52,13.405" in data


async def test_dark_mode(engine: Any, local_policy: Any, site: TestSite) -> None:
    light, _ = await shot(engine, local_policy, url=site.url("/dark"))
    dark, _ = await shot(engine, local_policy, url=site.url("/dark"), darkMode=True)
    assert close(rgb(image(light), 10, 10), (255, 255, 255))
    assert close(rgb(image(dark), 10, 10), (0, 0, 0))


async def test_wait_for_selector_and_delay(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(
        engine, local_policy, url=site.url("/late"), format="html", waitForSelector="#late"
    )
    assert b'<div id="late">arrived</div>' in data
    data, report = await shot(
        engine, local_policy, url=site.url("/late"), format="html", delayMs=1800
    )
    assert b'<div id="late">arrived</div>' in data and report.timings.navigation_ms >= 1800
    data, _ = await shot(engine, local_policy, url=site.url("/late"), format="html")
    assert b'<div id="late">' not in data


async def test_wait_until_networkidle(engine: Any, local_policy: Any, site: TestSite) -> None:
    for wait_until in ("load", "domcontentloaded", "networkidle"):
        data, _ = await shot(
            engine, local_policy, url=site.url("/page"), format="html", waitUntil=wait_until
        )
        assert b"Hello kubeshot" in data


async def test_custom_css_and_javascript(engine: Any, local_policy: Any, site: TestSite) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/page"),
        customCSS="#red { background: #00ff00 !important }",
    )
    assert close(rgb(image(data), 50, 50), (0, 255, 0))
    data, _ = await shot(
        engine,
        local_policy,
        url=site.url("/page"),
        customJavaScript="document.getElementById('red').style.background = '#0000ff'",
    )
    assert close(rgb(image(data), 50, 50), (0, 0, 255))


async def test_custom_javascript_needs_the_policy(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    policy = local_policy.model_copy(
        update={
            "features": local_policy.features.model_copy(update={"allow_custom_java_script": False})
        }
    )
    with pytest.raises(CaptureError) as info:
        await shot(engine, policy, url=site.url("/page"), customJavaScript="1")
    assert info.value.reason is FailureReason.POLICY_VIOLATION


async def test_hide_cookie_banners(engine: Any, local_policy: Any, site: TestSite) -> None:
    shown, _ = await shot(engine, local_policy, url=site.url("/banner"))
    hidden, _ = await shot(engine, local_policy, url=site.url("/banner"), hideCookieBanners=True)
    assert close(rgb(image(shown), 500, 500), (255, 0, 0))
    assert close(rgb(image(hidden), 500, 500), (255, 255, 255))


async def test_html_input(engine: Any, local_policy: Any) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        html="<html><body style='margin:0;background:#00f'></body></html>",
        viewport={"width": 200, "height": 100},
    )
    assert image(data).size == (200, 100) and close(rgb(image(data), 5, 5), (0, 0, 255))


async def test_dialogs_and_popups_do_not_hang(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/alert"), format="html")
    assert b"after" in data
    assert len(engine.browser.contexts) <= 2  # the spare and nothing left over


async def test_result_too_large(engine: Any, local_policy: Any, site: TestSite) -> None:
    small = local_policy.model_copy(
        update={"limits": local_policy.limits.model_copy(update={"max_result_bytes": 1024})}
    )
    with pytest.raises(CaptureError) as info:
        await shot(engine, small, url=site.url("/page"))
    assert info.value.reason is FailureReason.RESULT_TOO_LARGE


async def test_private_targets_are_blocked_by_default(engine: Any, site: TestSite) -> None:
    site.requests.clear()
    with pytest.raises(CaptureError) as info:
        await shot(engine, ScreenshotPolicySpec(), url=site.url("/page"))
    assert info.value.reason is FailureReason.BLOCKED_BY_POLICY
    assert site.requests == []


async def test_each_capture_gets_a_fresh_context(
    engine: Any, local_policy: Any, site: TestSite
) -> None:
    await shot(
        engine,
        local_policy,
        url=site.url("/env"),
        format="html",
        cookies=[{"name": "leak", "value": "1"}],
    )
    data, _ = await shot(engine, local_policy, url=site.url("/env"), format="html")
    assert dom_json(data)["cookie"] == ""


async def test_contexts_start_no_browser_ui(engine: Any) -> None:
    # Each context is a window whose omnibox popups would load WebUI pages in a renderer of
    # their own, per capture (browser.CHROMIUM_ARGS switches them off): only pages remain.
    context = await engine.browser.new_context()
    cdp = await engine.browser.new_browser_cdp_session()
    try:
        await context.new_page()
        await asyncio.sleep(0.5)  # the popups open with the window, without a wait
        await cdp.send("Target.setDiscoverTargets", {"discover": True})
        targets = (await cdp.send("Target.getTargets"))["targetInfos"]
    finally:
        await cdp.detach()
        await context.close()
    assert targets and {target["type"] for target in targets} == {"page"}, targets


async def test_an_engine_that_captures_once_opens_no_spare_after_its_capture(
    local_policy: Any, site: TestSite
) -> None:
    # A warm capture pod: its one spare is taken, and nothing is opened beside its capture.
    from kubeshot_capture.engine import CaptureEngine

    async with CaptureEngine(spare_contexts=1, replace_spares=False) as once:
        data, report = await shot(once, local_policy, url=site.url("/page"))
        assert data and report.format == "png"
        await asyncio.sleep(0.5)  # a replacement would have opened by now
        assert once.browser.contexts == []


async def test_a_worker_engine_replaces_the_spare_its_first_capture_took(
    local_policy: Any, site: TestSite
) -> None:
    # The first capture waits for the spare being opened and takes it the moment it is ready:
    # that refill, done, must not count as the replacement (it did: no spare was ever again).
    from kubeshot_capture.engine import CaptureEngine

    async with CaptureEngine(spare_contexts=1) as worker:
        await shot(worker, local_policy, url=site.url("/page"))
        await asyncio.sleep(0.5)
        assert len(worker.browser.contexts) == 1

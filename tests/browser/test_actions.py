"""Page actions through the real engine: scrollToLoad, hideSelectors, clickSelectors, clip,
waitForSelectorState and bestAttempt. Each test decodes the artifact and looks at its pixels."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pypdf import PdfReader

from kubeshot.api import CaptureError, FailureReason, ScreenshotPolicySpec
from tests.browser.conftest import TestSite
from tests.browser.test_engine import close, image, rgb, shot

pytestmark = pytest.mark.asyncio(loop_scope="session")

WHITE, RED, GREEN, BLUE = (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)
# Where /lazy puts its images: one swapped in by an IntersectionObserver, one loading=lazy.
OBSERVED_IMAGE = (100, 3100)
NATIVE_IMAGE = (100, 6300)


async def test_scroll_to_load_fills_lazy_images(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/lazy"), fullPage=True)
    blank = image(data)
    assert blank.size == (1280, 6900)
    assert close(rgb(blank, *OBSERVED_IMAGE), WHITE)  # never scrolled to: never loaded

    data, _ = await shot(
        engine, local_policy, url=site.url("/lazy"), fullPage=True, scrollToLoad=True
    )
    loaded = image(data)
    assert loaded.size == (1280, 6900)
    assert close(rgb(loaded, *OBSERVED_IMAGE), GREEN)
    assert close(rgb(loaded, *NATIVE_IMAGE), BLUE)
    assert close(rgb(loaded, 600, 100), WHITE)


def pdf_image_colours(data: bytes) -> set[tuple[int, int, int]]:
    """The colour of each (solid) image embedded in a PDF."""
    colours = set()
    for page in PdfReader(io.BytesIO(data)).pages:
        for embedded in page.images:
            colours.add(rgb(embedded.image, 0, 0))
    return colours


async def test_scroll_to_load_fills_lazy_images_in_pdf(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/lazy"), format="pdf")
    # Chromium loads loading=lazy images for print by itself; observed ones it cannot.
    assert pdf_image_colours(data) == {BLUE}
    data, _ = await shot(
        engine, local_policy, url=site.url("/lazy"), format="pdf", scrollToLoad=True
    )
    assert pdf_image_colours(data) == {GREEN, BLUE}


async def test_scroll_to_load_stops_at_the_policys_height(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    limits = local_policy.limits.model_copy(update={"max_full_page_height": 2000})
    short = local_policy.model_copy(update={"limits": limits})
    before = len(site.requests)
    data, _ = await shot(engine, short, url=site.url("/lazy"), fullPage=True, scrollToLoad=True)
    assert image(data).size == (1280, 2000)
    assert not any(path.startswith("/color/") for path in site.requests[before:])


async def test_hide_selectors_hide_the_elements_only(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    data, _ = await shot(engine, local_policy, url=site.url("/page"), hideSelectors=["#red"])
    img = image(data)
    assert close(rgb(img, 50, 50), WHITE)
    assert close(rgb(img, 250, 90), BLUE)  # #box is still there, where it was

    data, _ = await shot(engine, local_policy, url=site.url("/page"), hideSelectors=["#red, #box"])
    assert close(rgb(image(data), 250, 90), WHITE)


async def test_hide_selectors_need_no_custom_javascript(
    engine: Any, site: TestSite, local_policy: ScreenshotPolicySpec
) -> None:
    features = local_policy.features.model_copy(update={"allow_custom_java_script": False})
    strict = local_policy.model_copy(update={"features": features})
    data, _ = await shot(engine, strict, url=site.url("/page"), hideSelectors=["#red"])
    assert close(rgb(image(data), 50, 50), WHITE)


@pytest.mark.parametrize(
    "selector",
    [
        "##(",
        "a{} body{background:red}",  # a second rule smuggled in
        "@media print{a",  # an @-rule instead of a selector
        "a{color:red;x:",  # a declaration of its own
    ],
)
async def test_hide_selectors_refuse_what_is_not_a_selector(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite, selector: str
) -> None:
    with pytest.raises(CaptureError) as info:
        await shot(engine, local_policy, url=site.url("/page"), hideSelectors=["p", selector])
    assert info.value.reason is FailureReason.INVALID_SPEC
    assert "hideSelectors" in info.value.message and repr(selector) in info.value.message


async def test_hidden_elements_stay_hidden_in_html_output(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    data, _ = await shot(
        engine, local_policy, url=site.url("/page"), format="html", hideSelectors=["#box"]
    )
    assert b"#box { visibility: hidden !important; }" in data


async def changes(
    engine: Any,
    policy: ScreenshotPolicySpec,
    url: str,
    at: tuple[int, int],
    before: tuple[int, int, int],
    after: tuple[int, int, int],
    **options: Any,
) -> None:
    """The pixel `at` is `before` in a capture of `url` without `options`, `after` with them."""
    data, _ = await shot(engine, policy, url=url)
    assert close(rgb(image(data), *at), before)
    data, _ = await shot(engine, policy, url=url, **options)
    assert close(rgb(image(data), *at), after)


async def test_click_reveals_loaded_content(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    clicks = [{"selector": "#consent", "optional": True}, {"selector": "#more"}]
    await changes(engine, local_policy, site.url("/load-more"), (150, 200), WHITE, GREEN,
                  clickSelectors=clicks)  # fmt: skip


async def test_a_required_click_on_nothing_fails_naming_the_selector(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    with pytest.raises(CaptureError) as info:
        await shot(
            engine, local_policy, url=site.url("/page"), clickSelectors=[{"selector": "#missing"}]
        )
    assert info.value.reason is FailureReason.NAVIGATION_FAILED
    assert "clickSelectors '#missing' matched no element" in info.value.message


async def test_clip_gives_the_rectangle(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    clip = {"x": 180, "y": 40, "width": 160, "height": 100}
    data, report = await shot(engine, local_policy, url=site.url("/page"), clip=clip)
    img = image(data)
    assert img.size == (160, 100) and (report.width, report.height) == (160, 100)
    assert close(rgb(img, 5, 5), WHITE)  # (185, 45): left of and above #box
    assert close(rgb(img, 30, 20), BLUE)  # (210, 60): inside #box
    assert close(rgb(img, 150, 95), WHITE)  # (330, 135): right of and below #box

    data, _ = await shot(
        engine, local_policy, url=site.url("/page"), clip=clip, deviceScaleFactor=2
    )
    assert image(data).size == (320, 200)


@pytest.mark.parametrize("state", ["hidden", "detached"])
async def test_wait_for_selector_state_waits_for_the_spinner_to_go(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite, state: str
) -> None:
    await changes(engine, local_policy, site.url("/spinner"), (100, 100), RED, WHITE,
                  waitForSelector="#spinner", waitForSelectorState=state)  # fmt: skip


async def test_wait_for_selector_still_waits_for_visible(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    data, _ = await shot(
        engine, local_policy, url=site.url("/late"), format="html", waitForSelector="#late"
    )
    assert b"arrived" in data


async def test_best_attempt_captures_a_page_whose_load_never_fires(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    raw = {"url": site.url("/never-loads"), "waitUntil": "load"}
    with pytest.raises(CaptureError) as info:
        await shot(engine, local_policy, **raw, timeoutSeconds=3)
    assert info.value.reason is FailureReason.TIMEOUT

    # 10 s: 7.5 to load (ample on a busy machine: the page commits at once), 2.5 to render.
    data, report = await shot(
        engine, local_policy, **raw, timeoutSeconds=10, bestAttempt=True, hideSelectors=["#ad"]
    )
    img = image(data)
    assert img.format == "PNG" and close(rgb(img, 150, 150), GREEN)
    assert close(rgb(img, 450, 50), WHITE)  # the styles apply to a partial capture too
    assert report.partial is True
    assert report.to_wire()["partial"] is True


async def test_a_complete_capture_is_not_partial(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    _, report = await shot(engine, local_policy, url=site.url("/page"), bestAttempt=True)
    assert report.partial is None and "partial" not in report.to_wire()


async def test_best_attempt_fails_when_nothing_rendered(
    engine: Any, local_policy: ScreenshotPolicySpec, site: TestSite
) -> None:
    with pytest.raises(CaptureError) as info:
        await shot(
            engine, local_policy, url=site.url("/slow?s=30"), timeoutSeconds=3, bestAttempt=True
        )
    assert info.value.reason is FailureReason.TIMEOUT
    assert "rendered nothing" in info.value.message

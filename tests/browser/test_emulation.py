"""Device and media emulation through the real engine: the pages show what they were told, as
pixels (a block whose colour a media query picks) or as text (format html, read from the DOM)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from kubeshot.api import CaptureError, FailureReason, ScreenshotPolicySpec
from tests.browser.test_engine import close, dom_json, image, rgb, shot

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
IPHONE_13_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 15_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/27.2 Mobile/15E148 Safari/604.1"
)


# A mobile page's layout viewport is the device's only with this tag (else 980 CSS pixels wide,
# zoomed out to fit).
DEVICE_WIDTH = '<meta name="viewport" content="width=device-width">'


def block(rules: str) -> str:
    """A page filled red, unless one of the media `rules` recolours #b."""
    return (
        f"<!doctype html><html><head>{DEVICE_WIDTH}<style>html, body {{ margin: 0 }}"
        " #b { position: fixed; inset: 0; background: #f00 }"
        f" {rules}</style></head><body><div id='b'></div></body></html>"
    )


# What the page knows of its device, as JSON in <pre id="out"> (format html reads it back).
ENV = """<!doctype html><html><head>{head}</head><body><pre id="out"></pre><script>
    document.getElementById('out').textContent = JSON.stringify({
      ua: navigator.userAgent, touch: navigator.maxTouchPoints, w: innerWidth, h: innerHeight,
      screen: [screen.width, screen.height],
      coarse: matchMedia('(pointer: coarse)').matches,
      reduced: matchMedia('(prefers-reduced-motion: reduce)').matches,
      dark: matchMedia('(prefers-color-scheme: dark)').matches,
      print: matchMedia('print').matches});
    </script></body></html>"""
COARSE = block("@media (pointer: coarse) { #b { background: #0f0 } }")
MOTION = block("@media (prefers-reduced-motion: reduce) { #b { background: #0f0 } }")
SCHEME = block(
    "@media (prefers-color-scheme: light) { #b { background: #0f0 } }"
    " @media (prefers-color-scheme: dark) { #b { background: #00f } }"
)
PRINT = block("@media print { #b { background: #00f } }")


async def colour(engine: Any, policy: ScreenshotPolicySpec, html: str, **raw: Any) -> Any:
    data, _ = await shot(engine, policy, html=html, **raw)
    img = image(data)
    return rgb(img, img.width // 2, img.height // 2)


async def env(engine: Any, policy: ScreenshotPolicySpec, head: str = "", **raw: Any) -> Any:
    data, _ = await shot(engine, policy, html=ENV.replace("{head}", head), format="html", **raw)
    return dom_json(data)


async def test_device_sets_size_scale_and_touch(engine: Any, local_policy: Any) -> None:
    data, report = await shot(engine, local_policy, html=COARSE, device="iPhone 13")
    img = image(data)
    assert img.size == (390 * 3, 664 * 3) and (report.width, report.height) == img.size
    assert close(rgb(img, 585, 996), GREEN)  # (pointer: coarse): the device has touch
    assert close(await colour(engine, local_policy, COARSE), RED)


async def test_device_shows_in_the_page(engine: Any, local_policy: Any) -> None:
    seen = await env(engine, local_policy, DEVICE_WIDTH, device="iPhone 13")
    assert seen["ua"] == IPHONE_13_UA
    assert seen["touch"] > 0 and seen["coarse"] is True
    assert (seen["w"], seen["h"], seen["screen"]) == (390, 664, [390, 844])


async def test_explicit_values_win_over_the_device(engine: Any, local_policy: Any) -> None:
    data, _ = await shot(
        engine,
        local_policy,
        html=COARSE,
        device="iPhone 13",
        viewport={"width": 200, "height": 100},
        deviceScaleFactor=2,
        hasTouch=False,
    )
    img = image(data)
    assert img.size == (400, 200) and close(rgb(img, 200, 100), RED)


async def test_is_mobile_honours_the_meta_viewport(engine: Any, local_policy: Any) -> None:
    head = '<meta name="viewport" content="width=980">'
    small = {"viewport": {"width": 390, "height": 600}}
    assert (await env(engine, local_policy, head, **small))["w"] == 390
    assert (await env(engine, local_policy, head, isMobile=True, **small))["w"] == 980


async def test_has_touch_alone(engine: Any, local_policy: Any) -> None:
    assert close(await colour(engine, local_policy, COARSE, hasTouch=True), GREEN)
    seen = await env(engine, local_policy, hasTouch=True)
    assert seen["touch"] > 0 and seen["w"] == 1280


async def test_reduced_motion(engine: Any, local_policy: Any) -> None:
    assert close(await colour(engine, local_policy, MOTION), RED)
    # On a spare context (emulated on its page) and on a context of its own alike.
    assert close(await colour(engine, local_policy, MOTION, reducedMotion="reduce"), GREEN)
    fresh = await colour(engine, local_policy, MOTION, reducedMotion="reduce", locale="de-DE")
    assert close(fresh, GREEN)
    assert close(await colour(engine, local_policy, MOTION, reducedMotion="no-preference"), RED)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, GREEN),
        ({"colorScheme": "light"}, GREEN),
        ({"colorScheme": "dark"}, BLUE),
        ({"darkMode": True}, BLUE),
        ({"colorScheme": "dark", "darkMode": True}, BLUE),
        # Chromium matches light when there is no preference (the spec dropped the value).
        ({"colorScheme": "no-preference"}, GREEN),
        ({"colorScheme": "dark", "device": "Pixel 7"}, BLUE),
        ({"colorScheme": "light", "device": "Pixel 7"}, GREEN),
    ],
)
async def test_color_scheme(
    engine: Any, local_policy: Any, raw: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    assert close(await colour(engine, local_policy, SCHEME, **raw), expected)


async def test_media_type_print_for_images(engine: Any, local_policy: Any) -> None:
    assert close(await colour(engine, local_policy, PRINT), RED)
    assert close(await colour(engine, local_policy, PRINT, mediaType="print"), BLUE)
    assert close(await colour(engine, local_policy, PRINT, mediaType="screen"), RED)
    assert (await env(engine, local_policy, mediaType="print"))["print"] is True


async def test_a_devices_viewport_is_admitted_like_an_explicit_one(
    engine: Any, local_policy: ScreenshotPolicySpec
) -> None:
    narrow = local_policy.model_copy(
        update={
            "limits": local_policy.limits.model_copy(
                update={
                    "max_viewport": local_policy.limits.max_viewport.model_copy(
                        update={"width": 300}
                    )
                }
            )
        }
    )
    with pytest.raises(CaptureError) as info:
        await shot(engine, narrow, html=COARSE, device="iPhone 13")
    assert info.value.reason is FailureReason.POLICY_VIOLATION
    assert "viewport width 390 (device 'iPhone 13') > 300" in info.value.message


async def test_the_device_table_is_playwrights_own() -> None:
    """devices.json is what the installed Playwright lists (its driver starts; no browser)."""
    check = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "hack" / "devicesgen.py"),
        "--check",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await check.communicate()
    assert check.returncode == 0, output.decode()

"""Chinese, Japanese, Korean and emoji render as glyphs, not as empty boxes ("tofu").

A character no installed font has is drawn as the font's missing-glyph box (.notdef); U+10FFFD
(private use, in no font) gives that box for reference. Each CJK character must come out unlike
the box (and unlike each other), and the emoji in colour: on a machine without Noto CJK and Noto
Color Emoji (or any other CJK and colour-emoji font) every one of them is the same grey box.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageChops

from kubeshot.api import CaptureOptions, ScreenshotPolicySpec

MISSING = "\U0010fffd"
CJK = "中文日本語한국어"
EMOJI = "\U0001f600"  # grinning face
CELL = 120


def html(chars: str) -> str:
    cells = "".join(
        f'<div style="position:absolute;left:{i * CELL}px;top:0;width:{CELL}px;height:{CELL}px;'
        f'font:96px/{CELL}px sans-serif;text-align:center">{c}</div>'
        for i, c in enumerate(chars)
    )
    return f"<!doctype html><html><body style='margin:0;background:#fff'>{cells}</body></html>"


async def render(engine: Any, chars: str) -> list[Image.Image]:
    """One CELL x CELL crop per character, rendered at 96 px."""
    options = CaptureOptions.model_validate(
        {"html": html(chars), "viewport": {"width": CELL * len(chars), "height": CELL}}
    )
    artifact = await engine.capture(options, ScreenshotPolicySpec())
    shot = Image.open(io.BytesIO(artifact.data)).convert("RGB")
    return [shot.crop((i * CELL, 0, (i + 1) * CELL, CELL)) for i in range(len(chars))]


def pixels(cell: Image.Image) -> list[tuple[int, int, int]]:
    raw = cell.convert("RGB").tobytes()
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]


def ink(cell: Image.Image) -> int:
    """Pixels that are not white."""
    return sum(1 for p in pixels(cell) if min(p) < 200)


def differ(a: Image.Image, b: Image.Image) -> int:
    """Pixels that differ clearly between two renderings."""
    return sum(1 for p in pixels(ImageChops.difference(a, b)) if max(p) > 64)


def coloured(cell: Image.Image) -> int:
    """Pixels far from grey (a black-and-white box or glyph has none)."""
    return sum(1 for r, g, b in pixels(cell) if max(r, g, b) - min(r, g, b) > 80)


async def test_cjk_text_renders_as_glyphs_not_tofu(engine: Any) -> None:
    cells = await render(engine, MISSING + CJK)
    box, glyphs = cells[0], cells[1:]
    assert ink(box) > 0, "the missing-glyph reference drew nothing"
    for char, cell in zip(CJK, glyphs, strict=True):
        assert ink(cell) > 200, f"{char} drew no glyph"
        assert differ(cell, box) > 200, f"{char} is drawn as the missing-glyph box"
    # Distinct characters, distinct glyphs (tofu boxes of one font are all alike).
    assert differ(glyphs[0], glyphs[2]) > 200 and differ(glyphs[2], glyphs[5]) > 200


async def test_emoji_renders_in_colour(engine: Any) -> None:
    box, emoji = await render(engine, MISSING + EMOJI)
    assert coloured(box) == 0
    assert coloured(emoji) > 1000, "the emoji is not in colour (no colour emoji font)"
    assert differ(emoji, box) > 1000

"""Device presets: Playwright's own device list, checked in as devices.json (hack/devicesgen.py).

The models resolve a `device` into its viewport, scale, user agent, isMobile and hasTouch when
they validate, so that admission (the policy's maximum viewport, the pixel budget) weighs a
device exactly like the same values given by hand. No browser and no Playwright are needed.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

MAX_DEVICE_NAME_LENGTH = 64


@dataclass(frozen=True)
class Device:
    """One device preset, as Playwright describes it."""

    name: str
    user_agent: str
    viewport: tuple[int, int]
    """Width and height in CSS pixels."""
    screen: tuple[int, int] | None
    """window.screen's size; None for desktops (the viewport's size)."""
    device_scale_factor: float
    is_mobile: bool
    has_touch: bool


@cache
def devices() -> dict[str, Device]:
    """Every preset by its exact (case-sensitive) Playwright name."""
    text = resources.files("kubeshot.api").joinpath("devices.json").read_text(encoding="utf-8")
    table: dict[str, dict[str, object]] = json.loads(text)
    return {name: _device(name, entry) for name, entry in table.items()}


def _device(name: str, entry: dict[str, object]) -> Device:
    def size(value: object) -> tuple[int, int]:
        assert isinstance(value, dict)
        return int(value["width"]), int(value["height"])

    screen = entry.get("screen")
    scale = entry["deviceScaleFactor"]
    assert isinstance(scale, int | float)
    return Device(
        name=name,
        user_agent=str(entry["userAgent"]),
        viewport=size(entry["viewport"]),
        screen=None if screen is None else size(screen),
        device_scale_factor=float(scale),
        is_mobile=bool(entry["isMobile"]),
        has_touch=bool(entry["hasTouch"]),
    )


def find_device(name: str) -> Device:
    """The preset of that name; ValueError naming the closest names when there is none."""
    found = devices().get(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name[:MAX_DEVICE_NAME_LENGTH], list(devices()), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown device {name!r} (a name from Playwright's device list){hint}")

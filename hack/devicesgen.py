#!/usr/bin/env python3
"""Generate operator/kubeshot/api/devices.json, the device presets, from Playwright's own list.

kubeshot.api validates `device` names and resolves a device's viewport and scale before admission,
in the gateway and the operator alike, without a browser or a Playwright driver: so the list is
checked in. Its one source is `playwright.devices` of the installed Playwright (the driver starts,
no browser); the browser tier runs `--check`, so a Playwright upgrade that changes the list fails
until this is re-run.

    python hack/devicesgen.py          # write the file
    python hack/devicesgen.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "operator" / "kubeshot" / "api" / "devices.json"


def playwright_devices() -> dict[str, Any]:
    """Playwright's device descriptors in the wire's camelCase, sorted by name.

    `defaultBrowserType` is left out: kubeshot renders every device with Chromium, as Playwright
    does when a Chromium context is given a WebKit device's descriptor.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        devices = playwright.devices
    table: dict[str, Any] = {}
    for name, d in sorted(devices.items()):
        entry: dict[str, Any] = {
            "userAgent": d["user_agent"],
            "viewport": {"width": d["viewport"]["width"], "height": d["viewport"]["height"]},
            "deviceScaleFactor": d["device_scale_factor"],
            "isMobile": d["is_mobile"],
            "hasTouch": d["has_touch"],
        }
        if "screen" in d:  # desktops have none: the screen is then the viewport's size
            entry["screen"] = {"width": d["screen"]["width"], "height": d["screen"]["height"]}
        table[name] = entry
    return table


def render() -> str:
    """One device a line, so that an upgrade's diff shows the devices that changed."""
    lines = [
        f"{json.dumps(name)}: {json.dumps(entry, ensure_ascii=False)}"
        for name, entry in playwright_devices().items()
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run hack/devicesgen.py")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(TARGET.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

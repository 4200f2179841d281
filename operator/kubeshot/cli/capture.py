"""`kubeshot capture URL -o FILE`: one capture on this machine, behind the same egress guard."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    ExitCode,
    Format,
    PaperFormat,
    ScreenshotPolicySpec,
    WaitUntil,
)
from kubeshot.cli._common import describe_validation_error, fail, load_policies


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "capture",
        help="capture a page to a file",
        description="Capture a web page. Exit codes: 0 ok, 2 invalid input, 3 blocked by policy, "
        "4 capture failed, 5 resource limit exceeded.",
    )
    p.add_argument("url", nargs="?", help="http(s) URL to capture")
    p.add_argument("--html", metavar="FILE", help="render this HTML file instead of a URL")
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="artifact path (- for stdout)"
    )
    p.add_argument(
        "--format", choices=[f.value for f in Format], help="default: from -o's suffix, else png"
    )
    p.add_argument("--quality", type=int, help="1-100, jpeg and webp")
    p.add_argument("--full-page", action="store_true", help="the whole scrollable page")
    p.add_argument("--width", type=int, help="viewport width (default 1280)")
    p.add_argument("--height", type=int, help="viewport height (default 720)")
    p.add_argument("--scale", type=float, help="device scale factor (default 1)")
    p.add_argument("--selector", help="capture only this element")
    p.add_argument("--wait-until", choices=[w.value for w in WaitUntil])
    p.add_argument("--wait-for", metavar="SELECTOR", help="wait until this element is visible")
    p.add_argument("--delay", type=int, metavar="MS", help="extra wait before capture")
    p.add_argument("--dark-mode", action="store_true")
    p.add_argument("--omit-background", action="store_true", help="transparent background")
    p.add_argument("--user-agent")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument("--cookie", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--locale", help="e.g. de-DE")
    p.add_argument("--timezone", help="IANA zone, e.g. Europe/Berlin")
    p.add_argument("--geolocation", metavar="LAT,LON")
    p.add_argument("--css", metavar="CSS_OR_@FILE", help="custom CSS (text, or @file)")
    p.add_argument("--js", metavar="JS_OR_@FILE", help="custom JavaScript (text, or @file)")
    p.add_argument("--block-ads", action="store_true")
    p.add_argument("--hide-cookie-banners", action="store_true")
    p.add_argument("--pdf-format", choices=[f.value for f in PaperFormat])
    p.add_argument("--landscape", action="store_true", help="pdf in landscape")
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="capture time limit")
    p.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow this private/special range (repeatable), e.g. 127.0.0.0/8",
    )
    p.add_argument("--policy", metavar="FILE", help="ScreenshotPolicy YAML to capture under")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log the egress guard's decisions")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="kubeshot: %(name)s: %(message)s",
    )
    try:
        options = build_options(args)
        policy = build_policy(args)
    except ValidationError as exc:
        return fail(ExitCode.INVALID_INPUT, f"invalid input: {describe_validation_error(exc)}")
    except (ValueError, OSError) as exc:
        return fail(ExitCode.INVALID_INPUT, f"invalid input: {exc}")
    try:
        return asyncio.run(_capture(args, options, policy))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return fail(130, "interrupted")


async def _capture(
    args: argparse.Namespace, options: CaptureOptions, policy: ScreenshotPolicySpec
) -> int:
    from kubeshot_capture.engine import CaptureEngine

    # SIGTERM cancels the capture like Ctrl-C does, so the browser is closed, never orphaned.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with CaptureEngine(spare_contexts=0) as engine:
            artifact = await engine.capture(options, policy)
    except CaptureError as exc:
        if args.json:
            print(json.dumps({"error": {"reason": exc.reason.value, "message": exc.message}}))
        return fail(exc.reason.exit_code, f"{exc.reason.value}: {exc.message}")
    write_atomically(args.output, artifact.data)
    if args.json:
        print(json.dumps(artifact.report.to_wire()))
    return ExitCode.OK


def write_atomically(output: str, data: bytes) -> None:
    """Write the artifact to a temporary file beside `output`, then rename: no partial files."""
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(output)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _text_or_file(value: str | None) -> str | None:
    if value is not None and value.startswith("@"):
        return Path(value[1:]).read_text(encoding="utf-8")
    return value


def _format_from(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = Path(args.output).suffix.lower().lstrip(".")
    return {"jpg": "jpeg", "htm": "html"}.get(suffix, suffix) if suffix in _SUFFIXES else "png"


_SUFFIXES = {"png", "jpg", "jpeg", "webp", "pdf", "html", "htm"}


def build_options(args: argparse.Namespace) -> CaptureOptions:
    """CaptureOptions from the flags; only flags that were given are passed on."""
    if (args.url is None) == (args.html is None):
        raise ValueError("give exactly one of URL and --html FILE")
    raw: dict[str, Any] = {"format": _format_from(args)}
    if args.url is not None:
        raw["url"] = args.url
    else:
        raw["html"] = Path(args.html).read_text(encoding="utf-8")
    simple = {
        "quality": "quality",
        "selector": "selector",
        "wait_until": "waitUntil",
        "wait_for": "waitForSelector",
        "delay": "delayMs",
        "user_agent": "userAgent",
        "locale": "locale",
        "timezone": "timezone",
        "scale": "deviceScaleFactor",
        "timeout": "timeoutSeconds",
    }
    for flag, field in simple.items():
        value = getattr(args, flag)
        if value is not None:
            raw[field] = value
    for flag, field in {
        "full_page": "fullPage",
        "dark_mode": "darkMode",
        "omit_background": "omitBackground",
        "block_ads": "blockAds",
        "hide_cookie_banners": "hideCookieBanners",
    }.items():
        if getattr(args, flag):
            raw[field] = True
    if args.width is not None or args.height is not None:
        raw["viewport"] = {
            "width": 1280 if args.width is None else args.width,
            "height": 720 if args.height is None else args.height,
        }
    if args.header:
        raw["headers"] = dict(_split(h, ":", "--header") for h in args.header)
    if args.cookie:
        raw["cookies"] = [
            {"name": n, "value": v} for n, v in (_split(c, "=", "--cookie") for c in args.cookie)
        ]
    if args.geolocation is not None:
        lat, lon = _split(args.geolocation, ",", "--geolocation")
        raw["geolocation"] = {"latitude": float(lat), "longitude": float(lon)}
    if (css := _text_or_file(args.css)) is not None:
        raw["customCSS"] = css
    if (js := _text_or_file(args.js)) is not None:
        raw["customJavaScript"] = js
    if args.pdf_format is not None or args.landscape:
        pdf: dict[str, Any] = {"landscape": bool(args.landscape)}
        if args.pdf_format is not None:
            pdf["format"] = args.pdf_format
        raw["pdf"] = pdf
    return CaptureOptions.model_validate(raw)


def build_policy(args: argparse.Namespace) -> ScreenshotPolicySpec:
    """The policy the capture runs under: --policy FILE or the defaults, plus --allow-cidr.

    On the command line the caller is the machine's own user: --js and --timeout are taken as
    permission (unlike the gateway, where the policy decides). A --policy file is never widened
    beyond --allow-cidr.
    """
    if args.policy:
        policies = load_policies([args.policy])
        if len(policies) != 1:
            raise ValueError(f"{args.policy} holds {len(policies)} policies; give exactly one")
        spec = policies[0].spec
    else:
        base = ScreenshotPolicySpec()
        features = base.features.model_copy(
            update={"allow_custom_java_script": args.js is not None}
        )
        limits = base.limits
        if args.timeout is not None and args.timeout > limits.timeout_seconds:
            limits = limits.model_copy(update={"timeout_seconds": args.timeout})
        spec = base.model_copy(update={"features": features, "limits": limits})
    if args.allow_cidr:
        raw = spec.to_wire()
        network = dict(raw["network"])  # type: ignore[call-overload]
        network["allowedCIDRs"] = list(network.get("allowedCIDRs", [])) + list(args.allow_cidr)
        raw["network"] = network
        spec = ScreenshotPolicySpec.model_validate(raw)
    return spec


def _split(text: str, sep: str, flag: str) -> tuple[str, str]:
    key, found, value = text.partition(sep)
    if not found or not key.strip():
        raise ValueError(f"{flag} expects KEY{sep}VALUE, got {text!r}")
    return key.strip(), value.strip()

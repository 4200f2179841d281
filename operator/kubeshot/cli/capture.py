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
    CaptureOptions,
    CaptureRequest,
    ExitCode,
    Format,
    PaperFormat,
    ScreenshotPolicySpec,
    WaitUntil,
    describe_validation_error,
    load_policy_file,
)
from kubeshot.api.capture import ColorScheme, MediaType, ReducedMotion, WaitForSelectorState
from kubeshot.cli._common import fail


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
    p.add_argument(
        "--wait-for-state",
        choices=[s.value for s in WaitForSelectorState],
        help="what --wait-for waits for (default visible), e.g. hidden for a spinner",
    )
    p.add_argument(
        "--click",
        action="append",
        type=lambda selector: {"selector": selector},
        metavar="SELECTOR",
        help="click this element before capture (repeatable, in order; fails when missing)",
    )
    p.add_argument(
        "--click-if-present",
        dest="click",
        action="append",
        type=lambda selector: {"selector": selector, "optional": True},
        metavar="SELECTOR",
        help="like --click, skipped when nothing matches (e.g. a consent button)",
    )
    p.add_argument(
        "--hide", action="append", metavar="SELECTOR", help="hide these elements (repeatable)"
    )
    p.add_argument("--clip", metavar="X,Y,W,H", help="capture only this rectangle of the viewport")
    p.add_argument(
        "--scroll-to-load",
        action="store_true",
        help="scroll through the page first, so lazy images load (--full-page, pdf)",
    )
    p.add_argument(
        "--best-attempt",
        action="store_true",
        help="on a timeout, capture what the page shows so far (the result is marked partial)",
    )
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
    p.add_argument(
        "--pdf-width", metavar="LENGTH", help="custom paper width, e.g. 8in (px, in, cm, mm)"
    )
    p.add_argument("--pdf-height", metavar="LENGTH", help="custom paper height (with --pdf-width)")
    p.add_argument(
        "--pdf-margin",
        metavar="LENGTHS",
        help="pdf margins as in CSS: 1cm (all), '1cm 2cm' (top/bottom, left/right), or 3 or 4 "
        "lengths (top, right, bottom, left); commas or spaces",
    )
    p.add_argument("--pdf-header", metavar="FILE", help="HTML header template (pageNumber, ...)")
    p.add_argument(
        "--pdf-footer",
        metavar="FILE",
        help="HTML footer template; e.g. Page <span class=pageNumber></span> of "
        "<span class=totalPages></span>",
    )
    p.add_argument(
        "--pdf-css-page-size", action="store_true", help="the page's CSS @page size wins"
    )
    p.add_argument(
        "--pdf-media", choices=[m.value for m in MediaType], help="CSS media (default print)"
    )
    p.add_argument("--pdf-pages", metavar="RANGES", help="pages to keep, e.g. '1-3, 5'")
    p.add_argument(
        "--device",
        metavar="NAME",
        help="emulate a device of Playwright's list, e.g. 'iPhone 13' (its viewport, scale, "
        "user agent, touch; flags given as well win)",
    )
    p.add_argument(
        "--mobile",
        action=argparse.BooleanOptionalAction,
        help="mobile emulation: the meta viewport tag is honoured",
    )
    p.add_argument(
        "--touch", action=argparse.BooleanOptionalAction, help="touch emulation (pointer: coarse)"
    )
    p.add_argument(
        "--reduced-motion",
        action="store_const",
        const=ReducedMotion.REDUCE.value,
        help="emulate prefers-reduced-motion: reduce",
    )
    p.add_argument("--color-scheme", choices=[c.value for c in ColorScheme])
    p.add_argument(
        "--media-type",
        choices=[m.value for m in MediaType],
        help="CSS media of images (default screen)",
    )
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="capture time limit")
    p.add_argument(
        "--fail-on-http-status",
        action="append",
        default=[],
        metavar="CODES",
        help="fail (exit 4, TargetHttpError) when the target's final HTTP status matches: "
        "codes or classes, comma-separated, e.g. 4xx,5xx or 404",
    )
    p.add_argument(
        "--allow-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="allow this private/special range (repeatable), e.g. 127.0.0.0/8",
    )
    p.add_argument(
        "--options",
        metavar="JSON_OR_@FILE",
        help="capture options as a JSON object (or @file) in the API's camelCase, e.g. "
        '\'{"clickSelectors": [{"selector": "#more"}]}\'; flags given as well win',
    )
    p.add_argument("--policy", metavar="FILE", help="ScreenshotPolicy YAML to capture under")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="log the egress guard's decisions")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines (stderr) as text (default) or JSON; else $KUBESHOT_LOG_FORMAT",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kubeshot import logs

    level = logging.INFO if args.verbose else logging.ERROR
    try:
        log_format = logs.log_format(args.log_format, "text")
    except ValueError as exc:
        return fail(ExitCode.INVALID_INPUT, str(exc))
    if log_format == "json":
        logs.setup("json", level)
    else:
        logging.basicConfig(level=level, format="kubeshot: %(name)s: %(message)s")
    try:
        options = build_options(args)
        policy = build_policy(args, options)
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
    import kubeshot_capture

    # SIGTERM cancels the capture like Ctrl-C does, so the browser is closed, never orphaned.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    outcome, data = await kubeshot_capture.run(CaptureRequest(options=options, policy=policy))
    if outcome.failure is not None:
        failure = outcome.failure
        if args.json:
            print(json.dumps({"error": failure.to_wire()}))
        return fail(failure.reason.exit_code, f"{failure.reason.value}: {failure.message}")
    write_atomically(args.output, data)
    if args.json:
        print(json.dumps(outcome.report().to_wire()))
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
    """CaptureOptions from the flags over `--options`; only flags that were given are passed on.

    `--options` may set any field of the model, so every option exists on the command line. A
    flag given as well wins: objects (viewport, pdf, headers, ...) merge field by field, any
    other value of the flag replaces the one in `--options`. The model refuses unknown fields.
    """
    base = _options_document(args.options)
    if args.url is not None and args.html is not None:
        raise ValueError("give exactly one of URL and --html FILE")
    if args.url is None and args.html is None and not {"url", "html"} & base.keys():
        raise ValueError("give exactly one of URL and --html FILE (or url or html in --options)")
    raw: dict[str, Any] = {}
    if args.format or "format" not in base:  # -o's suffix is a guess; --options' format wins
        raw["format"] = _format_from(args)
    if args.url is not None:
        raw["url"] = args.url
    elif args.html is not None:
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
        "wait_for_state": "waitForSelectorState",
        "click": "clickSelectors",
        "hide": "hideSelectors",
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
        "scroll_to_load": "scrollToLoad",
        "best_attempt": "bestAttempt",
    }.items():
        if getattr(args, flag):
            raw[field] = True
    viewport = {"width": args.width, "height": args.height}
    if viewport := {side: size for side, size in viewport.items() if size is not None}:
        raw["viewport"] = viewport
    if args.clip is not None:
        x, y, width, height = _numbers(args.clip, 4, "--clip X,Y,W,H")
        raw["clip"] = {"x": x, "y": y, "width": width, "height": height}
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
    if args.fail_on_http_status:
        raw["failOnHttpStatus"] = [
            rule.strip() for text in args.fail_on_http_status for rule in text.split(",")
        ]
    for flag, field in _EMULATION_FLAGS.items():
        if (value := getattr(args, flag)) is not None:
            raw[field] = value
    if pdf := _pdf_layout(args):
        raw["pdf"] = pdf
    return CaptureOptions.model_validate(_merge(base, raw))


_EMULATION_FLAGS = {
    "device": "device",
    "mobile": "isMobile",
    "touch": "hasTouch",
    "reduced_motion": "reducedMotion",
    "color_scheme": "colorScheme",
    "media_type": "mediaType",
}


def _pdf_layout(args: argparse.Namespace) -> dict[str, Any]:
    """The `pdf` object of the --pdf-* flags and --landscape that were given."""
    pdf: dict[str, Any] = {}
    for flag, field in {
        "pdf_format": "format",
        "pdf_width": "width",
        "pdf_height": "height",
        "pdf_media": "emulateMedia",
        "pdf_pages": "pageRanges",
    }.items():
        if (value := getattr(args, flag)) is not None:
            pdf[field] = value
    if args.landscape:
        pdf["landscape"] = True
    if args.pdf_css_page_size:
        pdf["preferCSSPageSize"] = True
    if args.pdf_margin is not None:
        pdf["margin"] = css_box(args.pdf_margin)
    for flag, field in {"pdf_header": "headerTemplate", "pdf_footer": "footerTemplate"}.items():
        if (path := getattr(args, flag)) is not None:
            pdf[field] = Path(path).read_text(encoding="utf-8")
    return pdf


def css_box(text: str) -> dict[str, str]:
    """CSS's margin shorthand: 1 to 4 lengths (top, right, bottom, left; as in CSS, missing
    sides repeat the opposite one)."""
    values = text.replace(",", " ").split()
    if not 1 <= len(values) <= 4:
        raise ValueError(f"--pdf-margin expects 1 to 4 lengths, got {text!r}")
    top = values[0]
    right = values[1] if len(values) > 1 else top
    bottom = values[2] if len(values) > 2 else top
    left = values[3] if len(values) > 3 else right
    return {"top": top, "right": right, "bottom": bottom, "left": left}


def _options_document(text: str | None) -> dict[str, Any]:
    """The `--options` object, its fields spelled as on the wire (camelCase), so that a flag
    and the same field in `--options` meet under one name."""
    if text is None:
        return {}
    try:
        document = json.loads(_text_or_file(text) or "")
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError("--options must be a JSON object of capture options")
    fields = CaptureOptions.model_fields
    return {
        (fields[key].alias or key) if key in fields else key: value
        for key, value in document.items()
    }


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: objects merge key by key, anything else in `over` wins."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _numbers(text: str, count: int, flag: str) -> list[int]:
    parts = text.split(",")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if len(numbers) != count:
        raise ValueError(f"{flag} expects {count} comma-separated integers, got {text!r}")
    return numbers


def build_policy(args: argparse.Namespace, options: CaptureOptions) -> ScreenshotPolicySpec:
    """The policy the capture runs under: --policy FILE or the defaults, plus --allow-cidr.

    On the command line the caller is the machine's own user: custom JavaScript and a time
    limit (--js, --timeout, or in --options) are taken as permission (unlike the gateway, where
    the policy decides). A --policy file is never widened beyond --allow-cidr.
    """
    if args.policy:
        policies = load_policy_file(Path(args.policy))
        if len(policies) != 1:
            raise ValueError(f"{args.policy} holds {len(policies)} policies; give exactly one")
        spec = policies[0].spec
    else:
        base = ScreenshotPolicySpec()
        features = base.features.model_copy(
            update={"allow_custom_java_script": options.custom_java_script is not None}
        )
        limits = base.limits
        timeout = options.timeout_seconds
        if timeout is not None and timeout > limits.timeout_seconds:
            limits = limits.model_copy(update={"timeout_seconds": timeout})
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

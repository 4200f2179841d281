"""What a capture's options ask of the browser: context, page media and print settings.

Pure builders of Playwright keyword arguments. A `device` was already resolved by the model
(kubeshot.api.capture) into viewport, deviceScaleFactor, userAgent, isMobile and hasTouch, so
admission saw the same values this module hands to Chromium; only its `screen` is looked up here.
"""

from __future__ import annotations

from typing import Any

from kubeshot.api import CaptureOptions, Format, PdfOptions
from kubeshot.api.capture import ColorScheme, MediaType, PaperFormat
from kubeshot.api.devices import find_device

# Context options Chromium takes only when a context is created (a spare context, opened ahead
# of time with the defaults, cannot take them later).
_CREATION_ONLY = ("user_agent", "locale", "timezone", "is_mobile", "has_touch")
# What a spare context was opened with.
SPARE_COLOR_SCHEME = ColorScheme.LIGHT


def needs_own_context(options: CaptureOptions) -> bool:
    """Whether the capture needs a context created for it instead of a spare one."""
    if any(getattr(options, field) is not None for field in _CREATION_ONLY):
        return True
    return options.device is not None or options.device_scale_factor != 1.0


def color_scheme(options: CaptureOptions) -> ColorScheme:
    """prefers-color-scheme: colorScheme, else dark for darkMode, else light."""
    if options.color_scheme is not None:
        return options.color_scheme
    return ColorScheme.DARK if options.dark_mode else ColorScheme.LIGHT


def media_type(options: CaptureOptions) -> MediaType | None:
    """The CSS media to emulate, None for the browser's own (screen, and print for a PDF)."""
    if options.format is Format.PDF:
        return options.pdf.emulate_media if options.pdf is not None else None
    return options.media_type


def context_options(options: CaptureOptions) -> dict[str, Any]:
    """Browser.new_context() arguments for a context of the capture's own."""
    viewport = {"width": options.viewport.width, "height": options.viewport.height}
    found: dict[str, Any] = {
        "viewport": viewport,
        "device_scale_factor": options.device_scale_factor,
        "is_mobile": bool(options.is_mobile),
        "has_touch": bool(options.has_touch),
        "user_agent": options.user_agent,
        "locale": options.locale,
        "timezone_id": options.timezone,
        "color_scheme": color_scheme(options).value,
    }
    if options.reduced_motion is not None:
        found["reduced_motion"] = options.reduced_motion.value
    if options.device is not None:
        preset = find_device(options.device)
        # window.screen as the device has it, unless the caller gave a viewport of their own.
        if preset.screen is not None and preset.viewport == (viewport["width"], viewport["height"]):
            found["screen"] = dict(zip(("width", "height"), preset.screen, strict=True))
    return found


def page_media(options: CaptureOptions) -> dict[str, str]:
    """Page.emulate_media() arguments that differ from a spare context's defaults; empty when
    there is nothing to emulate. Applied to every capture's page, spare or not, before it loads.
    """
    found: dict[str, str] = {}
    scheme = color_scheme(options)
    if scheme is not SPARE_COLOR_SCHEME:
        found["color_scheme"] = scheme.value
    if options.reduced_motion is not None:
        found["reduced_motion"] = options.reduced_motion.value
    media = media_type(options)
    if media is not None:
        found["media"] = media.value
    return found


def pdf_options(pdf: PdfOptions) -> dict[str, Any]:
    """Page.pdf() arguments. A header or footer template turns headers and footers on; the
    other one is then blank (Chromium would print its date and title there)."""
    found: dict[str, Any] = {
        "landscape": pdf.landscape,
        "print_background": pdf.print_background,
        "scale": pdf.scale,
        "margin": pdf.margins(),
        "prefer_css_page_size": pdf.prefer_css_page_size,
    }
    if pdf.width is not None and pdf.height is not None:
        found["width"], found["height"] = pdf.width, pdf.height
    else:
        found["format"] = (pdf.format or PaperFormat.A4).value
    if pdf.page_ranges:
        found["page_ranges"] = pdf.page_ranges
    if pdf.header_template is not None or pdf.footer_template is not None:
        found["display_header_footer"] = True
        found["header_template"] = pdf.header_template or "<span></span>"
        found["footer_template"] = pdf.footer_template or "<span></span>"
    return found


def pdf_failure(pdf: PdfOptions, message: str) -> str | None:
    """The caller's mistake behind Chromium's printing error, in words; None when it is not one.

    Only the rendered document tells whether the pages asked for exist; and a template that
    loads a stylesheet (`<link>`, `@import`) fails printing, as templates have no network.
    """
    detail = message.strip().splitlines()[0] if message.strip() else message
    if "Page range" in message or "invalid print parameters" in message:
        return f"pdf: {detail}"
    templates = pdf.header_template is not None or pdf.footer_template is not None
    if "Printing failed" in message and templates:
        return (
            "pdf: printing failed; a header or footer template that loads a stylesheet does "
            "this (templates have no network access: inline their styles)"
        )
    return None

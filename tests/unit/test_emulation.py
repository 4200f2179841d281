"""Devices, emulation and PDF layout: how the model resolves and refuses them, what admission
makes of a device, and the exact browser arguments the engine's builders produce."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kubeshot.api import CaptureOptions, ScreenshotPolicySpec
from kubeshot.api.admission import pixel_budget_fields, violations
from kubeshot.api.capture import MAX_PDF_TEMPLATE_BYTES
from kubeshot.api.devices import devices, find_device
from kubeshot_capture import emulation

URL = "https://example.com/"
IPHONE_13_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 15_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/27.2 Mobile/15E148 Safari/604.1"
)


def options(**raw: Any) -> CaptureOptions:
    return CaptureOptions.model_validate({"url": URL, **raw})


def refused(**raw: Any) -> str:
    with pytest.raises(ValidationError) as info:
        options(**raw)
    return str(info.value)


# -- devices ---------------------------------------------------------------------------------


def test_the_device_table_is_playwrights_and_fits_the_model() -> None:
    table = devices()
    assert len(table) > 100 and "iPhone 13" in table and "Desktop Chrome" in table
    for preset in table.values():
        # Every preset resolves into values the model accepts, for every format.
        for fmt in ("png", "pdf", "html"):
            options(device=preset.name, format=fmt)


def test_a_device_fills_what_the_caller_left_out() -> None:
    resolved = options(device="iPhone 13")
    assert (resolved.viewport.width, resolved.viewport.height) == (390, 664)
    assert resolved.device_scale_factor == 3.0
    assert resolved.user_agent == IPHONE_13_UA
    assert resolved.is_mobile is True and resolved.has_touch is True


def test_explicit_values_win_over_the_device() -> None:
    resolved = options(
        device="iPhone 13",
        viewport={"width": 500, "height": 400},
        deviceScaleFactor=1,
        userAgent="kubeshot-test",
        isMobile=False,
        has_touch=False,  # by Python name too
    )
    assert (resolved.viewport.width, resolved.viewport.height) == (500, 400)
    assert resolved.device_scale_factor == 1.0 and resolved.user_agent == "kubeshot-test"
    assert resolved.is_mobile is False and resolved.has_touch is False


def test_a_device_scales_images_only() -> None:
    assert options(device="iPhone 13", format="pdf").device_scale_factor == 1.0
    assert options(device="iPhone 13", format="html").device_scale_factor == 1.0
    assert options(device="iPhone 13", format="webp").device_scale_factor == 3.0


def test_the_resolved_options_round_trip_unchanged() -> None:
    resolved = options(device="Pixel 7", viewport={"width": 400, "height": 800})
    assert CaptureOptions.model_validate(resolved.to_wire()) == resolved
    assert resolved.to_wire()["device"] == "Pixel 7"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("iphone 13", "did you mean 'iPhone 13'"),
        ("Nokia 3310", "unknown device 'Nokia 3310'"),
        ("x" * 65, "at most 64 characters"),
        ("", "at least 1 character"),
    ],
)
def test_unknown_devices_are_refused_by_name(name: str, message: str) -> None:
    text = refused(device=name)
    assert message in text and "device" in text


def test_the_densest_device_is_accepted() -> None:
    assert find_device("Galaxy S9+").device_scale_factor == 4.5
    assert options(device="Galaxy S9+").device_scale_factor == 4.5
    assert "less than or equal to 4.5" in refused(deviceScaleFactor=4.6)


# -- admission weighs a device like explicit values --------------------------------------------


def small_policy(width: int, height: int) -> ScreenshotPolicySpec:
    return ScreenshotPolicySpec.model_validate(
        {"limits": {"maxViewport": {"width": width, "height": height}}}
    )


def test_a_devices_viewport_counts_against_the_policy() -> None:
    found = violations(options(device="iPhone 13"), small_policy(300, 2000))
    assert found == ["viewport width 390 (device 'iPhone 13') > 300"]
    assert violations(options(device="iPhone 13"), small_policy(390, 664)) == []
    # The same values by hand are refused alike.
    by_hand = options(viewport={"width": 390, "height": 664}, deviceScaleFactor=3)
    assert violations(by_hand, small_policy(300, 2000)) == ["viewport width 390 > 300"]


def test_a_devices_scale_counts_against_the_pixel_budget() -> None:
    policy = ScreenshotPolicySpec()
    tablet = options(device="iPad Pro 11", fullPage=True)
    by_hand = options(viewport={"width": 834, "height": 1194}, deviceScaleFactor=2, fullPage=True)
    assert pixel_budget_fields(by_hand, policy) is not None
    found = pixel_budget_fields(tablet, policy)
    assert found is not None
    fields, message = found
    assert fields == ["viewport", "deviceScaleFactor", "fullPage", "device"]
    assert "device 'iPad Pro 11'" in message and "at deviceScaleFactor 2" in message
    assert pixel_budget_fields(options(device="iPad Pro 11"), policy) is None


# -- emulation options and their conflicts ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"darkMode": True, "colorScheme": "light"}, "darkMode true means colorScheme dark"),
        ({"darkMode": True, "colorScheme": "no-preference"}, "darkMode true means colorScheme"),
        ({"colorScheme": "sepia"}, "colorScheme"),
        ({"reducedMotion": "less"}, "reducedMotion"),
        ({"mediaType": "tv"}, "mediaType"),
        ({"format": "pdf", "mediaType": "print"}, "for pdf use pdf.emulateMedia"),
        ({"isMobile": "sometimes"}, "isMobile"),
    ],
)
def test_emulation_conflicts_are_refused(raw: dict[str, Any], message: str) -> None:
    assert message in refused(**raw)


def test_dark_mode_and_color_scheme() -> None:
    assert emulation.color_scheme(options()).value == "light"
    assert emulation.color_scheme(options(darkMode=True)).value == "dark"
    assert emulation.color_scheme(options(darkMode=True, colorScheme="dark")).value == "dark"
    assert emulation.color_scheme(options(colorScheme="no-preference")).value == "no-preference"


def test_context_options_for_a_device() -> None:
    assert emulation.context_options(options(device="iPhone 13", locale="de-DE")) == {
        "viewport": {"width": 390, "height": 664},
        "screen": {"width": 390, "height": 844},
        "device_scale_factor": 3.0,
        "is_mobile": True,
        "has_touch": True,
        "user_agent": IPHONE_13_UA,
        "locale": "de-DE",
        "timezone_id": None,
        "color_scheme": "light",
    }
    # A viewport of the caller's own keeps window.screen at the viewport's size.
    custom = emulation.context_options(
        options(device="iPhone 13", viewport={"width": 600, "height": 600})
    )
    assert "screen" not in custom and custom["viewport"] == {"width": 600, "height": 600}


def test_context_options_without_a_device() -> None:
    assert emulation.context_options(options(reducedMotion="reduce", colorScheme="dark")) == {
        "viewport": {"width": 1280, "height": 720},
        "device_scale_factor": 1.0,
        "is_mobile": False,
        "has_touch": False,
        "user_agent": None,
        "locale": None,
        "timezone_id": None,
        "color_scheme": "dark",
        "reduced_motion": "reduce",
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, {}),
        ({"darkMode": True}, {"color_scheme": "dark"}),
        ({"colorScheme": "no-preference"}, {"color_scheme": "no-preference"}),
        ({"reducedMotion": "reduce"}, {"reduced_motion": "reduce"}),
        ({"mediaType": "print"}, {"media": "print"}),
        ({"format": "html", "mediaType": "screen"}, {"media": "screen"}),
        ({"format": "pdf"}, {}),
        ({"format": "pdf", "pdf": {"emulateMedia": "screen"}}, {"media": "screen"}),
    ],
)
def test_page_media(raw: dict[str, Any], expected: dict[str, str]) -> None:
    assert emulation.page_media(options(**raw)) == expected


@pytest.mark.parametrize(
    ("raw", "own"),
    [
        ({}, False),
        ({"colorScheme": "dark", "reducedMotion": "reduce", "mediaType": "print"}, False),
        ({"device": "Desktop Chrome"}, True),
        ({"isMobile": False}, True),
        ({"hasTouch": True}, True),
        ({"deviceScaleFactor": 2}, True),
        ({"userAgent": "x"}, True),
        ({"timezone": "Europe/Berlin"}, True),
    ],
)
def test_which_captures_need_a_context_of_their_own(raw: dict[str, Any], own: bool) -> None:
    assert emulation.needs_own_context(options(**raw)) is own


# -- PDF layout --------------------------------------------------------------------------------


def pdf(**fields: Any) -> CaptureOptions:
    return options(format="pdf", pdf=fields)


def test_pdf_defaults_are_a4_without_margins() -> None:
    layout = pdf().pdf
    assert layout is not None
    assert emulation.pdf_options(layout) == {
        "format": "A4",
        "landscape": False,
        "print_background": True,
        "scale": 1.0,
        "margin": {"top": "0px", "right": "0px", "bottom": "0px", "left": "0px"},
        "prefer_css_page_size": False,
    }


def test_pdf_layout_options_reach_chromium() -> None:
    layout = pdf(
        width="5.5in",
        height="210mm",
        margin={"top": "2cm", "left": "36px"},
        preferCSSPageSize=True,
        footerTemplate="<span class=pageNumber></span>",
        pageRanges="1-2, 4",
        emulateMedia="screen",
    ).pdf
    assert layout is not None
    assert emulation.pdf_options(layout) == {
        "width": "5.5in",
        "height": "210mm",
        "landscape": False,
        "print_background": True,
        "scale": 1.0,
        "margin": {"top": "2cm", "right": "0px", "bottom": "1cm", "left": "36px"},
        "prefer_css_page_size": True,
        "page_ranges": "1-2, 4",
        "display_header_footer": True,
        "header_template": "<span></span>",
        "footer_template": "<span class=pageNumber></span>",
    }
    assert layout.to_wire()["preferCSSPageSize"] is True


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": "5in"}, "pdf.width and pdf.height go together"),
        ({"format": "A4", "width": "5in", "height": "5in"}, "give a paper format or a custom"),
        ({"width": "201in", "height": "5in"}, "within 200.0 in"),
        ({"width": "0in", "height": "5in"}, "within 200.0 in"),
        ({"width": "5em", "height": "5in"}, "pdf.width"),
        ({"margin": {"top": "1e3px"}}, "pdf.margin.top"),
        ({"margin": {"left": "-1cm"}}, "pdf.margin.left"),
        ({"margin": {"left": "calc(1px)"}}, "pdf.margin.left"),
        ({"margin": {"inside": "1cm"}}, "Extra inputs are not permitted"),
        ({"margin": {"top": "6in", "bottom": "6in"}}, "top + bottom leave no room"),
        ({"landscape": True, "margin": {"top": "4in", "bottom": "4.3in"}}, "leave no room"),
        ({"margin": {"left": "106mm", "right": "105mm"}}, "left + right leave no room"),
        ({"pageRanges": "3-1"}, "must count up from page 1"),
        ({"pageRanges": "0"}, "must count up from page 1"),
        ({"pageRanges": "1;2"}, "pdf.pageRanges"),
        ({"headerTemplate": "é" * (MAX_PDF_TEMPLATE_BYTES // 2 + 1)}, "longer than 16384 bytes"),
        ({"footerTemplate": "x" * (MAX_PDF_TEMPLATE_BYTES + 1)}, "pdf.footerTemplate"),
        ({"emulateMedia": "tv"}, "pdf.emulateMedia"),
    ],
)
def test_pdf_layout_is_validated(fields: dict[str, Any], message: str) -> None:
    assert message in refused(format="pdf", pdf=fields)


def test_a_template_gets_a_margin_to_show_in_unless_one_is_given() -> None:
    header = pdf(headerTemplate="<b>h</b>").pdf
    assert header is not None and header.margins()["top"] == "1cm"
    given = pdf(headerTemplate="<b>h</b>", margin={"top": "0px"}).pdf
    assert given is not None and given.margins()["top"] == "0px"


def test_a_viewport_side_left_out_is_the_devices() -> None:
    resolved = options(device="iPhone 13", viewport={"width": 500})
    assert (resolved.viewport.width, resolved.viewport.height) == (500, 664)


@pytest.mark.parametrize(
    ("message", "templates", "expected"),
    [
        ("Page.pdf: Protocol error (Page.printToPDF): Page range exceeds page count", {}, "pdf: "),
        ("Protocol error: invalid print parameters: content area is empty", {}, "pdf: "),
        ("Page.pdf: Protocol error (Page.printToPDF): Printing failed", {}, None),
        (
            "Page.pdf: Protocol error (Page.printToPDF): Printing failed",
            {"footerTemplate": "<link rel=stylesheet href=x>"},
            "inline their styles",
        ),
        ("Target crashed", {"footerTemplate": "x"}, None),
    ],
)
def test_which_printing_errors_are_the_callers(
    message: str, templates: dict[str, str], expected: str | None
) -> None:
    layout = pdf(**templates).pdf
    assert layout is not None
    why = emulation.pdf_failure(layout, message)
    assert why == expected if expected is None else (why is not None and expected in why)


# -- the command line ---------------------------------------------------------------------------


def cli(*flags: str) -> CaptureOptions:
    from kubeshot.cli import build_parser
    from kubeshot.cli.capture import build_options

    return build_options(build_parser().parse_args(["capture", URL, *flags]))


def test_emulation_flags() -> None:
    parsed = cli(
        "-o", "x.png", "--device", "iPhone 13", "--no-mobile", "--reduced-motion",
        "--color-scheme", "dark", "--media-type", "print", "--width", "500",
    )  # fmt: skip
    assert parsed.device == "iPhone 13" and parsed.is_mobile is False
    assert parsed.has_touch is True and parsed.device_scale_factor == 3.0
    assert (parsed.viewport.width, parsed.viewport.height) == (500, 664)
    assert (parsed.reduced_motion, parsed.color_scheme, parsed.media_type) == (
        "reduce",
        "dark",
        "print",
    )
    assert cli("-o", "x.png", "--touch").has_touch is True


def test_pdf_layout_flags(tmp_path: Path) -> None:
    footer = tmp_path / "footer.html"
    footer.write_text("<span class=pageNumber></span>", encoding="utf-8")
    parsed = cli(
        "-o", "x.pdf", "--pdf-width", "5in", "--pdf-height", "80mm", "--pdf-margin", "1cm 2cm",
        "--pdf-footer", str(footer), "--pdf-css-page-size", "--pdf-media", "screen",
        "--pdf-pages", "1-2", "--landscape",
    )  # fmt: skip
    assert parsed.pdf is not None
    assert parsed.pdf.to_wire() == {
        "width": "5in",
        "height": "80mm",
        "landscape": True,
        "printBackground": True,
        "scale": 1.0,
        "margin": {"top": "1cm", "right": "2cm", "bottom": "1cm", "left": "2cm"},
        "preferCSSPageSize": True,
        "footerTemplate": "<span class=pageNumber></span>",
        "emulateMedia": "screen",
        "pageRanges": "1-2",
    }


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("1cm", ("1cm", "1cm", "1cm", "1cm")),
        ("1cm,2cm", ("1cm", "2cm", "1cm", "2cm")),
        ("1cm 2cm 3cm", ("1cm", "2cm", "3cm", "2cm")),
        ("1cm, 2cm, 3cm, 4cm", ("1cm", "2cm", "3cm", "4cm")),
    ],
)
def test_margin_shorthand(text: str, box: tuple[str, ...]) -> None:
    from kubeshot.cli.capture import css_box

    assert css_box(text) == dict(zip(("top", "right", "bottom", "left"), box, strict=True))
    with pytest.raises(ValueError, match="1 to 4 lengths"):
        css_box("1cm 2cm 3cm 4cm 5cm")


def test_clip_is_checked_against_the_devices_viewport() -> None:
    clip = {"x": 0, "y": 0, "width": 800, "height": 1000}
    assert options(device="iPad Pro 11", clip=clip).clip is not None  # 834x1194
    assert "clip must lie within the viewport" in refused(device="iPhone 13", clip=clip)

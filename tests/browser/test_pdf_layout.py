"""PDF layout through the real engine: each test reads the PDF back (page boxes in points, page
count, the text and where it sits)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from pypdf import PageObject, PdfReader

from kubeshot.api import CaptureError, FailureReason, ScreenshotPolicySpec
from tests.browser.conftest import TestSite
from tests.browser.test_engine import shot

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Three sections, one a page (A4 and Letter alike), so page numbers and ranges are known.
LONG = """<!doctype html><html><head><title>Long report</title><style>
    html, body { margin: 0; } section { height: 200px; break-after: page; font-size: 20px; }
    </style></head><body><section>Section one</section><section>Section two</section>
    <section>Section three</section></body></html>"""
MARKER = """<!doctype html><html><body style="margin:0">
    <p style="margin:0;font-size:20px">Marker text</p></body></html>"""
MEDIA = """<!doctype html><html><head><style>
    @media print { .screen { display: none } } @media screen { .print { display: none } }
    </style></head><body><p class="print">Printed media</p><p class="screen">Screen media</p>
    </body></html>"""
FOOTER = (
    '<div style="font-size:10px;width:100%;text-align:center">Page <span class="pageNumber">'
    '</span> of <span class="totalPages"></span></div>'
)


async def pdf(engine: Any, policy: ScreenshotPolicySpec, html: str, **layout: Any) -> PdfReader:
    data, report = await shot(engine, policy, html=html, format="pdf", pdf=layout)
    reader = PdfReader(io.BytesIO(data))
    assert report.pages == len(reader.pages)
    return reader


def size(page: PageObject) -> tuple[float, float]:
    return float(page.mediabox.width), float(page.mediabox.height)


def near(a: tuple[float, ...], b: tuple[float, ...], points: float = 1.5) -> bool:
    return all(abs(x - y) <= points for x, y in zip(a, b, strict=True))


def text_origin(page: PageObject, needle: str) -> tuple[float, float]:
    """Where `needle` starts on the page, in points from the bottom-left corner."""
    found: list[tuple[float, float]] = []

    def visit(text: str, cm: list[float], tm: list[float], *_: object) -> None:
        if needle in text:
            found.append((cm[4] + tm[4] * cm[0], cm[5] + tm[5] * cm[3]))

    page.extract_text(visitor_text=visit)
    assert found, f"{needle!r} not on the page: {page.extract_text()!r}"
    return found[0]


async def test_paper_sizes_in_points(engine: Any, local_policy: Any) -> None:
    a4 = await pdf(engine, local_policy, MARKER)
    assert near(size(a4.pages[0]), (595.9, 842.9))
    letter = await pdf(engine, local_policy, MARKER, format="Letter")
    assert near(size(letter.pages[0]), (612, 792))
    landscape = await pdf(engine, local_policy, MARKER, landscape=True)
    assert near(size(landscape.pages[0]), (842.9, 595.9))
    custom = await pdf(engine, local_policy, MARKER, width="5in", height="80mm")
    assert near(size(custom.pages[0]), (360, 226.8))
    pixels = await pdf(engine, local_policy, MARKER, width="400px", height="600px")
    assert near(size(pixels.pages[0]), (300, 450))


async def test_prefer_css_page_size(engine: Any, local_policy: Any) -> None:
    sized = "<style>@page { size: 4in 6in }</style>" + MARKER
    ignored = await pdf(engine, local_policy, sized)
    assert near(size(ignored.pages[0]), (595.9, 842.9))
    preferred = await pdf(engine, local_policy, sized, preferCSSPageSize=True)
    assert near(size(preferred.pages[0]), (288, 432))


async def test_page_count_and_page_ranges(engine: Any, local_policy: Any) -> None:
    whole = await pdf(engine, local_policy, LONG)
    assert len(whole.pages) == 3
    assert "Section three" in whole.pages[2].extract_text()
    ranged = await pdf(engine, local_policy, LONG, pageRanges="2-3")
    assert len(ranged.pages) == 2
    assert "Section two" in ranged.pages[0].extract_text()
    picked = await pdf(engine, local_policy, LONG, pageRanges="1, 3")
    assert [p.extract_text().strip() for p in picked.pages] == ["Section one", "Section three"]


async def test_a_page_range_past_the_end_is_the_callers_error(
    engine: Any, local_policy: Any
) -> None:
    with pytest.raises(CaptureError) as info:
        await pdf(engine, local_policy, LONG, pageRanges="4-5")
    assert info.value.reason is FailureReason.INVALID_SPEC
    assert "Page range exceeds page count" in info.value.message


async def test_footer_numbers_the_pages(engine: Any, local_policy: Any) -> None:
    reader = await pdf(
        engine,
        local_policy,
        LONG,
        footerTemplate=FOOTER,
        headerTemplate='<div style="font-size:10px">Title: <span class="title"></span></div>',
    )
    texts = [page.extract_text() for page in reader.pages]
    assert len(texts) == 3
    for number, text in enumerate(texts, start=1):
        assert f"Page {number} of 3" in text, text
        assert "Title: Long report" in text, text
    # The footer sits in the bottom margin (1cm by default), below the body's text.
    page = reader.pages[0]
    assert text_origin(page, "Page")[1] < 28.4  # the visitor sees "Page", "1", …
    assert text_origin(page, "Section one")[1] > 700


async def test_only_a_footer_leaves_the_header_blank(engine: Any, local_policy: Any) -> None:
    reader = await pdf(engine, local_policy, LONG, footerTemplate=FOOTER)
    text = reader.pages[0].extract_text()
    # Without a blank header Chromium prints its own: the date and the document's title.
    assert "Long report" not in text and "Page 1 of 3" in text


async def test_margins_move_the_text(engine: Any, local_policy: Any) -> None:
    none = await pdf(engine, local_policy, MARKER)
    x0, y0 = text_origin(none.pages[0], "Marker text")
    moved = await pdf(engine, local_policy, MARKER, margin={"left": "2in", "top": "25.4mm"})
    x1, y1 = text_origin(moved.pages[0], "Marker text")
    assert near((x1 - x0, y0 - y1), (144, 72))
    assert near(size(moved.pages[0]), size(none.pages[0]))  # the page box stays


async def test_emulate_media_screen_or_print(engine: Any, local_policy: Any) -> None:
    printed = (await pdf(engine, local_policy, MEDIA)).pages[0].extract_text()
    assert "Printed media" in printed and "Screen media" not in printed
    screen = await pdf(engine, local_policy, MEDIA, emulateMedia="screen")
    text = screen.pages[0].extract_text()
    assert "Screen media" in text and "Printed media" not in text


async def test_templates_cannot_fetch(engine: Any, local_policy: Any, site: TestSite) -> None:
    """Chromium renders header and footer templates without network access: nothing they name
    reaches the network (the test site would see it: the policy opens it to the page)."""
    template = (
        f'<div style="font-size:10px">Quiet footer<img src="{site.url("/template/img.png")}">'
        f'<span style="background:url({site.url("/template/bg.png")})">.</span>'
        f'<iframe src="{site.url("/template/frame")}"></iframe>'
        f'<script>fetch("{site.url("/template/fetch")}")</script></div>'
    )
    page = f'<img src="{site.url("/page-image.png")}">' + MARKER
    reader = await pdf(engine, local_policy, page, footerTemplate=template)
    assert "Quiet footer" in reader.pages[0].extract_text()
    assert "/page-image.png" in site.requests  # the page itself may fetch
    assert not [path for path in site.requests if path.startswith("/template/")]


@pytest.mark.parametrize(
    "loads",
    [
        '<link rel="stylesheet" href="{}">',
        "<style>@import url({});</style>",
    ],
)
async def test_a_template_loading_a_stylesheet_fails_clearly(
    engine: Any, local_policy: Any, site: TestSite, loads: str
) -> None:
    template = '<div style="font-size:10px">' + loads.format(site.url("/template/s.css")) + "</div>"
    with pytest.raises(CaptureError) as info:
        await pdf(engine, local_policy, MARKER, headerTemplate=template)
    assert info.value.reason is FailureReason.INVALID_SPEC
    assert "inline their styles" in info.value.message
    assert "/template/s.css" not in site.requests

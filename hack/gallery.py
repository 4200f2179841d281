#!/usr/bin/env python3
"""`make gallery`: capture a set of local pages into build/gallery/ with one index.html of
thumbnails, so that a reviewer looks at what kubeshot makes instead of reading about it.

The pages are served by this script on 127.0.0.9 under made-up names (and under two names the
filter lists know as an ad and a tracker host); the capture engine's egress guard resolves those
names to 127.0.0.9, so nothing leaves the machine. Options the installed kubeshot lacks (say
`scrollToLoad` before it exists) are left out, and the index says so.

    .venv/bin/python hack/gallery.py [--out build/gallery]
"""

# CJK punctuation and the multiplication sign are meant: the gallery shows them.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import asyncio
import html
import io
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

# tests/support.py: the page server the browser tests use too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image
from pypdf import PdfReader

from kubeshot.api import CaptureError, CaptureOptions, PdfOptions, ScreenshotPolicySpec
from kubeshot_capture.engine import CaptureEngine
from kubeshot_capture.guard import EgressGuard, IPAddress
from tests.support import HostSite, host_site

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "127.0.0.9"
SITE = "gallery.kubeshot.test"
AD = "ib.adnxs.com"
TRACKER = "b.scorecardresearch.com"
NAMES = {SITE, AD, TRACKER}

STYLE = "body{margin:0;font:18px/1.5 sans-serif;color:#222;background:#fff}main{padding:24px}"

CJK_PAGE = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><style>{STYLE}
  h1{{font-size:40px;margin:0 0 12px}} .big{{font-size:64px}}</style></head><body><main>
  <h1>Fonts: 中文 · 日本語 · 한국어 · emoji</h1>
  <p class="big">你好，世界 こんにちは 안녕하세요</p>
  <p class="big">\U0001f600 \U0001f389 \U0001f680 \U0001f1ef\U0001f1f5 \u2764\ufe0f
    \U0001f44d\U0001f3fd</p>
  <p>简体中文：敏捷的棕色狐狸跳过了懒狗。繁體中文：敏捷的棕色狐狸跳過了懶狗。</p>
  <p>日本語：いろはにほへと ちりぬるを わかよたれそ つねならむ。カタカナ、漢字。</p>
  <p>한국어: 다람쥐 헌 쳇바퀴에 타고파. Latin: The quick brown fox jumps over the lazy dog.</p>
  </main></body></html>"""

LAZY_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><style>{STYLE}
  img{{display:block;width:600px;height:300px;margin:24px 0;background:#eee}}</style></head>
  <body><main><h1>Lazy images</h1><p>Below the fold: native loading=lazy, then images a
  script loads when they scroll into view (an IntersectionObserver, as most sites do).</p>
  <div style="height:900px"></div>
  {"".join(f'<img loading="lazy" src="/img/{i}.png" alt="native {i}">' for i in range(3))}
  {"".join(f'<img class="js" data-src="/img/{i}.png" alt="scripted {i}">' for i in range(3, 6))}
  <script>
  const seen = new IntersectionObserver(entries => entries.forEach(e => {{
    if (e.isIntersecting) {{ e.target.src = e.target.dataset.src; seen.unobserve(e.target); }}
  }}));
  document.querySelectorAll('img.js').forEach(img => seen.observe(img));
  </script></main></body></html>"""

NEWS_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><style>{STYLE}
  .ad{{width:300px;height:120px;display:block}}
  #onetrust-banner-sdk{{position:fixed;left:0;right:0;bottom:0;padding:24px;background:#1f2937;
    color:#fff;box-shadow:0 -4px 16px #0006}}
  #onetrust-banner-sdk button{{font-size:18px;margin-right:12px;padding:8px 16px}}</style>
  </head><body><main><h1>Daily News</h1>
  <div class="ad-slot"><img class="ad" src="http://{AD}:PORT/ad.png" alt="third-party ad"></div>
  <p>A third-party ad above (ib.adnxs.com), a tracker script (b.scorecardresearch.com) that
  paints a red bar, and the site's own image from its /ads/ path below, which is no ad.</p>
  <img class="ad" src="/ads/house.png" alt="first-party /ads/ image">
  <p>{"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 12}</p>
  <script src="http://{TRACKER}:PORT/beacon.js"></script>
  <div id="onetrust-consent-sdk"><div id="onetrust-banner-sdk" role="dialog">
    <p>We and our 842 partners use cookies to personalise ads.</p>
    <button id="onetrust-accept-btn-handler">Accept All Cookies</button>
    <button id="onetrust-reject-all-handler"
      onclick="document.getElementById('onetrust-consent-sdk').remove()">Reject All</button>
  </div></div></main></body></html>"""

LONG_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><style>{STYLE}
  section{{height:700px;display:flex;align-items:center;justify-content:center;font-size:48px;
    color:#fff}}</style></head><body>
  {
    "".join(
        f'<section style="background:hsl({i * 40},60%,45%)">Section {i + 1} of 8</section>'
        for i in range(8)
    )
}
  </body></html>"""

REPORT_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><style>{STYLE}
  h2{{page-break-before:always}} h2:first-of-type{{page-break-before:auto}}</style></head>
  <body><main><h1>Quarterly report</h1>
  {
    "".join(
        f"<h2>Chapter {i + 1}</h2>" + "<p>" + "Numbers went up and to the right. " * 60 + "</p>"
        for i in range(3)
    )
}
  </main></body></html>"""

FOOTER = (
    '<div style="font-size:10px;width:100%;text-align:center;color:#555">'
    'kubeshot gallery — page <span class="pageNumber"></span> of <span class="totalPages">'
    "</span></div>"
)


def solid_png(colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def routes(port: int) -> dict[tuple[str, str], tuple[str, bytes]]:
    hues = [
        (220, 38, 38),
        (234, 179, 8),
        (22, 163, 74),
        (37, 99, 235),
        (147, 51, 234),
        (8, 145, 178),
    ]
    pages: dict[tuple[str, str], tuple[str, bytes]] = {
        (SITE, "/cjk"): ("text/html; charset=utf-8", CJK_PAGE.encode()),
        (SITE, "/lazy"): ("text/html; charset=utf-8", LAZY_PAGE.encode()),
        (SITE, "/news"): (
            "text/html; charset=utf-8",
            NEWS_PAGE.replace("PORT", str(port)).encode(),
        ),
        (SITE, "/long"): ("text/html; charset=utf-8", LONG_PAGE.encode()),
        (SITE, "/report"): ("text/html; charset=utf-8", REPORT_PAGE.encode()),
        (SITE, "/ads/house.png"): ("image/png", solid_png((22, 163, 74), (300, 120))),
        (AD, "/ad.png"): ("image/png", solid_png((255, 0, 255), (300, 120))),
        (TRACKER, "/beacon.js"): (
            "text/javascript",
            b"const d = document.createElement('div');"
            b"d.style.cssText = 'position:fixed;top:0;left:0;right:0;height:16px;background:red';"
            b"document.body.appendChild(d);",
        ),
    }
    for i, hue in enumerate(hues):
        pages[(SITE, f"/img/{i}.png")] = ("image/png", solid_png(hue, (600, 300)))
    return pages


async def resolve(host: str, port: int) -> Sequence[IPAddress]:
    if host in NAMES:
        return [ip_address(ADDRESS)]
    raise OSError(f"{host}: not a gallery name")


@dataclass
class Shot:
    name: str
    title: str
    options: dict[str, Any]
    note: str = ""
    left_out: list[str] = field(default_factory=list)


def supported(options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Options without those this kubeshot lacks (by alias), and the names left out."""
    known = {f.alias or name for name, f in CaptureOptions.model_fields.items()}
    known_pdf = {f.alias or name for name, f in PdfOptions.model_fields.items()}
    kept = {k: v for k, v in options.items() if k in known}
    left_out = [k for k in options if k not in known]
    if isinstance(kept.get("pdf"), dict):
        left_out += [f"pdf.{k}" for k in kept["pdf"] if k not in known_pdf]
        kept["pdf"] = {k: v for k, v in kept["pdf"].items() if k in known_pdf}
    return kept, left_out


def shots(server: HostSite) -> list[Shot]:
    viewport = {"width": 1000, "height": 700}
    return [
        Shot(
            "cjk-emoji",
            "CJK text and colour emoji",
            {"url": server.url("/cjk", SITE), "viewport": viewport},
            "Noto CJK and Noto Color Emoji from Debian; tests/browser/test_fonts.py",
        ),
        Shot(
            "lazy-images",
            "Lazy images, full page (scrollToLoad)",
            {
                "url": server.url("/lazy", SITE),
                "viewport": viewport,
                "fullPage": True,
                "scrollToLoad": True,
            },
            "all six images should show colour; grey boxes mean they never loaded",
        ),
        Shot(
            "news-plain",
            "News page as served: banner, third-party ad and tracker",
            {"url": server.url("/news", SITE), "viewport": viewport},
        ),
        Shot(
            "news-blocked",
            "Same page with blockAds and hideCookieBanners",
            {
                "url": server.url("/news", SITE),
                "viewport": viewport,
                "blockAds": True,
                "hideCookieBanners": True,
            },
            "uBlock Origin's lists via adblock-rust; autoconsent pressed 'Reject All'; "
            "the site's own /ads/ image (green) stays",
        ),
        Shot(
            "long-page",
            "Long page, full page",
            {"url": server.url("/long", SITE), "viewport": viewport, "fullPage": True},
        ),
        Shot(
            "report-pdf",
            "PDF with a footer (page x of y)",
            {
                "url": server.url("/report", SITE),
                "format": "pdf",
                "pdf": {"format": "A4", "footerTemplate": FOOTER, "printBackground": True},
            },
        ),
    ]


def pdf_note(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    lines = [line for line in (reader.pages[0].extract_text() or "").splitlines() if line.strip()]
    footer = next((line for line in reversed(lines) if "page" in line.lower()), "(no footer)")
    return f"{len(reader.pages)} pages; first page's footer: “{footer.strip()}”"


def card(shot: Shot, file: str | None, report: Any, error: str | None) -> str:
    title = html.escape(shot.title)
    lines = [f"<h2>{title}</h2>"]
    if error is not None:
        lines.append(f"<p class=err>failed: {html.escape(error)}</p>")
    elif file is not None and file.endswith(".pdf"):
        lines.append(f'<p><a href="{file}">{file}</a> (PDF)</p>')
    elif file is not None:
        lines.append(f'<a href="{file}"><img src="{file}" alt="{title}"></a>')
    if report is not None:
        lines.append(
            f"<p class=meta>{report.width or ''}×{report.height or ''} · {report.bytes} bytes · "
            f"{report.timings.total_ms} ms · blocked requests: {report.blocked_requests}</p>"
        )
    if shot.note:
        lines.append(f"<p>{html.escape(shot.note)}</p>")
    if shot.left_out:
        lines.append(
            f"<p class=err>not in this kubeshot yet: {html.escape(', '.join(shot.left_out))}</p>"
        )
    return '<div class="card">' + "".join(lines) + "</div>"


INDEX = """<!doctype html><html><head><meta charset="utf-8"><title>kubeshot gallery</title>
<style>body{{font:15px/1.4 sans-serif;margin:24px;background:#f4f4f5}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px}}
.card{{background:#fff;padding:12px;border-radius:8px;box-shadow:0 1px 3px #0002}}
.card img{{width:100%;height:260px;object-fit:cover;object-position:top;border:1px solid #ddd}}
h2{{font-size:16px;margin:0 0 8px}} .meta{{color:#666;font-size:13px}} .err{{color:#b91c1c}}
</style></head><body><h1>kubeshot gallery</h1><p>Made {made} by hack/gallery.py
(<code>make gallery</code>); every image is a capture of a page this script served locally.</p>
<div class="grid">{cards}</div></body></html>"""


async def run(out: Path) -> list[Path]:
    cards, written = [], []
    with host_site(ADDRESS) as server:
        server.routes.update(routes(server.port))
        policy = ScreenshotPolicySpec.model_validate(
            {"network": {"allowedCIDRs": [f"{ADDRESS}/32"], "allowedPorts": [server.port]}}
        )
        async with CaptureEngine(spare_contexts=1, guard=EgressGuard(resolver=resolve)) as engine:
            for shot in shots(server):
                raw, shot.left_out = supported(shot.options)
                file, report, error = None, None, None
                try:
                    artifact = await engine.capture(CaptureOptions.model_validate(raw), policy)
                    report = artifact.report
                    file = f"{shot.name}.{report.format}"
                    (out / file).write_bytes(artifact.data)
                    written.append(out / file)
                    if report.format == "pdf":
                        shot.note = pdf_note(artifact.data)
                except CaptureError as exc:
                    error = f"{exc.reason.value}: {exc.message}"
                print(f"gallery: {shot.name}: {file or error}", file=sys.stderr)
                cards.append(card(shot, file, report, error))
    index = out / "index.html"
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    index.write_text(INDEX.format(made=made, cards="\n".join(cards)), encoding="utf-8")
    return [index, *written]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gallery")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(run(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

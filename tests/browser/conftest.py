"""Browser tier: real Chromium through the capture engine, test pages on 127.0.0.2."""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import pytest_asyncio

from kubeshot.api import ScreenshotPolicySpec
from tests.support import Handler, serving

PAGES: dict[str, str] = {
    "/page": """<!doctype html><html><head><title>kubeshot test</title><style>
        html, body { margin: 0; background: #ffffff; }
        #red { position: absolute; left: 0; top: 0; width: 100px; height: 100px;
               background: #ff0000; }
        #box { position: absolute; left: 200px; top: 50px; width: 120px; height: 80px;
               background: #0000ff; }
        </style></head><body><div id="red"></div><div id="box">box</div>
        <p style="position:absolute;top:300px">Hello kubeshot</p></body></html>""",
    "/tall": """<!doctype html><html><head><style>html,body{margin:0}
        .s{height:1000px}</style></head><body><div class="s" style="background:#f00"></div>
        <div class="s" style="background:#0f0"></div><div class="s" style="background:#00f"></div>
        </body></html>""",
    "/transparent": """<!doctype html><html><head><style>html,body{margin:0;background:transparent}
        #dot{width:10px;height:10px;background:#00ff00}</style></head>
        <body><div id="dot"></div></body></html>""",
    "/dark": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        @media (prefers-color-scheme: dark) { html, body { background: #000 } }</style></head>
        <body></body></html>""",
    "/env": """<!doctype html><html><body><pre id="out"></pre><script>
        const out = {ua: navigator.userAgent, lang: navigator.language,
          tz: Intl.DateTimeFormat().resolvedOptions().timeZone, cookie: document.cookie,
          dpr: window.devicePixelRatio, w: innerWidth, h: innerHeight};
        document.getElementById('out').textContent = JSON.stringify(out);
        </script></body></html>""",
    "/geo": """<!doctype html><html><body><pre id="out">waiting</pre><script>
        navigator.geolocation.getCurrentPosition(
          p => { const e = document.getElementById('out');
                 e.textContent = p.coords.latitude + ',' + p.coords.longitude;
                 e.className = 'done'; },
          err => { document.getElementById('out').textContent = 'error ' + err.code; });
        </script></body></html>""",
    "/late": """<!doctype html><html><body><script>
        setTimeout(() => { const d = document.createElement('div'); d.id = 'late';
          d.textContent = 'arrived'; document.body.appendChild(d); }, 1500);
        </script></body></html>""",
    "/ads": """<!doctype html><html><body><p>content</p>
        <img src="/ads/banner.png"><img src="/pagead/track.gif"><img src="/content/photo.png">
        </body></html>""",
    "/banner": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        #onetrust-banner-sdk{position:fixed;left:0;top:0;width:100%;height:100%;background:#f00}
        </style></head><body><div id="onetrust-banner-sdk">We use cookies
        <button id="onetrust-reject-all-handler" onclick="this.parentNode.remove()">Reject</button>
        </div></body></html>""",
    "/alert": """<!doctype html><html><body><script>alert('hi'); window.open('/page');</script>
        <p id="after">after</p></body></html>""",
    # Page actions (test_actions.py): images below the fold that load only when scrolled to,
    # a "load more" button, a spinner that goes away, a load event that never fires.
    "/lazy": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        .gap{height:3000px} img{display:block;width:200px;height:200px}</style></head><body>
        <div class="gap"></div><img id="observed" data-src="/color/00ff00.png" alt="">
        <div class="gap"></div><img id="native" loading="lazy" src="/color/0000ff.png" alt="">
        <div style="height:500px"></div><script>
        const io = new IntersectionObserver(entries => { for (const e of entries) {
          if (e.isIntersecting) { e.target.src = e.target.dataset.src; io.unobserve(e.target); }
        } });
        io.observe(document.getElementById('observed'));</script></body></html>""",
    "/load-more": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        #more{position:absolute;left:0;top:0;width:200px;height:50px}
        #content{position:absolute;left:0;top:100px;width:300px;height:200px;background:#0f0;
                 display:none}</style></head><body>
        <button id="more" onclick="fetch('/slow?s=0.5').then(r => r.text()).then(() => {
          document.getElementById('content').style.display = 'block'; })">Load more</button>
        <div id="content"></div></body></html>""",
    "/spinner": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        #spinner{position:absolute;left:0;top:0;width:200px;height:200px;background:#f00}
        </style></head><body><div id="spinner"></div><script>
        setTimeout(() => document.getElementById('spinner').remove(), 1000);</script>
        </body></html>""",
    "/never-loads": """<!doctype html><html><head><style>html,body{margin:0;background:#fff}
        #shown{position:absolute;left:0;top:0;width:300px;height:300px;background:#0f0}
        #ad{position:absolute;left:400px;top:0;width:100px;height:100px;background:#f00}
        </style></head><body><div id="shown"></div><div id="ad"></div>
        <img src="/slow?s=60" alt=""></body></html>""",
}
PIXEL_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b0d5"
    "3d0000000049454e44ae426082"
)


def solid_png(rgb_hex: str) -> bytes:
    """A 1x1 opaque PNG of this colour (RRGGBB), stretched by the page to any size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes.fromhex(rgb_hex))
    end = chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + end


@dataclass
class TestSite:
    """The test pages on 127.0.0.2: every request's path and headers (lower-case names)."""

    __test__ = False
    port: int
    requests: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.2:{self.port}{path}"


@pytest.fixture(scope="session")
def site() -> Iterator[TestSite]:
    holder: list[TestSite] = []

    class Pages(Handler):
        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            holder[0].requests.append(self.path)
            holder[0].headers.append(headers)
            path, _, query = self.path.partition("?")
            if path == "/slow":
                time.sleep(float(parse_qs(query).get("s", ["20"])[0]))
                self.reply(200, b"<p>late</p>")
            elif path == "/headers":
                self.reply(200, f"<pre id='out'>{json.dumps(headers)}</pre>".encode())
            elif path in PAGES:
                self.reply(200, PAGES[path].encode())
            elif path.startswith("/color/") and path.endswith(".png"):
                self.reply(200, solid_png(path[len("/color/") : -len(".png")]), "image/png")
            elif path.endswith((".png", ".gif")):
                self.reply(200, PIXEL_PNG, "image/png")
            else:
                self.reply(404, b"not found", "text/plain")

    with serving(Pages, "127.0.0.2") as served:
        holder.append(TestSite(served.port))
        yield holder[0]


@pytest.fixture(scope="session")
def local_policy(site: TestSite) -> ScreenshotPolicySpec:
    """The default policy with only the test site's loopback address and port opened."""
    return ScreenshotPolicySpec.model_validate(
        {
            "network": {"allowedCIDRs": ["127.0.0.2/32"], "allowedPorts": [80, 443, site.port]},
            "features": {"allowCustomJavaScript": True},
        }
    )


@pytest_asyncio.fixture(scope="session")
async def engine(chromium: str) -> AsyncIterator[object]:
    from kubeshot_capture.engine import CaptureEngine

    async with CaptureEngine(spare_contexts=1) as running:
        yield running


@pytest.fixture
def policy_file(tmp_path_factory: pytest.TempPathFactory, site: TestSite) -> Path:
    """A ScreenshotPolicy YAML opening the test site (and nothing else), for --policy."""
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(
        "apiVersion: kubeshot.dev/v1alpha1\nkind: ScreenshotPolicy\nmetadata: {name: test}\n"
        f"spec:\n  network:\n    allowedCIDRs: ['127.0.0.2/32']\n    allowedPorts: [{site.port}]\n"
    )
    return path

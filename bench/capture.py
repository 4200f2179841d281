"""Capture latency: kubeshot's engine vs a bare Playwright fresh-context capture.

Both capture the same small page served on 127.0.0.2, with the same Chromium executable and
flags, interleaved round by round so that machine noise hits all of them alike. Prints medians
and the ratios against the bare baseline measured in this same run.

    python bench/capture.py [--rounds 30]

Targets: plain path (guard on, context opened per capture) <= 1.15x; with a pre-opened spare
context (used once, then closed) <= 0.7x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.async_api import async_playwright

from kubeshot.api import CaptureOptions, ScreenshotPolicySpec
from kubeshot_capture.browser import chromium_args, chromium_executable
from kubeshot_capture.engine import CaptureEngine

PAGE = (
    b"""<!doctype html><html><head><title>bench</title><style>body{font:16px sans-serif}
.b{display:inline-block;width:120px;height:80px;margin:4px;background:#36c}</style></head>
<body><h1>kubeshot bench</h1><p>A small page with some text and boxes.</p>
"""
    + b'<div class="b"></div>' * 40
    + b"</body></html>"
)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)


async def main(rounds: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://127.0.0.2:{port}/"
    policy = ScreenshotPolicySpec.model_validate(
        {"network": {"allowedCIDRs": ["127.0.0.2/32"], "allowedPorts": [port]}}
    )
    options = CaptureOptions(url=url, viewport={"width": 1280, "height": 720})
    times: dict[str, list[float]] = {"bare": [], "kubeshot": [], "kubeshot+spare": []}

    async with (
        async_playwright() as pw,
        CaptureEngine(spare_contexts=0) as plain,
        CaptureEngine(spare_contexts=1) as spare,
    ):
        bare_browser = await pw.chromium.launch(
            executable_path=chromium_executable(), args=chromium_args()
        )

        async def bare() -> None:
            context = await bare_browser.new_context(viewport={"width": 1280, "height": 720})
            page = await context.new_page()
            await page.goto(url, wait_until="load")
            await page.screenshot(type="png")
            await context.close()

        async def timed(name: str, run: object) -> None:
            start = time.perf_counter()
            await run  # type: ignore[misc]
            times[name].append((time.perf_counter() - start) * 1000)

        for _ in range(3):  # warm-up: first navigations pay for process start-up
            await bare()
            await plain.capture(options, policy)
            await spare.capture(options, policy)
        for i in range(rounds):
            order = [("bare", None), ("kubeshot", plain), ("kubeshot+spare", spare)]
            order = order[i % 3 :] + order[: i % 3]
            for name, engine in order:
                await asyncio.sleep(0.15)  # let a spare context refill, as between real requests
                await timed(name, bare() if engine is None else engine.capture(options, policy))
        await bare_browser.close()
    server.shutdown()

    base = statistics.median(times["bare"])
    print(f"capture of a small local page, {rounds} interleaved rounds, medians:")
    for name, values in times.items():
        median = statistics.median(values)
        p90 = sorted(values)[int(len(values) * 0.9) - 1]
        print(f"  {name:16} {median:7.1f} ms  (p90 {p90:7.1f} ms)  ratio {median / base:5.2f}x")
    plain_ratio = statistics.median(times["kubeshot"]) / base
    spare_ratio = statistics.median(times["kubeshot+spare"]) / base
    print(
        f"targets: plain <= 1.15x: {'met' if plain_ratio <= 1.15 else 'MISSED'}; "
        f"spare <= 0.70x: {'met' if spare_ratio <= 0.70 else 'MISSED'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    asyncio.run(main(parser.parse_args().rounds))

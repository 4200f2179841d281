"""Throughput at saturation: the gateway's local backend vs bare Playwright multi-context.

Two pages, served by a separate process on 127.0.0.2 (small: text and boxes) and 127.0.0.3
(heavy: five incompressible images and two web fonts, about 2.8 MB, no caching). For each page
and concurrency 1, 2, 4, 8, a closed loop of `concurrency` clients:

- kubeshot: synchronous `POST /v1/screenshot` through the gateway (in this process, HTTP on
  loopback, auth on) with its local backend of `--workers` worker processes (started as root,
  they run as `nobody` and Chromium keeps its sandbox);
- bare: one Playwright Chromium (same executable and flags, no guard, no gateway), each capture
  in a fresh context (new context, new page, goto, PNG screenshot, close) — the most a
  Python+Playwright service could do on this machine. Twice, each in a child process of its
  own: `bare` as this process's user (as root: without Chromium's sandbox), and `bare-sbx` as
  kubeshot's workers run (as root: dropped to `nobody`, with the sandbox), the like-for-like
  baseline.

All are measured in the same run, alternating phase by phase (repeated `--repeat` times, the
best throughput of each kept, as machine noise only ever slows a phase down). Prints
captures/s, latency p50/p95, CPU seconds per capture (utime+stime of the process trees that do
the work, the page server excluded), the ratios to both baselines, and the "unloaded" p50 (one
capture at a time with a pause between). Also the machine's load average at start and end:
other work on the machine shows up in every figure.

    python bench/throughput.py [--workers 2] [--captures 24] [--repeat 2] [--pages small,heavy]

Targets (issue 15, small page, 2 workers): >= 4 captures/s at concurrency 4; p95 at
concurrency 4 <= 2x the unloaded p50; >= 0.8x the bare multi-context baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from kubeshot.api import CaptureOptions
from kubeshot.gateway import Settings, create_app
from kubeshot.gateway.pool import resolve_worker_user
from kubeshot.gateway.worker import PRELOAD, drop_privileges
from kubeshot_capture.browser import NO_SANDBOX, chromium_args, chromium_executable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from tests.support import free_port

TOKEN = "bench-token-0123456789abcdef"
SMALL_HOST = "127.0.0.2"
HEAVY_HOST = "127.0.0.3"
FONT_FILES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
)
IMAGES = 5
SMALL = (
    b"""<!doctype html><html><head><title>bench</title><style>body{font:16px sans-serif}
.b{display:inline-block;width:120px;height:80px;margin:4px;background:#36c}</style></head>
<body><h1>kubeshot bench</h1><p>A small page with some text and boxes.</p>
"""
    + b'<div class="b"></div>' * 40
    + b"</body></html>"
)


# -- the pages (a process of their own, so that their CPU is nobody's) -------------------------


def _noise_png(seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (400, 300), rng.randbytes(400 * 300 * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def heavy_assets() -> dict[str, tuple[str, bytes]]:
    assets: dict[str, tuple[str, bytes]] = {}
    fonts = [p for p in FONT_FILES if Path(p).is_file()]
    faces = []
    for i, path in enumerate(fonts):
        assets[f"/font{i}.ttf"] = ("font/ttf", Path(path).read_bytes())
        faces.append(f"@font-face{{font-family:f{i};src:url(/font{i}.ttf) format('truetype')}}")
    for i in range(IMAGES):
        assets[f"/img{i}.png"] = ("image/png", _noise_png(i))
    families = ",".join(f"f{i}" for i in range(len(fonts))) or "sans-serif"
    body = "".join(
        f'<figure><img src="/img{i}.png" width="400" height="300"><figcaption '
        f'style="font-family:f{i % max(len(fonts), 1)}">Image {i}</figcaption></figure>'
        for i in range(IMAGES)
    )
    html = (
        f"<!doctype html><html><head><title>heavy</title><style>{''.join(faces)}"
        f"body{{font:18px {families}}}figure{{display:inline-block;margin:6px}}</style></head>"
        f"<body><h1>kubeshot heavy bench page</h1><p>Images and web fonts.</p>{body}"
        "</body></html>"
    )
    assets["/"] = ("text/html", html.encode())
    return assets


def serve_pages() -> None:
    """Child process: serve both pages, print `small_port heavy_port total_heavy_bytes`."""
    small = {"/": ("text/html", SMALL)}
    heavy = heavy_assets()

    def handler(assets: dict[str, tuple[str, bytes]]) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                kind, body = assets.get(self.path, ("text/plain", b""))
                self.send_response(200 if self.path in assets else 404)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        return Handler

    servers = [
        ThreadingHTTPServer((SMALL_HOST, 0), handler(small)),
        ThreadingHTTPServer((HEAVY_HOST, 0), handler(heavy)),
    ]
    for server in servers:
        server.daemon_threads = True
    import threading

    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    total = sum(len(body) for _, body in heavy.values())
    ports = " ".join(str(s.server_address[1]) for s in servers)
    print(f"{ports} {total}", flush=True)
    servers[0].serve_forever()


# -- measuring -------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _role(pid: int) -> str:
    if pid == os.getpid():
        return "bench process (gateway, clients)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    line = b" ".join(argv)
    if not line:  # a zombie: its command line is gone
        return "exited, not yet reaped (renderers)"
    if b"kubeshot.gateway.worker" in line:
        return "worker (python: engine, guard)"
    program = argv[0].split(b" ")[0]
    if program.endswith(b"/node"):
        return "playwright driver (node)"
    match = re.search(rb"--type=([a-z-]+)", line)
    if b"chrom" in program:
        kind = match.group(1).decode() if match else "browser"
        if kind == "zygote":
            kind = "zygote (+ reaped renderers)"
        return f"chromium {kind}"
    return argv[0].decode(errors="replace").rsplit("/", 1)[-1]


def tree_cpu(root: int, exclude: frozenset[int]) -> dict[int, tuple[str, float]]:
    """CPU seconds of `root` and each descendant (with what each reaped: renderers), by pid;
    the trees of `exclude` left out."""
    tick = os.sysconf("SC_CLK_TCK")
    children = _children()
    found: dict[int, tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in exclude:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        cpu = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        found[pid] = (_role(pid), cpu)
        todo.extend(children.get(pid, ()))
    return found


def cpu_by_role(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    roles: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        roles[role] = roles.get(role, 0.0) + cpu - before.get(pid, (role, 0.0))[1]
    return roles


@dataclass
class Phase:
    rate: float
    p50: float
    p95: float
    cpu: float
    errors: int
    roles: dict[str, float]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def closed_loop(
    capture: Callable[[], Awaitable[bool]],
    concurrency: int,
    captures: int,
    exclude: frozenset[int] = frozenset(),
) -> Phase:
    latencies: list[float] = []
    errors = 0
    remaining = captures

    async def client() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            ok = await capture()
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    before = tree_cpu(os.getpid(), exclude)
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    roles = cpu_by_role(before, tree_cpu(os.getpid(), exclude))
    cpu = sum(roles.values())
    done = max(len(latencies), 1)
    return Phase(
        rate=len(latencies) / wall,
        p50=statistics.median(latencies) * 1000 if latencies else float("nan"),
        p95=_quantile(latencies, 0.95) * 1000 if latencies else float("nan"),
        cpu=cpu / done,
        errors=errors,
        roles={role: seconds / done for role, seconds in roles.items()},
    )


async def unloaded(capture: Callable[[], Awaitable[bool]], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        await asyncio.sleep(0.4)  # a pause between requests, as on a quiet service
        started = time.perf_counter()
        if await capture():
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


def start_pages() -> tuple[subprocess.Popen[str], int, int, int]:
    pages = subprocess.Popen(
        [sys.executable, __file__, "--serve-pages"], stdout=subprocess.PIPE, text=True
    )
    assert pages.stdout is not None
    small_port, heavy_port, heavy_bytes = map(int, pages.stdout.readline().split())
    return pages, small_port, heavy_port, heavy_bytes


# -- the bare baselines (a child process each, so that one can run as kubeshot's workers do) --


def bare_child(sandbox: bool) -> None:
    """Child process: bare Playwright captures, a phase per request line on stdin, its result
    as a JSON line on stdout. With `sandbox`, it runs as kubeshot's workers do: a root process
    drops to their user first (Chromium refuses its sandbox as root)."""
    user = resolve_worker_user(None) if sandbox else None
    if user is not None:
        home = tempfile.mkdtemp(prefix="kubeshot-bench-")
        os.chown(home, user.uid, user.gid)
        os.environ["HOME"] = os.environ["TMPDIR"] = home
        for module in PRELOAD:  # as the worker does: nothing is importable from /root after
            __import__(module)
        drop_privileges(user.uid, user.gid)
        os.chdir(home)
    if not sandbox:
        os.environ[NO_SANDBOX] = "1"
    asyncio.run(_bare_child())


async def _bare_child() -> None:
    from playwright.async_api import async_playwright

    args = chromium_args()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium_executable(),
            args=args,
            chromium_sandbox="--no-sandbox" not in args,
        )

        def bare(url: str) -> Callable[[], Awaitable[bool]]:
            async def run() -> bool:
                context = await browser.new_context(viewport={"width": 1280, "height": 720})
                try:
                    page = await context.new_page()
                    await page.goto(url, wait_until="load")
                    await page.screenshot(type="png")
                finally:
                    await context.close()
                return True

            return run

        sandboxed = "--no-sandbox" not in args
        print(json.dumps({"uid": os.getuid(), "sandbox": sandboxed}), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            ask = json.loads(line)
            run = bare(ask["url"])
            if "rounds" in ask:
                for _ in range(4):  # warm-up
                    await run()
                answer: object = await unloaded(run, ask["rounds"])
            else:
                answer = dataclasses.asdict(
                    await closed_loop(run, ask["concurrency"], ask["captures"])
                )
            print(json.dumps(answer), flush=True)
        await browser.close()


class Bare:
    """A bare baseline in its child process (`bare_child`)."""

    def __init__(self, sandbox: bool) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--bare-child", *(["--sandbox"] if sandbox else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._read()

    def _read(self) -> Any:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the bare baseline's process ended")
        return json.loads(line)

    async def _ask(self, **request: object) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return await asyncio.to_thread(self._read)

    @property
    def label(self) -> str:
        return f"uid {self.info['uid']}, sandbox {'on' if self.info['sandbox'] else 'off'}"

    async def phase(self, url: str, concurrency: int, captures: int) -> Phase:
        return Phase(**await self._ask(url=url, concurrency=concurrency, captures=captures))

    async def unloaded(self, url: str, rounds: int) -> float:
        answer: float = await self._ask(url=url, rounds=rounds)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


class Kubeshot:
    """The gateway's local backend, driven over HTTP from this process."""

    label = "gateway, local backend"

    def __init__(
        self, http: ClientSession, port: int, exclude: frozenset[int], verbose: bool
    ) -> None:
        self.http, self.port, self.exclude, self.verbose = http, port, exclude, verbose

    def _capture(self, url: str) -> Callable[[], Awaitable[bool]]:
        body = CaptureOptions(url=url).to_wire()
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def run() -> bool:
            address = f"http://127.0.0.1:{self.port}/v1/screenshot"
            async with self.http.post(address, json=body, headers=headers) as r:
                await r.read()
                if r.status != 200 and self.verbose:
                    print("  kubeshot error:", r.status, (await r.text())[:200])
                return r.status == 200

        return run

    async def phase(self, url: str, concurrency: int, captures: int) -> Phase:
        return await closed_loop(self._capture(url), concurrency, captures, self.exclude)

    async def unloaded(self, url: str, rounds: int) -> float:
        run = self._capture(url)
        for _ in range(4):  # warm-up
            await run()
        return await unloaded(run, rounds)


SYSTEMS = ("kubeshot", "bare", "bare-sbx")


async def main(args: argparse.Namespace) -> None:
    pages, small_port, heavy_port, heavy_bytes = start_pages()
    urls = {
        "small": f"http://{SMALL_HOST}:{small_port}/",
        "heavy": f"http://{HEAVY_HOST}:{heavy_port}/",
    }
    wanted = [p for p in args.pages.split(",") if p]
    network = {
        "allowedCIDRs": [f"{SMALL_HOST}/32", f"{HEAVY_HOST}/32"],
        "allowedPorts": [small_port, heavy_port],
    }
    print(f"load average at start: {load_average()}")
    print(
        f"cpus: {os.cpu_count()}; heavy page: {heavy_bytes / 2**20:.2f} MiB in "
        f"{IMAGES + 1 + len(FONT_FILES)} responses; workers: {args.workers}"
    )
    results: dict[tuple[str, str, int], Phase] = {}
    idle: dict[tuple[str, str], float] = {}
    bares = {"bare": Bare(sandbox=False), "bare-sbx": Bare(sandbox=True)}
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy_file.write_text(
            yaml.safe_dump({"metadata": {"name": "default"}, "spec": {"network": network}})
        )
        port = free_port()
        settings = Settings(
            auth_token=TOKEN,
            policy_files=[policy_file],
            workers=args.workers,
            port=port,
            rate_limit_capture="100000 per second",
            captures_per_worker=1_000_000,
            queue_size=64,
            max_captures_per_identity=64,  # one client identity drives every concurrency
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        timeout = ClientTimeout(total=120)
        async with ClientSession(connector=TCPConnector(limit=64), timeout=timeout) as http:
            for _ in range(240):
                async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.5)
            exclude = frozenset([pages.pid, *(b.process.pid for b in bares.values())])
            systems = {"kubeshot": Kubeshot(http, port, exclude, args.verbose), **bares}
            for page in wanted:
                for name, system in systems.items():
                    idle[(page, name)] = await system.unloaded(urls[page], args.idle_rounds)
                for repeat in range(args.repeat):
                    for c in args.concurrency:
                        order = list(systems.items())
                        if (repeat + c) % 2:
                            order.reverse()
                        for name, system in order:
                            captures = max(args.captures, 3 * c)
                            phase = await system.phase(urls[page], c, captures)
                            key = (page, name, c)
                            if key not in results or phase.rate > results[key].rate:
                                results[key] = phase
                            if args.verbose:
                                print(
                                    f"  {page} {name} c={c}: {phase.rate:.2f}/s p50 "
                                    f"{phase.p50:.0f} p95 {phase.p95:.0f} cpu {phase.cpu:.2f} "
                                    f"errors {phase.errors}",
                                    flush=True,
                                )
        await runner.cleanup()
    for bare in bares.values():
        bare.close()
    pages.terminate()
    pages.wait()

    print(f"load average at end:   {load_average()}")
    print(
        f"\nclosed loop, best of {args.repeat}; at least {args.captures} captures per phase; "
        "latency in ms; CPU s per capture; kubeshot's captures/s as a ratio of each baseline's"
    )
    for name, system in systems.items():
        print(f"  {name}: {system.label}")
    for page in wanted:
        unloaded_p50 = ", ".join(f"{n} {idle[(page, n)]:.0f} ms" for n in SYSTEMS)
        print(f"\n{page} page ({urls[page]}); unloaded p50: {unloaded_p50}")
        print(
            f"  {'conc':>4} |"
            + "|".join(f" {n + '/s':>12} {'p50':>6} {'p95':>6} {'cpu':>5} " for n in SYSTEMS)
            + "| ratio to bare, bare-sbx"
        )
        for c in args.concurrency:
            phases = [results[(page, n, c)] for n in SYSTEMS]
            k = phases[0]
            errors = "/".join(str(p.errors) for p in phases)
            print(
                f"  {c:>4} |"
                + "|".join(
                    f" {p.rate:>12.2f} {p.p50:>6.0f} {p.p95:>6.0f} {p.cpu:>5.2f} " for p in phases
                )
                + f"| {k.rate / phases[1].rate:.2f}x {k.rate / phases[2].rate:.2f}x"
                + (f"  errors {errors}" if any(p.errors for p in phases) else "")
            )
    for page in wanted:
        if 4 not in args.concurrency:
            break
        print(f"\nCPU s per capture by process, {page} page, concurrency 4:")
        for name in SYSTEMS:
            roles = results[(page, name, 4)].roles
            parts = sorted(roles.items(), key=lambda item: -item[1])
            print(f"  {name}: " + "; ".join(f"{r} {s:.3f}" for r, s in parts if s >= 0.005))
    if "small" in wanted and 4 in args.concurrency:
        k = results[("small", "kubeshot", 4)]
        base = idle[("small", "kubeshot")]
        print(f"\ntargets (small page, concurrency 4, {args.workers} workers):")
        print(f"  >= 4 captures/s: {k.rate:.2f} -> {'met' if k.rate >= 4 else 'MISSED'}")
        print(
            f"  p95 <= 2x unloaded p50: {k.p95:.0f} ms vs 2x{base:.0f} = {2 * base:.0f} ms -> "
            f"{'met' if k.p95 <= 2 * base else 'MISSED'}"
        )
        for name in SYSTEMS[1:]:
            ratio = k.rate / results[("small", name, 4)].rate
            print(f"  >= 0.8x {name}: {ratio:.2f}x -> {'met' if ratio >= 0.8 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--captures", type=int, default=24, help="captures per phase (min)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--idle-rounds", type=int, default=10)
    parser.add_argument("--pages", default="small,heavy")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--serve-pages", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sandbox", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_pages:
        serve_pages()
    elif arguments.bare_child:
        bare_child(arguments.sandbox)
    else:
        asyncio.run(main(arguments))

"""Gateway benchmark: what the full pipeline costs on top of the engine.

1. A sync capture through the gateway (HTTP, auth, rate limit, validation, admission, worker
   process, response verification) vs the capture engine called directly on the same page,
   interleaved, same machine; prints the added latency at the median (target <= 15 ms).
2. The same with a stand-in engine that answers instantly (bench/standin_engine.py) in the
   worker and called directly: the gateway's own overhead without Chromium's noise.
3. Throughput of an authenticated non-capture endpoint (GET /v1/captures/{id}) vs a bare aiohttp
   handler answering a JSON document of the same size.

Usage: python bench/gateway.py [--captures N] [--seconds S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from aiohttp import ClientSession, TCPConnector, web

from kubeshot.api import CaptureError, CaptureOptions, ScreenshotPolicySpec
from kubeshot.gateway import Settings, create_app
from kubeshot_capture.engine import CaptureEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from tests.support import free_port

TOKEN = "bench-token-0123456789abcdef"
BENCH_DIR = str(Path(__file__).resolve().parent)
PAGE = """<!doctype html><html><body style="margin:0;background:#fff">
<div style="width:200px;height:100px;background:#c00"></div><p>kubeshot bench</p></body></html>"""


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def page_server() -> tuple[web.AppRunner, int]:
    app = web.Application()

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", page)
    port = free_port()
    return await serve(app, port), port


async def capture_latency(captures: int) -> None:
    pages, page_port = await page_server()
    network = {"allowedCIDRs": ["127.0.0.0/8"], "allowedPorts": [page_port]}
    policy = ScreenshotPolicySpec.model_validate({"network": network})
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy_file.write_text(
            yaml.safe_dump({"metadata": {"name": "default"}, "spec": {"network": network}})
        )
        port = free_port()
        settings = Settings(
            auth_token=TOKEN,
            policy_files=[policy_file],
            workers=1,
            port=port,
            rate_limit_capture="1000 per second",
            captures_per_worker=10_000,
        )
        gateway = await serve(create_app(settings), port)
        options = CaptureOptions(url=f"http://127.0.0.1:{page_port}/")
        direct: list[float] = []
        through: list[float] = []
        async with CaptureEngine(spare_contexts=1) as engine, ClientSession() as client:
            for _ in range(60):  # until the gateway's worker is up
                async with client.get(f"http://127.0.0.1:{port}/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.5)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            body = options.to_wire()
            failed = 0
            for i in range(captures + 3):  # 3 warm-up rounds, then interleaved
                started = time.perf_counter()
                try:
                    await engine.capture(options, policy)
                except CaptureError:
                    failed += 1
                    continue
                d = time.perf_counter() - started
                started = time.perf_counter()
                async with client.post(
                    f"http://127.0.0.1:{port}/v1/screenshot", json=body, headers=headers
                ) as r:
                    await r.read()
                    if r.status != 200:
                        failed += 1
                        continue
                g = time.perf_counter() - started
                if i >= 3:
                    direct.append(d)
                    through.append(g)
                await asyncio.sleep(0.3)  # let both engines refill their spare contexts
        await gateway.cleanup()
    await pages.cleanup()
    if failed:
        print(f"({failed} round(s) skipped: a capture failed)")
    md, mg = statistics.median(direct), statistics.median(through)
    print(f"capture, engine called directly : median {md * 1000:7.1f} ms  (n={len(direct)})")
    print(f"capture, through the gateway    : median {mg * 1000:7.1f} ms")
    paired = statistics.median(g - d for g, d in zip(through, direct, strict=True))
    print(
        f"added latency (median of paired differences): {paired * 1000:+.1f} ms "
        f"(target <= 15 ms); ratio {mg / md:.2f}x"
    )


async def standin_overhead(captures: int) -> None:
    import sys

    from standin_engine import StandInEngine  # bench/ is on sys.path: this script's directory

    from kubeshot.gateway.pool import LocalBackend

    port = free_port()
    settings = Settings(auth_token=TOKEN, port=port, rate_limit_capture="1000000 per second")
    backend = LocalBackend(
        workers=1,
        captures_per_worker=1_000_000,
        # bench/ goes last on the worker's path: it must not shadow the standard library.
        worker_command=[
            sys.executable,
            "-c",
            f"import sys; sys.path.append({BENCH_DIR!r}); from kubeshot.gateway.worker import"
            " main; sys.exit(main(['--engine', 'standin_engine:StandInEngine']))",
        ],
    )
    gateway = await serve(create_app(settings, backend=backend), port)
    options = CaptureOptions(url="http://bench.test/")
    engine = StandInEngine()
    direct: list[float] = []
    through: list[float] = []
    async with ClientSession() as client:
        while not backend.ready:  # noqa: ASYNC110 - polling a property, no event to wait on
            await asyncio.sleep(0.1)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        for i in range(captures + 20):
            started = time.perf_counter()
            await engine.capture(options)
            d = time.perf_counter() - started
            started = time.perf_counter()
            async with client.post(
                f"http://127.0.0.1:{port}/v1/screenshot", json=options.to_wire(), headers=headers
            ) as r:
                assert r.status == 200, await r.text()
                await r.read()
            g = time.perf_counter() - started
            if i >= 20:
                direct.append(d)
                through.append(g)
    await gateway.cleanup()
    added = statistics.median(g - d for g, d in zip(through, direct, strict=True))
    p90 = sorted(g - d for g, d in zip(through, direct, strict=True))[int(len(direct) * 0.9)]
    print(
        f"gateway overhead with an instant engine: median {added * 1000:.1f} ms, "
        f"p90 {p90 * 1000:.1f} ms (n={len(direct)}; HTTP, auth, rate limit, validation, "
        "admission, worker IPC, memory watch, verification)"
    )


async def throughput(seconds: float, concurrency: int) -> None:
    from kubeshot.gateway.backend import Backend, CaptureResult
    from kubeshot.gateway.jobs import Job

    # A finished job to read back: the endpoint answers 200 with its JSON.
    job = Job(id="0" * 32, owner="token:default", policy="default")
    document = job.view().to_wire()

    class Idle(Backend):
        """Never captures; serves one finished job (a backend with jobs of its own)."""

        async def start(self) -> None: ...
        async def close(self) -> None: ...
        @property
        def ready(self) -> bool:
            return True

        async def policy(self, caller: object, name: str | None) -> object:  # type: ignore[override]
            raise NotImplementedError

        async def capture(self, *args: object, **kwargs: object) -> CaptureResult:
            raise NotImplementedError

        async def submit(self, *args: object, **kwargs: object) -> object:
            raise NotImplementedError

        async def find(self, caller: object, job_id: str) -> object:
            return job.view() if job_id == job.id else None

    port = free_port()
    settings = Settings(auth_token=TOKEN, port=port, rate_limit_read="1000000 per second")
    app = create_app(settings, backend=Idle())
    gateway = await serve(app, port)

    bare = web.Application()

    async def bare_handler(request: web.Request) -> web.Response:
        return web.json_response(document)

    bare.router.add_get("/v1/captures/{job_id}", bare_handler)
    bare_port = free_port()
    bare_runner = await serve(bare, bare_port)

    async def hammer(url: str, headers: dict[str, str]) -> float:
        count = 0
        deadline = time.perf_counter() + seconds
        async with ClientSession(connector=TCPConnector(limit=concurrency)) as client:

            async def one() -> None:
                nonlocal count
                while time.perf_counter() < deadline:
                    async with client.get(url, headers=headers) as r:
                        assert r.status == 200, r.status
                        await r.read()
                    count += 1

            await asyncio.gather(*(one() for _ in range(concurrency)))
        return count / seconds

    auth = {"Authorization": f"Bearer {TOKEN}"}
    path = f"/v1/captures/{job.id}"
    rates = {"bare": [], "gateway": []}  # type: dict[str, list[float]]
    for _ in range(2):  # interleaved
        rates["bare"].append(await hammer(f"http://127.0.0.1:{bare_port}{path}", {}))
        rates["gateway"].append(await hammer(f"http://127.0.0.1:{port}{path}", auth))
    b, g = max(rates["bare"]), max(rates["gateway"])
    print(f"GET {path[:16]}..., bare aiohttp handler : {b:8.0f} req/s")
    print(f"GET {path[:16]}..., full gateway pipeline: {g:8.0f} req/s ({g / b:.2f}x of bare)")
    await gateway.cleanup()
    await bare_runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--captures", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    await capture_latency(args.captures)
    await standin_overhead(args.captures * 10)
    await throughput(args.seconds, args.concurrency)


if __name__ == "__main__":
    asyncio.run(main())

"""Operator throughput on the cluster tier: 500 CaptureJobs created at once → 500 capture pods.

Starts the test control plane (testenv/controlplane.py) and a real `kubeshot operator`, creates
one ScreenshotPolicy with a high `maxConcurrentJobs`, then:
  1. low load: 20 jobs one after another, each waiting for its pod (create→pod latency),
  2. burst: N jobs created at once (default 500) by 50 concurrent clients.
Pod appearance is timed from a watch on pods. Prints jobs/s until every pod exists, create→pod
p50/p95 for both runs, and the operator's RSS at the end.

    python bench/operator.py [--jobs 500]

Targets (issue 6): burst >= 50 jobs/s; low-load p50 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
API = "/apis/kubeshot.dev/v1alpha1"

_spec = importlib.util.spec_from_file_location("controlplane", ROOT / "testenv" / "controlplane.py")
assert _spec is not None and _spec.loader is not None
controlplane = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = controlplane
_spec.loader.exec_module(controlplane)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, cp: Any, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace
        self.pod_seen: dict[str, float] = {}
        self.pod_event = asyncio.Event()

    def session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.cp.ssl_context(), limit=100)
        return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))

    async def watch_pods(self, session: aiohttp.ClientSession, ready: asyncio.Event) -> None:
        """Note when each pod appears; a watch the server ends is resumed from a fresh list."""
        base = f"{self.cp.server}/api/v1/namespaces/{self.namespace}/pods"
        while True:
            async with session.get(base) as response:
                listing = await response.json()
            for pod in listing.get("items", []):
                self.pod_seen.setdefault(pod["metadata"]["name"], time.monotonic())
            self.pod_event.set()
            version = listing["metadata"]["resourceVersion"]
            url = f"{base}?watch=1&resourceVersion={version}&allowWatchBookmarks=false"
            async with session.get(url) as response:
                ready.set()
                async for line in response.content:
                    event = json.loads(line)
                    if event["type"] == "ADDED":
                        name = event["object"]["metadata"]["name"]
                        self.pod_seen.setdefault(name, time.monotonic())
                        self.pod_event.set()
                    elif event["type"] == "ERROR":
                        break

    async def create_job(self, session: aiohttp.ClientSession, name: str) -> float:
        body = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "metadata": {"name": name},
            "spec": {"html": "<p>bench</p>"},
        }
        started = time.monotonic()
        url = f"{self.cp.server}{API}/namespaces/{self.namespace}/capturejobs"
        async with session.post(url, json=body) as response:
            if response.status != 201:
                raise RuntimeError(f"create {name}: {response.status} {await response.text()}")
        return started

    async def wait_pods(self, names: list[str], within: float) -> None:
        deadline = time.monotonic() + within
        while not all(f"{n}-1" in self.pod_seen for n in names):
            self.pod_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [n for n in names if f"{n}-1" not in self.pod_seen]
                raise TimeoutError(f"{len(missing)} pods missing, e.g. {missing[:3]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pod_event.wait(), min(left, 1.0))

    async def run(self, jobs: int) -> dict[str, float]:
        async with self.session() as session:
            ready = asyncio.Event()
            watcher = asyncio.create_task(self.watch_pods(session, ready))
            await ready.wait()
            low: list[float] = []
            for i in range(20):
                name = f"low-{i}"
                started = await self.create_job(session, name)
                await self.wait_pods([name], 30)
                low.append(self.pod_seen[f"{name}-1"] - started)
            names = [f"burst-{i:04d}" for i in range(jobs)]
            slots = asyncio.Semaphore(50)

            async def create(name: str) -> float:
                async with slots:
                    return await self.create_job(session, name)

            begin = time.monotonic()
            starts = await asyncio.gather(*(create(n) for n in names))
            created = time.monotonic()
            await self.wait_pods(names, 600)
            last = max(self.pod_seen[f"{n}-1"] for n in names)
            latencies = [self.pod_seen[f"{n}-1"] - s for n, s in zip(names, starts, strict=True)]
            watcher.cancel()
            baseline = await self.baseline(session, jobs)
        return {
            "low_p50_ms": statistics.median(low) * 1000,
            "low_p95_ms": percentile(low, 0.95) * 1000,
            "create_seconds": created - begin,
            "all_pods_seconds": last - begin,
            "jobs_per_second": jobs / (last - begin),
            "burst_p50_ms": statistics.median(latencies) * 1000,
            "burst_p95_ms": percentile(latencies, 0.95) * 1000,
            "baseline_per_second": baseline,
        }

    async def baseline(self, session: aiohttp.ClientSession, jobs: int) -> float:
        """The API server alone: the same CaptureJob + Secret + Pod writes, no operator."""
        from kubeshot.api import CaptureOptions, CaptureRequest, ScreenshotPolicySpec
        from kubeshot.operator import JobRef, OperatorSettings, build_pod, build_secret

        namespace = "baseline"
        url = f"{self.cp.server}/api/v1/namespaces"
        async with session.post(url, json={"metadata": {"name": namespace}}) as response:
            assert response.status == 201, await response.text()
        settings, policy = OperatorSettings(), ScreenshotPolicySpec()
        options = CaptureOptions(html="<p>bench</p>")
        request = CaptureRequest(options=options, policy=policy)
        slots = asyncio.Semaphore(50)

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"{self.cp.server}{path}", json=body) as response:
                if response.status != 201:
                    raise RuntimeError(f"{path}: {response.status} {await response.text()}")
                created: dict[str, Any] = await response.json()
                return created

        async def one(i: int) -> None:
            async with slots:
                job = await post(
                    f"{API}/namespaces/{namespace}/capturejobs",
                    {
                        "apiVersion": "kubeshot.dev/v1alpha1",
                        "kind": "CaptureJob",
                        "metadata": {"name": f"base-{i:04d}"},
                        "spec": {"html": "<p>bench</p>"},
                    },
                )
                ref = JobRef(job["metadata"]["name"], namespace, job["metadata"]["uid"])
                await post(
                    f"/api/v1/namespaces/{namespace}/secrets", build_secret(ref, "default", request)
                )
                await post(
                    f"/api/v1/namespaces/{namespace}/pods",
                    build_pod(ref, 1, "default", policy, options, settings),
                )

        begin = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(jobs)))
        return jobs / (time.monotonic() - begin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    # SIGTERM stops the run like Ctrl-C: the control plane and the operator are stopped too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    bin_dir = controlplane.find_bin_dir()
    work = Path(tempfile.mkdtemp(prefix="kubeshot-bench-"))
    cp = controlplane.ControlPlane(bin_dir, work / "cp")
    cp.start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}"]
        crds = [a for f in sorted((ROOT / "crds").glob("*.yaml")) for a in ("-f", str(f))]
        subprocess.run([*kubectl, "apply", "--server-side", *crds], check=True, capture_output=True)
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
            check=True,
            capture_output=True,
        )
        namespace = "bench"
        subprocess.run(
            [*kubectl, "create", "namespace", namespace], check=True, capture_output=True
        )
        policy = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": "default", "namespace": namespace},
            "spec": {"limits": {"maxConcurrentJobs": 10000}},
        }
        subprocess.run(
            [*kubectl, "apply", "-f", "-"], input=json.dumps(policy).encode(), check=True
        )
        port = free_port()
        env = {
            **cp.env(),
            "KUBESHOT_OPERATOR_NAMESPACES": json.dumps([namespace]),
            "KUBESHOT_OPERATOR_LEASE_NAMESPACE": namespace,
            "KUBESHOT_OPERATOR_HTTP_HOST": "127.0.0.1",
            "KUBESHOT_OPERATOR_HTTP_PORT": str(port),
        }
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            [str(Path(sys.executable).parent / "kubeshot"), "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while b"acquired by" not in (work / "operator.log").read_bytes():
            if time.monotonic() > deadline or operator.poll() is not None:
                raise RuntimeError((work / "operator.log").read_text())
            time.sleep(0.1)
        time.sleep(1)  # the initial listing
        figures = asyncio.run(Bench(cp, namespace).run(args.jobs))
        rss = rss_mib(operator.pid)
    finally:
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            operator.wait(30)
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"operator bench ({os.cpu_count()} CPUs, {args.jobs} jobs at once)")
    print(
        f"  low load (20 sequential jobs): create→pod p50 {figures['low_p50_ms']:.0f} ms, "
        f"p95 {figures['low_p95_ms']:.0f} ms  (target p50 <= 100 ms)"
    )
    print(
        f"  burst: {args.jobs} jobs created in {figures['create_seconds']:.2f} s, "
        f"every pod after {figures['all_pods_seconds']:.2f} s → "
        f"{figures['jobs_per_second']:.0f} jobs/s  (target >= 50 jobs/s)"
    )
    print(
        f"  burst create→pod p50 {figures['burst_p50_ms']:.0f} ms, "
        f"p95 {figures['burst_p95_ms']:.0f} ms"
    )
    print(
        f"  API server alone, same CaptureJob+Secret+Pod writes from 50 clients: "
        f"{figures['baseline_per_second']:.0f} jobs/s → operator at "
        f"{figures['jobs_per_second'] / figures['baseline_per_second']:.0%} of it"
    )
    print(f"  operator RSS at the end: {rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator throughput on the cluster tier: 500 CaptureJobs created at once → 500 capture pods.

Starts the test control plane (testenv/controlplane.py) and a real `kubeshot operator`, creates
one ScreenshotPolicy with a high `maxConcurrentJobs`, then:
  1. low load: 20 jobs one after another, each waiting for its pod (create→pod latency),
  2. burst: N jobs created at once (default 500) by 50 concurrent clients.
Pod appearance is timed from a watch on pods. Prints jobs/s until every pod exists, create→pod
p50/p95 for both runs, the operator's RSS at the end, and per CaptureJob of both runs its CPU
time and the API server's writes (apiserver_request_total, by resource and verb; no kubelet
runs here, so what a pod's life writes after its creation is not in them).

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WRITES = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, cp: Any, namespace: str, operator_pid: int) -> None:
        self.cp = cp
        self.namespace = namespace
        self.operator_pid = operator_pid
        self.writes_per_job: dict[str, float] = {}
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

    async def writes(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """The API server's write requests so far, by `resource verb`."""
        from prometheus_client.parser import text_string_to_metric_families

        async with session.get(f"{self.cp.server}/metrics") as response:
            text = await response.text()
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_total") and labels.get("verb") in WRITES:
                    key = f"{labels.get('resource', '?')} {labels['verb']}"
                    counts[key] = counts.get(key, 0) + sample.value
        return counts

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
            writes_before = await self.writes(session)
            cpu_before = cpu_seconds(self.operator_pid)
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
            await asyncio.sleep(2)  # the status writes that follow the last pod
            cpu = cpu_seconds(self.operator_pid) - cpu_before
            writes_after = await self.writes(session)
            self.writes_per_job = {
                key: (n - writes_before.get(key, 0)) / (jobs + 20)
                for key, n in sorted(writes_after.items())
                if n > writes_before.get(key, 0)
            }
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
            "cpu_ms_per_job": cpu * 1000 / (jobs + 20),
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
        for _ in range(5):  # a fresh API server's discovery may not list CRDs yet
            waited = subprocess.run(
                [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
                capture_output=True,
            )
            if waited.returncode == 0:
                break
            time.sleep(1)
        waited.check_returncode()
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
        bench = Bench(cp, namespace, operator.pid)
        figures = asyncio.run(bench.run(args.jobs))
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
    print(f"  operator CPU per CaptureJob: {figures['cpu_ms_per_job']:.1f} ms")
    total = sum(bench.writes_per_job.values())
    print(f"  API server writes per CaptureJob: {total:.2f}")
    for key, n in bench.writes_per_job.items():
        print(f"    {key}: {n:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator throughput on the cluster tier: 500 CaptureJobs created at once → 500 capture pods.

Starts the test control plane (testenv/controlplane.py) and a real `kubeshot operator`, creates
one ScreenshotPolicy with a high `maxConcurrentJobs`, then:
  1. low load: 20 jobs one after another, each waiting for its pod (create→pod latency),
  2. burst: N jobs created at once (default 500) by 50 concurrent clients.
  3. the API server alone: N jobs' worth of the very writes the operator makes per job (from
     its builders, in its order), by 50 concurrent clients: the ceiling the burst is measured
     against (the bench asserts that both made the same writes per job).
Pod appearance is timed from a watch on pods. Prints jobs/s until every pod exists, create→pod
p50/p95 for both runs, the operator's RSS at the end, and per CaptureJob of both runs its CPU
time and the API server's writes (apiserver_request_total, by resource and verb; no kubelet
runs here, so what a pod's life writes after its creation is not in them).

    python bench/operator.py [--jobs 500] [--cpus shared|separate]

`--cpus separate` gives the control plane (etcd, kube-apiserver) the first CPU to itself and
puts the operator and this bench's client on the second, in every phase: as in a cluster, where
the API server runs on control-plane nodes and the operator and its users elsewhere, so that the
ratio measures how well the operator keeps the API server busy rather than which process won
the shared CPUs (the client's own writes of the baseline do not cost the API server's CPU
either). The
default, `shared`, lets them all share every CPU (the operator's CPU is then taken from the
API server's: on 2 CPUs that alone caps the ratio near control-plane ms / (control-plane ms +
operator ms) per job).

Targets (issue 19): burst >= 90% of the API server alone; low-load p50 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
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

from tests.support import controlplane, free_port

ROOT = Path(__file__).resolve().parents[1]
API = "/apis/kubeshot.dev/v1alpha1"


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


JSON = "application/json"
JOB_WRITES = ("capturejobs ", "secrets ", "pods ", "events ")
POLICY_SPEC = {"limits": {"maxConcurrentJobs": 10000}}


def job_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "CaptureJob",
        "metadata": {"name": name},
        "spec": {"html": "<p>bench</p>"},
    }


class Bench:
    def __init__(self, cp: Any, namespace: str, operator_pid: int) -> None:
        self.cp = cp
        self.namespace = namespace
        self.operator_pid = operator_pid
        self.writes_per_job: dict[str, float] = {}
        self.baseline_writes: dict[str, float] = {}
        self.baseline_order: list[str] = []
        self.baseline_cpu = (0.0, 0.0)  # the bench's, the control plane's
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

    async def settled_writes(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """The API server's writes once those that come with jobs stopped for a second (<= 60 s)."""
        writes = await self.writes(session)
        for _ in range(60):
            await asyncio.sleep(1)
            writes, previous = await self.writes(session), writes
            if per_job(writes) == per_job(previous):
                break
        return writes

    async def create_job(self, session: aiohttp.ClientSession, name: str) -> float:
        started = time.monotonic()
        url = f"{self.cp.server}{API}/namespaces/{self.namespace}/capturejobs"
        async with session.post(url, json=job_body(name)) as response:
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
            cp_before = self.cp_cpu()
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
            writes_after = await self.settled_writes(session)  # Events follow the last pod
            cpu = cpu_seconds(self.operator_pid) - cpu_before
            cp_cpu = self.cp_cpu() - cp_before
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
            "cp_cpu_ms_per_job": cp_cpu * 1000 / (jobs + 20),
        }

    async def baseline(self, session: aiohttp.ClientSession, jobs: int) -> float:
        """The API server alone: per job the writes the operator makes, from its own builders,
        in its order (the CaptureJob as the bench creates it, then the operator's), by 50
        clients at once; no operator, no watch. The writes are built before the clock starts
        (the job's uid and resourceVersion filled in as its creation answers), so that the
        bench's own CPU is not what limits them; they are measured like the operator's."""
        from kubeshot.api import CaptureJobSpec, ScreenshotPolicySpec
        from kubeshot.kube.names import jobs_path
        from kubeshot.operator import JobRef, OperatorSettings, build_pod, credentials
        from kubeshot.operator.reconciling import claim_patch, running_status, started_event
        from kubeshot.operator.views import JobView

        namespace, uid, version = "baseline", "uid-to-come", "version-to-come"
        url = f"{self.cp.server}/api/v1/namespaces"
        async with session.post(url, json={"metadata": {"name": namespace}}) as response:
            assert response.status == 201, await response.text()
        settings = OperatorSettings()
        policy = ScreenshotPolicySpec.model_validate(POLICY_SPEC)
        options = CaptureJobSpec.model_validate(job_body("base")["spec"]).capture_options()

        async def writes_of(name: str) -> list[tuple[str, str, str]]:
            """The operator's writes for the job `name` once created: (method, path, body)."""
            body = job_body(name)
            body["metadata"].update(
                namespace=namespace, uid=uid, resourceVersion=version, generation=1
            )
            view = JobView.from_body(body)
            job = JobRef(name, namespace, uid)
            pod = build_pod(job, 1, view.policy, policy, options, settings)
            pod_name, token = pod["metadata"]["name"], secrets.token_urlsafe(32)
            patch = claim_patch(running_status(view, pod_name, 1, token), view)
            made = Recorder()
            await credentials.ensure_secret(
                made, settings, job, view.policy, options, policy, token, None
            )
            writes = [("PATCH", jobs_path(namespace, name) + "/status", patch)]
            writes += [("POST", path, manifest) for path, manifest in made.created]
            writes.append(("POST", f"/api/v1/namespaces/{namespace}/pods", pod))
            event = started_event(view, 1, pod_name)
            writes.append(("POST", f"/api/v1/namespaces/{namespace}/events", event))
            return [(method, path, json.dumps(body)) for method, path, body in writes]

        names = [f"base-{i:04d}" for i in range(jobs)]
        planned = {name: await writes_of(name) for name in names}
        self.baseline_order = [f"{m} {p.split('/')[-1]}" for m, p, _ in planned[names[0]]]
        slots = asyncio.Semaphore(50)

        async def send(method: str, path: str, data: str) -> bytes:
            patch = method == "PATCH"
            headers = {"Content-Type": "application/merge-patch+json" if patch else JSON}
            url = f"{self.cp.server}{path}"
            async with session.request(method, url, data=data, headers=headers) as response:
                if response.status != (200 if patch else 201):
                    raise RuntimeError(f"{path}: {response.status} {await response.text()}")
                return await response.read()

        async def one(name: str) -> None:
            async with slots:
                path = f"{API}/namespaces/{namespace}/capturejobs"
                created = json.loads(await send("POST", path, json.dumps(job_body(name))))
                meta = created["metadata"]
                for method, path, data in planned[name]:
                    data = data.replace(uid, meta["uid"]).replace(version, meta["resourceVersion"])
                    await send(method, path, data)

        before, cpu = await self.writes(session), (time.process_time(), self.cp_cpu())
        begin = time.monotonic()
        await asyncio.gather(*(one(name) for name in names))
        rate = jobs / (time.monotonic() - begin)
        self.baseline_cpu = (time.process_time() - cpu[0], self.cp_cpu() - cpu[1])
        after = await self.writes(session)
        self.baseline_writes = {
            key: (n - before.get(key, 0)) / jobs
            for key, n in sorted(after.items())
            if n > before.get(key, 0)
        }
        return rate

    def cp_cpu(self) -> float:
        """CPU seconds so far of the control plane (kube-apiserver, etcd, controller-manager)."""
        return sum(cpu_seconds(process.popen.pid) for process in self.cp.processes)


class Recorder:
    """Takes the place of the operator's KubeClient to keep what it would create: the request
    Secret as `credentials.ensure_secret` makes it (a first attempt reads nothing)."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict[str, Any]]] = []

    async def create_or_adopt(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self.created.append((path, body))
        return body, True


def per_job(writes: dict[str, float]) -> dict[str, int]:
    """The writes that come with each CaptureJob (not the Lease's, not the policy's)."""
    return {k: round(n) for k, n in writes.items() if k.startswith(JOB_WRITES) and round(n)}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` on `cpus` (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--cpus", choices=("shared", "separate"), default="shared")
    args = parser.parse_args()
    if args.cpus == "separate" and len(os.sched_getaffinity(0)) < 2:
        parser.error("--cpus separate needs two CPUs")
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
            "spec": POLICY_SPEC,
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
            "KUBESHOT_OPERATOR_ASSIGNMENT_HOST": "127.0.0.1",
            "KUBESHOT_OPERATOR_ASSIGNMENT_PORT": str(free_port()),
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
        if args.cpus == "separate":
            first, second, *_ = sorted(os.sched_getaffinity(0))
            for proc in cp.processes:
                pin(proc.popen.pid, {first})
            pin(os.getpid(), {second})
            pin(operator.pid, {second})
        bench = Bench(cp, namespace, operator.pid)
        figures = asyncio.run(bench.run(args.jobs))
        rss = rss_mib(operator.pid)
    finally:
        if operator is not None:
            operator.send_signal(signal.SIGTERM)
            operator.wait(30)
        cp.stop()
        shutil.rmtree(work, ignore_errors=True)
    where = {
        "shared": "every process on every CPU",
        "separate": "control plane on one CPU, the operator and the client on another",
    }[args.cpus]
    print(f"operator bench ({os.cpu_count()} CPUs: {where}; {args.jobs} jobs at once)")
    print(
        f"  low load (20 sequential jobs): create→pod p50 {figures['low_p50_ms']:.0f} ms, "
        f"p95 {figures['low_p95_ms']:.0f} ms  (target p50 <= 50 ms)"
    )
    print(
        f"  burst: {args.jobs} jobs created in {figures['create_seconds']:.2f} s, "
        f"every pod after {figures['all_pods_seconds']:.2f} s → "
        f"{figures['jobs_per_second']:.0f} jobs/s"
    )
    print(
        f"  burst create→pod p50 {figures['burst_p50_ms']:.0f} ms, "
        f"p95 {figures['burst_p95_ms']:.0f} ms"
    )
    ours, alone = per_job(bench.writes_per_job), per_job(bench.baseline_writes)
    print(f"  writes per CaptureJob: operator {ours}; API server alone {alone}")
    print(
        f"  API server alone, the same {sum(alone.values())} writes per job from 50 clients "
        f"({', '.join(['POST capturejobs', *bench.baseline_order])}): "
        f"{figures['baseline_per_second']:.0f} jobs/s → operator at "
        f"{figures['jobs_per_second'] / figures['baseline_per_second']:.0%} of it (target >= 90%)"
    )
    client, server = (seconds * 1000 / args.jobs for seconds in bench.baseline_cpu)
    print(
        f"  CPU per job: control plane {figures['cp_cpu_ms_per_job']:.1f} ms with the "
        f"operator, {server:.1f} ms alone (the bench's client alone: {client:.1f} ms)"
    )
    print(f"  operator RSS at the end: {rss:.0f} MiB")
    print(f"  operator CPU per CaptureJob: {figures['cpu_ms_per_job']:.1f} ms")
    total = sum(bench.writes_per_job.values())
    print(f"  API server writes per CaptureJob: {total:.2f}")
    for key, n in bench.writes_per_job.items():
        print(f"    {key}: {n:.2f}")
    if ours != alone:
        print("  the operator's writes per job are not the baseline's: the ratio is meaningless")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

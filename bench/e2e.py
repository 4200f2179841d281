"""End to end on the node tier: cold and warm capture pods and the gateway's backends, in one run.

Starts the test control plane and a node (testenv/controlplane.py, testenv/node.py; root), the
capture image from testenv/image.sh (or --archive), a real `kubeshot operator` (its assignment
endpoint for warm pods, like the gateway, on the node link's host address), and `kubeshot serve
--backend kubernetes` there (the pods upload to it). Then, for the same small inline page, each
measured for N jobs one after another (after one that warms the node) and for a burst of B at
once, p50/p95:
  1. cold pods (ScreenshotPolicy `default`): CaptureJob created → Succeeded (watches on the jobs
     and their pods), split into job → pod created (operator), pod start (pod created →
     container running: scheduling, sandbox, CNI, container), the container's run (Python,
     Chromium, capture, upload) and exit → Succeeded (kubelet status, operator);
  2. a synchronous POST /v1/screenshot through the gateway's kubernetes backend (a CaptureJob, a
     cold pod, the upload, the artifact in the answer);
  3. the idle cost of one warm pod of policy `warm` (the same limits, runtime.warmPods
     WARM_PODS): its cgroup's memory (usage and RSS) and the CPU seconds it uses in 10 s idling;
  4. warm pods: 1 and 2 again under policy `warm`. Each measurement starts with a full pool (its
     pods running and asking for a job); within it jobs run as users' would: nothing waits for
     the pool to refill, and a job that finds no pod asking takes a cold pod. How many ran in a
     warm pod is printed beside the figures (the synchronous POSTs' pods are told by their jobs'
     status.podName, as the jobs'), and how long after the burst the pool's pods all ask for a
     job again (the operator's kubeshot_operator_warm_pods_asking); then the synchronous POSTs
     once more, each sent when the whole pool asks (as at low load: back to back, every used
     pod's replacement starts Chromium beside the next capture, on this machine's 2 CPUs);
  5. the local backend (`kubeshot serve`, its warm worker pool) answering the same POST.
Both policies are the default but for their 1 GiB memory limit: maxConcurrentJobs 4, so a burst
queues as it would in a cluster. The gateways' per-identity limit (and fair share) and the local
backend's queue hold the whole burst.

    sudo .venv/bin/python bench/e2e.py [--jobs 20] [--burst 20] [--archive capture-<sha>.tar]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from kubeshot.kube import names
from tests.cluster.operator.conftest import launch_gateway, stop_gateway
from tests.support import controlplane, free_port, metric_value

ROOT = Path(__file__).resolve().parents[1]
KUBESHOT = Path(sys.executable).parent / "kubeshot"
API = "/apis/kubeshot.dev/v1alpha1"
NAMESPACE = "bench-e2e"
PAGE = "<html><body><h1>kubeshot e2e</h1><p>a small page</p></body></html>"
TOKEN = "bench-e2e-token-0123456789"
PNG = b"\x89PNG\r\n\x1a\n"
LIMITS = {"memory": "1Gi", "timeoutSeconds": 60}
WARM_POLICY = "warm"
WARM_PODS = 4
# A warm pod asks for a job once Chromium runs, a second or two after its container starts:
# a pool is full when its pods have run this long.
WARM_SETTLE_SECONDS = 5.0
IDLE_SECONDS = 10.0


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


nodes = _load("testenv_node", ROOT / "testenv" / "node.py")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watch:
    """When each object of a collection was first seen in a given state (client-side clock)."""

    def __init__(self, cp: Any, path: str, state: Callable[[dict[str, Any]], list[str]]) -> None:
        self.cp, self.path, self.state = cp, path, state
        self.seen: dict[tuple[str, str], float] = {}
        self.stopped = threading.Event()
        deadline = time.monotonic() + 60
        while not (listed := cp.get(path)):  # a CRD just established may not be served yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"GET {path} answered nothing for 60 s")
            time.sleep(0.5)
        version = listed["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self.thread.start()

    def _run(self, version: str) -> None:
        while not self.stopped.is_set():
            url = f"{self.cp.server}{self.path}?watch=1&timeoutSeconds=2&resourceVersion={version}"
            try:
                with urllib.request.urlopen(url, context=self.cp.ssl_context(), timeout=30) as r:
                    for line in r:
                        now = time.monotonic()
                        obj = json.loads(line)["object"]
                        version = obj["metadata"].get("resourceVersion", version)
                        for label in self.state(obj):
                            self.seen.setdefault((obj["metadata"]["name"], label), now)
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)

    def wait(self, name: str, labels: tuple[str, ...], timeout: float = 300) -> tuple[str, float]:
        """The first of `labels` seen for `name`, and when."""
        deadline = time.monotonic() + timeout
        while True:
            for label in labels:
                if (name, label) in self.seen:
                    return label, self.seen[(name, label)]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never {' or '.join(labels)}")
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def pod_states(pod: dict[str, Any]) -> list[str]:
    labels = ["created"]
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        labels += [state for state in ("running", "terminated") if state in status["state"]]
    return labels


def job_states(job: dict[str, Any]) -> list[str]:
    return [(job.get("status") or {}).get("phase", "Pending")]


@dataclass
class JobTimes:
    """One CaptureJob's moments (time.monotonic())."""

    created: float
    pod_created: float
    running: float
    exited: float
    done: float

    def phases(self) -> dict[str, float]:
        return {
            "total": self.done - self.created,
            "to_pod": self.pod_created - self.created,
            "pod_start": self.running - self.pod_created,
            "container": self.exited - self.running,
            "report": self.done - self.exited,
        }


class Cluster:
    """The bench's namespace on the node: its jobs and pods watched, CaptureJobs created."""

    def __init__(self, cp: Any) -> None:
        self.cp = cp
        self.pods = Watch(cp, f"/api/v1/namespaces/{NAMESPACE}/pods", pod_states)
        self.jobs = Watch(cp, f"{API}/namespaces/{NAMESPACE}/capturejobs", job_states)

    def create(self, name: str, policy: str) -> float:
        job = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"html": PAGE, "format": "png", "retries": 0, "policyRef": policy},
        }
        created = time.monotonic()
        status, body = self.cp.request("POST", f"{API}/namespaces/{NAMESPACE}/capturejobs", job)
        assert status == 201, body
        return created

    def settled(self, name: str, created: float) -> JobTimes:
        phase, done = self.jobs.wait(name, ("Succeeded", "Failed"))
        job = self.cp.get(f"{API}/namespaces/{NAMESPACE}/capturejobs/{name}")
        if phase != "Succeeded":
            raise RuntimeError(f"{name} failed: {job}")
        pod = job["status"]["podName"]
        return JobTimes(
            created,
            self.pods.wait(pod, ("created",))[1],
            self.pods.wait(pod, ("running",), timeout=5)[1],
            self.pods.wait(pod, ("terminated",), timeout=5)[1],
            done,
        )

    def warm_pool(
        self, size: int, settle: float = WARM_SETTLE_SECONDS, timeout: float = 300
    ) -> list[dict[str, Any]]:
        """Once policy `warm` has `size` idle pods (no job's) that have run for `settle`
        seconds: those pods."""
        selector = f"{names.WARM}=true,{names.POLICY}={WARM_POLICY},!{names.JOB_UID}"
        path = f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={selector}"
        deadline = time.monotonic() + timeout
        while True:
            ready = []
            for pod in self.cp.get(path)["items"]:
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    started = (status["state"].get("running") or {}).get("startedAt")
                    if started and time.time() - _epoch(started) >= settle:
                        ready.append(pod)
            if len(ready) >= size:
                return ready
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ready)} of {size} warm pods ready after {timeout} s")
            time.sleep(0.5)

    def job_pods(self) -> dict[str, str]:
        """Every CaptureJob of the namespace (the gateway's too) → its pod."""
        found = self.cp.get(f"{API}/namespaces/{NAMESPACE}/capturejobs")["items"]
        return {j["metadata"]["name"]: (j.get("status") or {}).get("podName", "") for j in found}

    def stop(self) -> None:
        self.pods.stop()
        self.jobs.stop()


def asking(metrics_port: int, size: int, timeout: float = 300) -> None:
    """Wait until `size` warm pods ask the operator for a job (Chromium started in each): its
    kubeshot_operator_warm_pods_asking."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
            text = answer.read().decode()
        if metric_value(text, "kubeshot_operator_warm_pods_asking") >= size:
            return
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {size} warm pods asking after {timeout} s")


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def is_warm(pod: str) -> bool:
    return f"{WARM_POLICY}-warm-" in pod


def sequential_jobs(cluster: Cluster, prefix: str, jobs: int, policy: str) -> list[JobTimes]:
    """`jobs` CaptureJobs one after another, after one that warms the node (page cache, the
    first sandbox), which is not counted."""
    measured = []
    for i in range(jobs + 1):
        name = f"{prefix}-{i}"
        times = cluster.settled(name, cluster.create(name, policy))
        split = ", ".join(f"{k} {v:.2f}s" for k, v in times.phases().items())
        if times.pod_created < times.created:  # the pod was there before its job
            split = f"total {times.phases()['total']:.2f}s in a warm pod"
        print(f"  {name}: {split}", file=sys.stderr)
        if i:
            measured.append(times)
    return measured


def burst_jobs(cluster: Cluster, prefix: str, jobs: int, policy: str) -> list[JobTimes]:
    """`jobs` CaptureJobs created at once, each timed from its own creation."""
    names = [f"{prefix}-{i}" for i in range(jobs)]
    created = {name: cluster.create(name, policy) for name in names}
    return [cluster.settled(name, created[name]) for name in names]


def post_screenshot(url: str, policy: str | None = None) -> float:
    """One synchronous POST /v1/screenshot of the page: seconds to the whole PNG."""
    body = json.dumps({"html": PAGE, "format": "png"}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    query = f"?policy={policy}" if policy else ""
    request = urllib.request.Request(f"{url}/v1/screenshot{query}", body, headers, method="POST")
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=300) as answer:
        assert answer.read().startswith(PNG)
    return time.monotonic() - started


def sequential_posts(url: str, requests: int, policy: str | None = None) -> list[float]:
    return [post_screenshot(url, policy) for _ in range(requests + 1)][1:]  # the first warms up


def burst_posts(url: str, requests: int, policy: str | None = None) -> list[float]:
    with ThreadPoolExecutor(requests) as pool:
        return list(pool.map(lambda _: post_screenshot(url, policy), range(requests)))


def pod_cgroup(controller: str, uid: str) -> Path:
    """The pod's cgroup folder of a cgroup v1 controller (the node's kubelet: cgroupfs driver),
    or of the unified hierarchy (controller "")."""
    root = Path("/sys/fs/cgroup") / controller
    found = [*root.glob(f"kubepods/pod{uid}"), *root.glob(f"kubepods/*/pod{uid}")]
    if not found:
        raise FileNotFoundError(f"no cgroup of pod {uid} under {root}/kubepods")
    return found[0]


def idle_cost(pod: dict[str, Any]) -> dict[str, float]:
    """One idle warm pod: its memory (the cgroup's usage, and its processes' RSS) and the CPU
    seconds it used over IDLE_SECONDS."""
    uid = pod["metadata"]["uid"]
    if Path("/sys/fs/cgroup/memory").is_dir():  # cgroup v1, as testenv/node.py runs the kubelet
        memory, cpu = pod_cgroup("memory", uid), pod_cgroup("cpuacct", uid)
        usage, rss_key = memory / "memory.usage_in_bytes", "total_rss"
        cpu_file, cpu_scale = cpu / "cpuacct.usage", 1e9  # nanoseconds
    else:
        memory = cpu = pod_cgroup("", uid)
        usage, rss_key = memory / "memory.current", "anon"
        cpu_file, cpu_scale = cpu / "cpu.stat", 1e6  # usage_usec

    def cpu_seconds() -> float:
        text = cpu_file.read_text()
        value = text.split()[1] if text.startswith("usage_usec") else text.strip()
        return int(value) / cpu_scale

    before = cpu_seconds()
    time.sleep(IDLE_SECONDS)
    stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
    return {
        "memory_mib": int(usage.read_text()) / 2**20,
        "rss_mib": int(stat[rss_key]) / 2**20,
        "cpu_seconds": cpu_seconds() - before,
    }


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2):
                return
        except (OSError, urllib.error.HTTPError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.2)


def write_tokens(work: Path) -> Path:
    tokens = work / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    entry = {"name": "bench", "sha256": digest, "namespace": NAMESPACE}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    return tokens


def node_tier(cp: Any, image: str, jobs: int, burst: int, work: Path) -> dict[str, Any]:
    status, body = cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    assert status == 201, body
    bin_dir = controlplane.find_bin_dir()
    crds = [
        ROOT / "crds" / f
        for f in ("kubeshot.dev_screenshotpolicies.yaml", "kubeshot.dev_capturejobs.yaml")
    ]
    kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}"]
    subprocess.run(
        [*kubectl, "apply", "--server-side", *[a for f in crds for a in ("-f", str(f))]],
        check=True,
        capture_output=True,
    )
    for attempt in range(3):  # a loaded API server may not list the CRDs just applied yet
        waited = subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
            capture_output=True,
            text=True,
        )
        if waited.returncode == 0:
            break
        print(f"kubectl wait: {waited.stderr.strip()}", file=sys.stderr)
        if attempt == 2:
            raise RuntimeError("the CRDs were not established")
        time.sleep(2)
    # The gateway on the node link's host address, plain HTTP as the local backend below.
    gateway, gateway_log, port, upload_port = launch_gateway(
        cp, NAMESPACE, write_tokens(work), work, host=nodes.HOST_ADDRESS,
        env={"HTTPS_ONLY": "false", "KUBESHOT_MAX_CAPTURES_PER_IDENTITY": str(burst)},
    )  # fmt: skip
    gateway_url = f"http://{nodes.HOST_ADDRESS}:{port}"
    assignment_port, metrics_port = free_port(), free_port()
    env = {**cp.env(), "PYTHONUNBUFFERED": "1"}
    env.update({
        f"KUBESHOT_OPERATOR_{k}": str(v)
        for k, v in {
            "NAMESPACES": json.dumps([NAMESPACE]),
            "LEASE_NAMESPACE": NAMESPACE,
            "UPLOAD_URL": f"http://{nodes.HOST_ADDRESS}:{upload_port}/v1/internal/uploads",
            "CAPTURE_IMAGE": image,
            "IMAGE_PULL_POLICY": "Never",
            "GATEWAY_CIDRS": json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
            # Warm pods ask this host for their jobs, on the link, as the gateway's uploads.
            "ASSIGNMENT_URL": f"http://{nodes.HOST_ADDRESS}:{assignment_port}/v1/assignments",
            "ASSIGNMENT_HOST": nodes.HOST_ADDRESS,
            "ASSIGNMENT_PORT": assignment_port,
            "OPERATOR_CIDRS": json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": metrics_port,
        }.items()
    })  # fmt: skip
    log = (work / "operator.log").open("wb")
    operator = subprocess.Popen(
        [str(KUBESHOT), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    create_policy(cp, "default", {"limits": LIMITS})
    cluster = Cluster(cp)
    try:
        wait_ready(gateway_url, gateway, gateway_log)
        measured: dict[str, Any] = {}

        def measure(key: str, run: Callable[[], list[Any]], warm: bool = False) -> None:
            if warm:  # each warm measurement starts with a full pool
                cluster.warm_pool(WARM_PODS)
            before = cluster.job_pods()
            measured[key] = run()
            pods = [pod for job, pod in cluster.job_pods().items() if job not in before]
            measured[f"{key} warm"] = (sum(map(is_warm, pods)), len(pods))
            print(f"  {key}: {summary(measured[key])}, {len(pods)} jobs "
                  f"({measured[f'{key} warm'][0]} in warm pods)", file=sys.stderr)  # fmt: skip

        measure("sequential", lambda: sequential_jobs(cluster, "seq", jobs, "default"))
        measure("burst", lambda: burst_jobs(cluster, "burst", burst, "default"))
        measure("gw seq", lambda: sequential_posts(gateway_url, jobs))
        measure("gw burst", lambda: burst_posts(gateway_url, burst))
        # The warm pool only now: its idle pods take no CPU or memory from the cold runs.
        create_policy(cp, WARM_POLICY, {"limits": LIMITS, "runtime": {"warmPods": WARM_PODS}})
        # Idling, not starting: measured from a pod that has waited for a job for a while.
        measured["idle"] = idle_cost(cluster.warm_pool(WARM_PODS, settle=3 * IDLE_SECONDS)[0])
        print(f"  idle warm pod: {measured['idle']}", file=sys.stderr)
        measure("warm seq", lambda: sequential_jobs(cluster, "wseq", jobs, WARM_POLICY), True)
        measure("warm burst", lambda: burst_jobs(cluster, "wburst", burst, WARM_POLICY), True)
        emptied = time.monotonic()
        asking(metrics_port, WARM_PODS)
        measured["refill"] = time.monotonic() - emptied
        print(f"  pool asking again {measured['refill']:.1f}s after the burst", file=sys.stderr)
        measure("gw warm seq", lambda: sequential_posts(gateway_url, jobs, WARM_POLICY), True)

        def spaced() -> list[float]:  # as at low load: every pod of the pool asks first
            seconds = []
            for _ in range(jobs + 1):
                asking(metrics_port, WARM_PODS)
                time.sleep(1)  # the used pod's end and its replacement's start behind it
                seconds.append(post_screenshot(gateway_url, WARM_POLICY))
            return seconds[1:]

        measure("gw warm spaced", spaced)
        measure("gw warm burst", lambda: burst_posts(gateway_url, burst, WARM_POLICY), True)
        return measured
    finally:
        cluster.stop()
        operator.send_signal(signal.SIGTERM)
        operator.wait(30)
        stop_gateway(gateway, gateway_log)


def create_policy(cp: Any, name: str, spec: dict[str, Any]) -> None:
    policy = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "ScreenshotPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    status, body = cp.request("POST", f"{API}/namespaces/{NAMESPACE}/screenshotpolicies", policy)
    assert status == 201, body


def local_backend(jobs: int, burst: int, work: Path) -> dict[str, list[float]]:
    port = free_port()
    # The queue holds the whole burst (its default, 16, would refuse some with 503).
    env = {**os.environ, "RATE_LIMIT_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    env.update(KUBESHOT_QUEUE_SIZE=str(burst), KUBESHOT_MAX_CAPTURES_PER_IDENTITY=str(burst))
    env["KUBESHOT_FAIR_SHARE"] = "false"  # one caller: its fair share would be half the capacity
    log_path = work / "local-gateway.log"
    argv = [str(KUBESHOT), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--metrics-port", "0"]  # an ephemeral port: nothing here scrapes it
    argv += ["--tokens-file", str(write_tokens(work))]
    with log_path.open("wb") as log:
        gateway = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, gateway, log_path)
        return {"sequential": sequential_posts(url, jobs), "burst": burst_posts(url, burst)}
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)


def summary(values: list[Any]) -> str:
    seconds = [v.phases()["total"] if isinstance(v, JobTimes) else v for v in values]
    return f"p50 {percentile(seconds, 0.5):.2f}s p95 {percentile(seconds, 0.95):.2f}s"


def report(jobs: int, burst: int, node: dict[str, Any], local: dict[str, list[float]]) -> None:
    def cell(values: list[float]) -> str:
        return f"{percentile(values, 0.5):6.2f}s / {percentile(values, 0.95):6.2f}s"

    def row(label: str, sequential: list[float], burst: list[float], hits: str = "") -> None:
        print(f"{label:<46} {cell(sequential)}   {cell(burst)}{hits}")

    def split(times: list[JobTimes], key: str) -> list[float]:
        return [t.phases()[key] for t in times]

    def hits(seq: str, bur: str) -> str:
        counts = [node[f"{key} warm"] for key in (seq, bur)]
        return "   warm pods: " + ", ".join(f"{n}/{of}" for n, of in counts)

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"a small inline page, PNG; load average at the end {load}")
    print(f"{'p50 / p95':<46} {f'{jobs} one after another':>19}   {f'burst of {burst}':>19}")
    seq, bur = node["sequential"], node["burst"]
    row("cold pods: CaptureJob created → Succeeded", split(seq, "total"), split(bur, "total"))
    for key, label in (
        ("to_pod", "  job created → pod created"),
        ("pod_start", "  pod start (→ container running)"),
        ("container", "  container running (Python, Chromium, capture)"),
        ("report", "  exited → job Succeeded"),
    ):
        row(label, split(seq, key), split(bur, key))
    row(f"warm pods ({WARM_PODS}): CaptureJob created → Succeeded",
        split(node["warm seq"], "total"), split(node["warm burst"], "total"),
        hits("warm seq", "warm burst"))  # fmt: skip
    row("POST /v1/screenshot, kubernetes backend (cold)", node["gw seq"], node["gw burst"])
    row("POST /v1/screenshot, kubernetes backend (warm)", node["gw warm seq"],
        node["gw warm burst"], hits("gw warm seq", "gw warm burst"))  # fmt: skip
    spaced = node["gw warm spaced"]
    print(f"{'  the same, each with the pool asking first':<46} {cell(spaced)}   {'':>19}"
          + hits("gw warm spaced", "gw warm spaced").split(",")[0])  # fmt: skip
    row("POST /v1/screenshot, local backend", local["sequential"], local["burst"])
    local_p50 = percentile(local["sequential"], 0.5)
    for kind, key in (
        ("cold", "gw seq"),
        ("warm", "gw warm seq"),
        ("warm, spaced", "gw warm spaced"),
    ):
        ratio = percentile(node[key], 0.5) / local_p50
        print(f"POST /v1/screenshot p50, kubernetes ({kind} pods) / local backend: {ratio:.1f}x")
    idle = node["idle"]
    print(
        f"one idle warm pod: memory {idle['memory_mib']:.0f} MiB (cgroup usage; RSS "
        f"{idle['rss_mib']:.0f} MiB), CPU {idle['cpu_seconds']:.2f} s in {IDLE_SECONDS:.0f} s; "
        f"the pool's {WARM_PODS} pods asking for jobs again {node['refill']:.1f} s after the "
        "warm burst ended"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20, help="measured one after another")
    parser.add_argument("--burst", type=int, default=20, help="created at once")
    parser.add_argument(
        "--archive", type=Path, help="the capture image's archive (default: testenv/image.sh's)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/e2e.py needs root (a kubelet and containerd)", file=sys.stderr)
        return 2
    archive = args.archive or Path(
        subprocess.run(
            ["bash", str(ROOT / "testenv" / "image.sh")], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    image = nodes.archive_ref(archive)
    print(f"capture image {image} from {archive.name}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kubeshot-e2e-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        cp = controlplane.ControlPlane(controlplane.find_bin_dir(), work / "controlplane").start()
        # A loaded machine may take more than the default 120 s to bring the node up.
        node = nodes.Node(cp, controlplane.find_bin_dir(), work / "node", start_timeout=600)
        try:
            started = time.monotonic()
            node.start(images=[archive])
            print(f"node ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
            measured = node_tier(cp, image, args.jobs, args.burst, work)
        finally:
            node.stop()
            cp.stop()
        local = local_backend(args.jobs, args.burst, work)
    report(args.jobs, args.burst, measured, local)
    return 0


if __name__ == "__main__":
    sys.exit(main())

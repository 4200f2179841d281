"""Chaos benchmark (issue 19): what survives killed processes, a restarted API server, a stopped
kubelet and overload — one line of numbers per scenario, then a markdown table.

Scenarios (`--scenarios`, comma-separated; all by default):
  operator-kill      operator SIGKILLed every few seconds during a burst of --jobs CaptureJobs
  failover           two operator replicas; the leader SIGKILLed at 1/3 and 2/3 of the burst
  apiserver-restart  kube-apiserver SIGKILLed at 1/3 of the burst, restarted after 2 s
  kubelet-stop       node tier (root): the kubelet stopped for longer than a pod's deadline
  gateway-kill       async jobs accepted, the gateway SIGKILLed and restarted (local and
                     kubernetes backends)
  worker-kill        a capture worker, then a worker's Chromium, SIGKILLed mid-capture
  soak               --soak captures through the gateway (local backend), concurrency 4
  load               4x the local pool's capacity for --load-seconds

The operator scenarios run on the cluster tier's control plane (testenv/controlplane.py) with a
stand-in kubelet (`Completer`): a capture pod "runs" for --pod-seconds and ends with the report a
capture pod writes. Real pods would add only Chromium's CPU to what is measured here: whether
the operator loses or doubles jobs. kubelet-stop needs real pods: it runs on the node tier
(testenv/node.py, the capture image from testenv/image.sh). Duplicates are counted from a watch
on pods: two pods (two uids) for one job uid and attempt.

    sudo .venv/bin/python bench/chaos.py [--scenarios soak,load] [--jobs 200] [--soak 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.*

from kubeshot.api import CaptureOutcome, CaptureReport
from kubeshot.gateway import procs
from kubeshot.kube import names
from kubeshot.operator.building import owning_job
from tests.cluster.conftest import CRD_DIR, KUBESHOT_CRDS, Kubectl, controlplane
from tests.cluster.node.conftest import PodWatch, node_assignments, nodes
from tests.cluster.operator.conftest import (
    API,
    KUBESHOT,
    Cluster,
    Operator,
    Operators,
    launch_gateway,
    operator_env,
)
from tests.gateway.conftest import tagged_processes
from tests.gateway.test_browser_crash import browser_process
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = (
    "operator-kill",
    "failover",
    "apiserver-restart",
    "kubelet-stop",
    "gateway-kill",
    "worker-kill",
    "soak",
    "load",
)
TOKENS = [f"chaos-bench-token-{i:02d}-0123456789" for i in range(18)]
PAGE = "<html><body><h1>kubeshot chaos</h1><p>a small page</p></body></html>"
FINAL = {"Succeeded", "Failed"}
# What a capture pod writes to its termination log when it succeeded (the Completer's pods).
REPORT = json.dumps(
    CaptureOutcome(
        result=CaptureReport(content_type="image/png", bytes=1, sha256="0" * 64, format="png")
    ).to_wire()
)


@dataclass
class Row:
    """One scenario's figures; `ok`: zero lost and zero duplicated (and its own criteria)."""

    scenario: str
    where: str
    jobs: int
    lost: int | None = None
    twice: int | None = None
    drain: float | None = None
    takeover: float | None = None
    other: str = ""
    ok: bool = True

    def line(self) -> str:
        def show(value: float | None, fmt: str = "{}") -> str:
            return "-" if value is None else fmt.format(value)

        return (
            f"| {self.scenario} | {self.where} | {self.jobs} | {show(self.lost)} "
            f"| {show(self.twice)} | {show(self.drain, '{:.1f}')} "
            f"| {show(self.takeover, '{:.1f}')} | {self.other} | {'yes' if self.ok else 'NO'} |"
        )


HEADER = (
    "| scenario | where | jobs | lost | run twice | drain s | takeover s | other figures | ok |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


# ------------------------------------------------------------------------------ the cluster


class Bed:
    """The control plane with the CRDs, and the node, each started once when first needed."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.bin_dir = controlplane.find_bin_dir()
        self._cp: Any = None
        self._node: Any = None
        self.image = ""

    @property
    def cp(self) -> Any:
        if self._cp is None:
            self._cp = controlplane.ControlPlane(self.bin_dir, self.work / "controlplane").start()
            kubectl = Kubectl(
                self.bin_dir / "kubectl", self._cp.kubeconfig, self.work / "kubectl-cache"
            )
            files = [a for name in KUBESHOT_CRDS for a in ("-f", str(CRD_DIR / name))]
            kubectl("apply", "--server-side", *files)
            for _ in range(10):  # a CRD has no conditions yet for a moment: wait fails at once
                wait = ("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
                if kubectl(*wait, check=False).returncode == 0:
                    break
                time.sleep(0.5)
        return self._cp

    def node(self) -> Any:
        if self._node is None:
            built = subprocess.run(
                ["bash", str(ROOT / "testenv" / "image.sh")],
                check=True,
                capture_output=True,
                text=True,
            )
            archive = Path(built.stdout.strip().splitlines()[-1])
            self.image = nodes.archive_ref(archive)
            node = nodes.Node(self.cp, self.bin_dir, self.work / "node")
            node.start(images=[archive])
            self._node = node
        return self._node

    def cluster(self, namespace: str) -> Cluster:
        status, body = self.cp.request(
            "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}}
        )
        assert status == 201, body
        return Cluster(self.cp, None, namespace)

    def close(self) -> None:
        if self._node is not None:
            self._node.stop()
        if self._cp is not None:
            self._cp.stop()


class Completer:
    """The stand-in kubelet: each capture pod the watch sees ends Succeeded after `seconds`,
    with a capture pod's report, once per pod uid (runs: per job uid and attempt)."""

    def __init__(self, cluster: Cluster, watch: PodWatch, seconds: float) -> None:
        self.cluster, self.watch, self.seconds = cluster, watch, seconds
        self.seen: dict[str, float] = {}
        self.done: set[str] = set()
        self.ran: dict[str, set[str]] = {}  # job uid → the attempts whose pod ran
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        listed_at = 0.0
        while not self.stopped.wait(0.05):
            if time.monotonic() - listed_at > 2:
                # The watch resumes from a fresh list after a 410 (the API server restarted)
                # without recording what that list holds: a pod created meanwhile shows here.
                listed_at = time.monotonic()
                with contextlib.suppress(OSError, ValueError):
                    for pod in self.cluster.capture_pods():
                        states = self.watch.states.setdefault(pod["metadata"]["name"], [])
                        if pod["metadata"]["uid"] not in {p["metadata"]["uid"] for p in states}:
                            states.append(pod)
            for name, states in list(self.watch.states.items()):
                meta = states[-1]["metadata"]
                uid = meta["uid"]
                if uid in self.done or meta.get("deletionTimestamp"):
                    continue
                if time.monotonic() - self.seen.setdefault(uid, time.monotonic()) < self.seconds:
                    continue
                try:
                    pod = self.cluster.get("pods", name)
                    if pod is None or pod["metadata"]["uid"] != uid:
                        self.done.add(uid)  # gone before it ran
                        continue
                    self.cluster.terminate(name, 0, "Completed", REPORT)
                    self.done.add(uid)
                    owner = owning_job(pod)
                    attempt = meta.get("labels", {}).get(names.ATTEMPT, "?")
                    self.ran.setdefault(owner[1] if owner else "?", set()).add(attempt)
                except (AssertionError, OSError):  # a conflict, or the API server is down
                    continue

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)


def pods_per_attempt(watch: PodWatch) -> dict[tuple[str, str], set[str]]:
    """Pod uids per (job uid, attempt), from every state the watch saw."""
    found: dict[tuple[str, str], set[str]] = {}
    for states in list(watch.states.values()):
        for pod in states:
            owner = owning_job(pod)
            if owner is None:
                continue
            attempt = pod["metadata"].get("labels", {}).get(names.ATTEMPT, "?")
            found.setdefault((owner[1], attempt), set()).add(pod["metadata"]["uid"])
    return found


def job_phases(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {job["metadata"]["name"]: job for job in cluster.list("capturejobs", API)}


def create_jobs(cluster: Cluster, count: int, **spec: Any) -> list[str]:
    names_ = [f"chaos-{i:04d}" for i in range(count)]

    def create(name: str) -> None:
        cluster.create_job(name, html="<p>chaos</p>", format="png", **spec)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, names_))
    return names_


@dataclass
class Burst:
    """One burst of CaptureJobs under a disturbance; what the disturbance reads and reports."""

    bed: Bed
    cluster: Cluster
    operators: Operators
    env: Callable[[int], dict[str, str]]
    total: int
    started: float = 0.0
    finished: int = 0
    takeovers: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    live: list[Operator] = field(default_factory=list)
    restarts: int = 0

    def launch(self, wait: bool = True) -> Operator:
        port = free_port()
        operator = self.operators.launch(self.env(port), port, wait=wait)
        self.live.append(operator)
        return operator

    def supervise(self) -> None:
        """What the Deployment does: an operator that exited (it stops when it cannot renew
        its lease, as client-go's leader election does) is started again."""
        for operator in [o for o in self.live if o.proc.poll() is not None]:
            self.live.remove(operator)
            self.launch(wait=False)
            self.restarts += 1

    def leader(self) -> Operator | None:
        return next((o for o in self.live if (o.healthz() or {}).get("leader")), None)

    def kill(self, operator: Operator) -> float:
        """SIGKILL it; seconds until another operator leads (one is started if none lives)."""
        killed = time.monotonic()
        operator.stop(signal.SIGKILL)
        self.live.remove(operator)
        if not self.live:
            self.launch(wait=False)
        while self.leader() is None:
            if time.monotonic() - killed > 60:
                raise TimeoutError("no operator took over within 60 s")
            time.sleep(0.05)
        self.takeovers.append(time.monotonic() - killed)
        return self.takeovers[-1]


def burst(
    bed: Bed,
    scenario: str,
    jobs: int,
    replicas: int,
    disturb: Callable[[Burst], None],
    args: argparse.Namespace,
) -> Row:
    cluster = bed.cluster(f"chaos-{scenario}")
    cluster.create_policy(limits={"maxConcurrentJobs": args.max_concurrent})
    work = bed.work / scenario
    work.mkdir()
    state = Burst(
        bed,
        cluster,
        Operators(work),
        lambda port: operator_env(
            bed.cp, cluster.namespace, "http://127.0.0.1:9/v1/internal/uploads", http_port=port
        ),
        jobs,
    )
    for _ in range(replicas):
        state.launch(wait=False)
    while state.leader() is None:
        time.sleep(0.1)
    watch = PodWatch(bed.cp, cluster.namespace)
    completer = Completer(cluster, watch, args.pod_seconds)
    try:
        state.started = time.monotonic()
        names_ = create_jobs(cluster, jobs)
        deadline = state.started + args.drain_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                listed = job_phases(cluster)
                state.finished = sum(
                    1 for j in listed.values() if (j.get("status") or {}).get("phase") in FINAL
                )
                if state.finished == jobs:
                    break
            state.supervise()
            disturb(state)
            time.sleep(0.2)
        drained = time.monotonic() - state.started
        listed = job_phases(cluster)
    finally:
        completer.stop()
        for operator in state.live:
            operator.stop()
        watch.close()
    return burst_row(
        scenario,
        "cluster tier, stand-in kubelet",
        names_,
        listed,
        watch,
        state,
        drained,
        completer.ran,
    )


def burst_row(
    scenario: str,
    where: str,
    names_: list[str],
    listed: dict[str, dict[str, Any]],
    watch: PodWatch,
    state: Burst,
    drained: float,
    ran: dict[str, set[str]] | None = None,
) -> Row:
    statuses = [(listed.get(n) or {}).get("status") or {} for n in names_]
    lost = sum(1 for s in statuses if s.get("phase") not in FINAL)
    failed = Counter(
        (s.get("failure") or {}).get("reason", "?") for s in statuses if s.get("phase") == "Failed"
    )
    retried = sum(1 for s in statuses if s.get("attempts", 0) > 1)
    twice = sum(1 for uids in pods_per_attempt(watch).values() if len(uids) > 1)
    other = [f"succeeded {sum(1 for s in statuses if s.get('phase') == 'Succeeded')}"]
    other += [f"failed {n} {reason}" for reason, n in failed.items()]
    other += [f"retried {retried}", *state.notes]
    if ran is not None:  # the stand-in kubelet knows which attempts' pods really ran
        other.append(f"pods ran in 2+ attempts of one job {sum(len(a) > 1 for a in ran.values())}")
    if state.restarts:
        other.append(f"operator exits restarted {state.restarts}")
    return Row(
        scenario,
        where,
        len(names_),
        lost,
        twice,
        drained,
        max(state.takeovers) if state.takeovers else None,
        ", ".join(other),
        ok=lost == 0 and twice == 0,
    )


def kill_every(seconds: float) -> Callable[[Burst], None]:
    last = [0.0]

    def disturb(state: Burst) -> None:
        last[0] = last[0] or state.started
        if state.finished == state.total or time.monotonic() - last[0] < seconds:
            return
        leader = state.leader()
        if leader is not None:
            state.kill(leader)
            state.notes[:] = [f"{len(state.takeovers)} kills"]
        last[0] = time.monotonic()

    return disturb


def kill_leader_at(*fractions: float) -> Callable[[Burst], None]:
    pending = list(fractions)

    def disturb(state: Burst) -> None:
        if pending and state.finished >= pending[0] * state.total:
            pending.pop(0)
            leader = state.leader()
            assert leader is not None
            state.kill(leader)
            state.launch(wait=False)  # the killed replica comes back as the standby
            state.notes[:] = [f"{len(state.takeovers)} leader kills"]

    return disturb


def restart_apiserver_at(fraction: float, down: float) -> Callable[[Burst], None]:
    done = [False]

    def disturb(state: Burst) -> None:
        if done[0] or state.finished < fraction * state.total:
            return
        done[0] = True
        cp = state.bed.cp
        old = next(p for p in cp.processes if p.name == "kube-apiserver")
        killed = time.monotonic()
        os.killpg(old.popen.pid, signal.SIGKILL)
        old.popen.wait()
        time.sleep(down)
        new = controlplane.launch("kube-apiserver", old.popen.args, cp.work_dir)
        cp.processes[cp.processes.index(old)] = new
        controlplane.wait_ready(
            new,
            time.monotonic() + 120,
            lambda: cp.get("/api/v1/namespaces/default") is not None,
            120,
            controlplane.ControlPlaneError,
        )
        state.notes[:] = [f"API server down {time.monotonic() - killed:.1f} s"]

    return disturb


def kubelet_stop(bed: Bed, args: argparse.Namespace) -> Row:
    """Real capture pods; the kubelet SIGKILLed once every job is Running, kept down for the
    pods' deadline and 30 s more, then started again."""
    node = bed.node()
    cluster = bed.cluster("chaos-kubelet-stop")
    timeout, grace = 20, 5
    cluster.create_policy(
        limits={"timeoutSeconds": timeout, "maxConcurrentJobs": args.kubelet_jobs}
    )
    work = bed.work / "kubelet-stop"
    work.mkdir()
    # Where the pods upload: the gateway (kubernetes backend) on the node link's host address.
    gateway_proc, log, port, upload_port = launch_gateway(
        bed.cp,
        cluster.namespace,
        tokens_file(work, cluster.namespace),
        work,
        host=nodes.HOST_ADDRESS,
        env={"HTTPS_ONLY": "false"},
    )
    gateway = Gateway(gateway_proc, f"http://{nodes.HOST_ADDRESS}:{port}", log)
    upload_url = f"http://{nodes.HOST_ADDRESS}:{upload_port}/v1/internal/uploads"
    assignments = node_assignments()  # every replica's, as a Service would be
    state = Burst(
        bed,
        cluster,
        Operators(work),
        lambda port: operator_env(
            bed.cp,
            cluster.namespace,
            upload_url,
            http_port=port,
            capture_image=bed.image,
            image_pull_policy="Never",
            gateway_cidrs=json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
            pod_deadline_grace_seconds=grace,
            **assignments,
        ),
        args.kubelet_jobs,
    )
    state.launch()
    watch = PodWatch(bed.cp, cluster.namespace)
    try:
        wait_ready(gateway)
        state.started = time.monotonic()
        # Each capture waits 8 s: the kubelet stops while every one of them is in flight.
        names_ = create_jobs(cluster, args.kubelet_jobs, delayMs=8000)

        def running() -> int:
            return sum(
                1
                for j in job_phases(cluster).values()
                if (j.get("status") or {}).get("phase") == "Running"
            )

        deadline = time.monotonic() + 120
        while running() < len(names_):
            if time.monotonic() > deadline:
                raise TimeoutError("the jobs were never all Running at once")
            time.sleep(0.2)
        kubelet = next(p for p in node.processes if p.name == "kubelet")
        os.killpg(kubelet.popen.pid, signal.SIGKILL)
        kubelet.popen.wait()
        down = timeout + grace + 30
        time.sleep(down)
        # Stuck: still Running the attempt whose pod the stopped kubelet held. A retried attempt
        # is Running too (its new pod waits for a node): that is the recovery, not a stuck job.
        stuck = sum(
            1
            for j in job_phases(cluster).values()
            if (j.get("status") or {}).get("phase") == "Running"
            and (j.get("status") or {}).get("attempts", 0) <= 1
        )
        node.processes[node.processes.index(kubelet)] = controlplane.launch(
            "kubelet", kubelet.popen.args, node.work_dir
        )
        drain_by = time.monotonic() + args.drain_timeout
        listed = job_phases(cluster)
        while time.monotonic() < drain_by:
            with contextlib.suppress(OSError):
                listed = job_phases(cluster)
                if all((j.get("status") or {}).get("phase") in FINAL for j in listed.values()):
                    break
            time.sleep(0.5)
        drained = time.monotonic() - state.started
    finally:
        for operator in state.live:
            operator.stop()
        watch.close()
        gateway.stop()
    state.notes = [f"kubelet down {down} s (pod deadline {timeout + grace} s)"]
    state.notes.append(f"still Running attempt 1 when it came back {stuck}")
    row = burst_row("kubelet-stop", "node tier, real pods", names_, listed, watch, state, drained)
    row.ok = row.ok and stuck == 0
    return row


# ------------------------------------------------------------------------------ the gateway


@dataclass
class Gateway:
    """`kubeshot serve` as a subprocess (the local backend unless `argv` says otherwise)."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def tree(self) -> set[int]:
        return procs.process_tree(self.proc.pid)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.kill()


def tokens_file(work: Path, namespace: str | None = None) -> Path:
    entries = []
    for i, token in enumerate(TOKENS):
        entry = {"name": f"chaos-{i}", "sha256": hashlib.sha256(token.encode()).hexdigest()}
        entries.append(entry | ({"namespace": namespace} if namespace else {}))
    path = work / "tokens.yaml"
    path.write_text(json.dumps({"tokens": entries}))
    return path


def local_gateway(work: Path, **env: str) -> Gateway:
    port = free_port()
    log = work / f"gateway-{port}.log"
    argv = [str(KUBESHOT), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--metrics-port", "0", "--tokens-file", str(tokens_file(work))]
    argv += ["--result-dir", str(work / "results")]
    full_env = {**os.environ, "RATE_LIMIT_ENABLED": "false", "PYTHONUNBUFFERED": "1", **env}
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    gateway = Gateway(proc, f"http://127.0.0.1:{port}", log)
    wait_ready(gateway)
    return gateway


def wait_ready(gateway: Gateway, within: float = 120) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(gateway.url + "/readyz", timeout=2):
                return
        except (OSError, urllib.error.HTTPError):
            if time.monotonic() > deadline or gateway.proc.poll() is not None:
                raise RuntimeError(gateway.log.read_text()[-3000:]) from None
            time.sleep(0.2)


HEADERS = {"Authorization": f"Bearer {TOKENS[0]}", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def client(address: str | None = None) -> Any:
    """A client session; `address`: the loopback address it connects from."""
    connector = aiohttp.TCPConnector(limit=0, local_addr=(address, 0) if address else None)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def screenshot(
    session: aiohttp.ClientSession, gateway: Gateway, token: str = TOKENS[0], **options: Any
) -> tuple[int, str, float, bool]:
    """(status, error code, seconds, Retry-After present) of one POST /v1/screenshot."""
    body = {"html": PAGE, "format": "png", **options}
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    started = time.monotonic()
    try:
        async with session.post(gateway.url + "/v1/screenshot", json=body, headers=headers) as r:
            data = await r.read()
            code = ""
            if r.status != 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    code = json.loads(data)["error"]["code"]
            elif not data.startswith(b"\x89PNG"):
                code = "not-a-png"
            return r.status, code, time.monotonic() - started, "Retry-After" in r.headers
    except aiohttp.ClientError as exc:
        return 0, type(exc).__name__, time.monotonic() - started, False


def vm_rss(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def open_fds(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def sample(gateway: Gateway) -> tuple[int, int, int]:
    """(processes, open file descriptors, RSS bytes) of the gateway's whole tree."""
    tree = gateway.tree
    return len(tree), open_fds(tree), vm_rss(tree)


def soak(work: Path, count: int) -> Row:
    gateway = local_gateway(work, KUBESHOT_WORKERS="2")
    try:

        async def run() -> tuple[Counter[str], list[float], tuple[int, int, int]]:
            async with client() as session:
                for _ in range(4):  # warm: both workers and their spares
                    await screenshot(session, gateway)
                start = sample(gateway)
                outcomes: Counter[str] = Counter()
                times: list[float] = []
                queue = iter(range(count))

                async def loop() -> None:
                    for _ in queue:
                        status, code, seconds, _ = await screenshot(session, gateway)
                        outcomes[f"{status} {code}".strip()] += 1
                        times.append(seconds)

                await asyncio.gather(*(loop() for _ in range(4)))
                return outcomes, times, start

        began = time.monotonic()
        outcomes, times, start = asyncio.run(run())
        elapsed = time.monotonic() - began
        time.sleep(3)  # recycled workers' spares settle
        end = sample(gateway)
    finally:
        gateway.stop()
    failures = count - outcomes.get("200", 0)
    mib = 2**20
    other = (
        f"{count / elapsed:.2f}/s, p50 {percentile(times, 0.5):.2f} s, "
        f"p99 {percentile(times, 0.99):.2f} s; processes {start[0]}→{end[0]}, "
        f"fds {start[1]}→{end[1]}, RSS {start[2] / mib:.0f}→{end[2] / mib:.0f} MiB"
    )
    if failures:
        other += "; failures: " + ", ".join(f"{n} x {k}" for k, n in outcomes.items() if k != "200")
    # The bound: no more than one recycled worker's worth of processes, fds +50%, RSS +50%.
    bounded = end[0] <= start[0] + 8 and end[1] <= 1.5 * start[1] and end[2] <= 1.5 * start[2]
    return Row(
        "soak", "gateway, local backend, 2 workers", count, other=other, ok=not failures and bounded
    )


def load(work: Path, seconds: float) -> Row:
    workers, queue_size = 2, 16
    gateway = local_gateway(
        work, KUBESHOT_WORKERS=str(workers), KUBESHOT_QUEUE_SIZE=str(queue_size)
    )
    clients = 4 * (workers + queue_size)
    try:

        async def run() -> tuple[Counter[str], list[float], int]:
            outcomes: Counter[str] = Counter()
            accepted: list[float] = []
            without_retry_after = 0
            stop = time.monotonic() + seconds

            async def loop(i: int) -> None:
                """Client i: one of 18 tokens, from one of 4 loopback addresses (each under the
                gateway's limit of connections per address): the pool's limits are what refuse."""
                nonlocal without_retry_after
                async with client(f"127.0.0.{10 + i % 4}") as session:
                    while time.monotonic() < stop:
                        answer = await screenshot(session, gateway, TOKENS[i % len(TOKENS)])
                        status, code, took, retry_after = answer
                        outcomes[f"{status} {code}".strip()] += 1
                        if status == 200:
                            accepted.append(took)
                        elif status in (429, 503):
                            without_retry_after += not retry_after
                            await asyncio.sleep(0.2)

            await asyncio.gather(*(loop(i) for i in range(clients)))
            return outcomes, accepted, without_retry_after

        outcomes, accepted, without_retry_after = asyncio.run(run())
    finally:
        gateway.stop()
    refused = {k: n for k, n in outcomes.items() if k.split()[0] in ("429", "503")}
    others = {k: n for k, n in outcomes.items() if k != "200" and k not in refused}
    p99 = percentile(accepted, 0.99)
    bound = 30 + 30  # the queue's timeout and a capture's default timeout
    other = (
        f"{clients} clients for {seconds:g} s: 200 x {outcomes.get('200', 0)} "
        f"(p50 {percentile(accepted, 0.5):.2f} s, p99 {p99:.2f} s, bound {bound} s); "
        + ", ".join(f"{k} x {n}" for k, n in sorted(refused.items()))
        + f"; without Retry-After {without_retry_after}"
        + (f"; other {others}" if others else "")
    )
    ok = not others and without_retry_after == 0 and p99 <= bound
    return Row(
        "load 4x capacity", "gateway, local backend", sum(outcomes.values()), other=other, ok=ok
    )


def worker_pids(gateway: Gateway) -> dict[int, str]:
    """The gateway's capture workers: pid → their tag."""
    found = {}
    for tag, pids in tagged_processes().items():
        for pid in pids:
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                # Its children, not what it reaps (it is a subreaper: Chromium's orphans too).
                worker = b"kubeshot.gateway.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
                if ppid == gateway.proc.pid and worker:
                    found[pid] = tag
    return found


def worker_kill(work: Path) -> list[Row]:
    gateway = local_gateway(work, KUBESHOT_WORKERS="2")
    rows = []
    try:

        async def one(victim: str) -> Row:
            async with client() as session:
                for _ in range(4):
                    await screenshot(session, gateway)
                await asyncio.sleep(2)
                baseline = len(gateway.tree)
                slow = [
                    asyncio.create_task(screenshot(session, gateway, delayMs=5000))
                    for _ in range(2)
                ]
                await asyncio.sleep(2.5)
                pid, tag = next(iter(worker_pids(gateway).items()))
                os.kill(pid if victim == "worker" else browser_process(tag), signal.SIGKILL)
                answers = await asyncio.gather(*slow)
                killed_at = time.monotonic()
                recovered = None
                after = []
                for _ in range(4):
                    status = (await screenshot(session, gateway))[0]
                    after.append(status)
                    if status == 200 and recovered is None:
                        recovered = time.monotonic() - killed_at
                await asyncio.sleep(3)
                leaked = len(tagged_processes().get(tag, set())) if victim == "worker" else 0
                processes = len(gateway.tree)
            codes = [f"{s} {c}".strip() for s, c, _, _ in answers]
            failed = [c for c in codes if not c.startswith("200")]
            clear = len(failed) == 1 and failed[0][0] == "5" and "internal" not in failed[0]
            other = f"answers {codes}; next 4: {after}; processes {baseline}→{processes}" + (
                f", left of the killed worker {leaked}" if victim == "worker" else ""
            )
            ok = clear and after == [200] * 4 and leaked == 0 and processes <= baseline + 2
            return Row(
                f"{victim} SIGKILL mid-capture",
                "gateway, local backend",
                2,
                takeover=recovered,
                other=other,
                ok=ok,
            )

        for victim in ("worker", "chromium"):
            rows.append(asyncio.run(one(victim)))
    finally:
        gateway.stop()
    return rows


def auth(token: str) -> dict[str, str]:
    return {**HEADERS, "Authorization": f"Bearer {token}"}


async def submit(
    session: aiohttp.ClientSession, url: str, count: int
) -> tuple[dict[str, str], int]:
    """POST /v1/captures `count` times, round robin over the tokens (each identity may hold 4):
    the accepted job ids with their token, and how many were refused."""
    ids, refused = {}, 0
    for i in range(count):
        body = {"html": PAGE, "format": "png"}
        token = TOKENS[i % len(TOKENS)]
        async with session.post(url + "/v1/captures", json=body, headers=auth(token)) as answer:
            if answer.status == 202:
                ids[(await answer.json())["id"]] = token
            else:
                refused += 1
    return ids, refused


async def follow(
    session: aiohttp.ClientSession, url: str, ids: dict[str, str], within: float
) -> Counter[str]:
    """Each job's end: its phase, 'forgotten' (404), or 'unfinished' after `within` seconds."""
    ends: Counter[str] = Counter()
    pending = set(ids)
    deadline = time.monotonic() + within
    while pending and time.monotonic() < deadline:
        for job in list(pending):
            with contextlib.suppress(aiohttp.ClientError):
                path = f"{url}/v1/captures/{job}"
                async with session.get(path, headers=auth(ids[job])) as answer:
                    if answer.status == 404:
                        ends["forgotten"] += 1
                        pending.discard(job)
                        continue
                    view = await answer.json()
                    if view.get("phase") in FINAL:
                        reason = (view.get("failure") or {}).get("reason", "")
                        ends[f"{view['phase']} {reason}".strip()] += 1
                        pending.discard(job)
        await asyncio.sleep(0.5)
    ends["unfinished"] += len(pending)
    return ends


def gateway_row(
    backend: str, where: str, ids: dict[str, str], refused: int, ends: Counter[str], drain: float
) -> Row:
    lost = ends["forgotten"] + ends["unfinished"]
    other = ", ".join(f"{k} {n}" for k, n in sorted(ends.items()) if n) + f", refused {refused}"
    return Row(
        f"gateway SIGKILL, async jobs ({backend})",
        where,
        len(ids),
        lost,
        None,
        drain,
        other=other,
        ok=lost == 0,
    )


def kill_and_follow(
    start: Callable[[], Gateway], count: int, within: float
) -> tuple[dict[str, str], int, Counter[str], float]:
    """Submit `count` async jobs to a gateway, SIGKILL it, start another and follow every job:
    (accepted ids, refused, how they ended, seconds from the kill until the last ended)."""
    gateway = start()
    try:

        async def accept() -> tuple[dict[str, str], int]:
            async with client() as session:
                return await submit(session, gateway.url, count)

        ids, refused = asyncio.run(accept())
        gateway.kill()
        killed = time.monotonic()
        time.sleep(1)
        gateway = start()

        async def check() -> Counter[str]:
            async with client() as session:
                return await follow(session, gateway.url, ids, within)

        ends = asyncio.run(check())
        return ids, refused, ends, time.monotonic() - killed
    finally:
        gateway.stop()


def gateway_kill_local(work: Path, count: int) -> Row:
    ids, refused, ends, drain = kill_and_follow(
        lambda: local_gateway(work, KUBESHOT_WORKERS="2"), count, 180
    )
    return gateway_row("local", "gateway, local backend", ids, refused, ends, drain)


def gateway_kill_kubernetes(bed: Bed, count: int, args: argparse.Namespace) -> Row:
    cluster = bed.cluster("chaos-gateway-kill")
    cluster.create_policy()
    work = bed.work / "gateway-kill-kubernetes"
    work.mkdir()
    tokens = tokens_file(work, cluster.namespace)
    upload_port = free_port()
    state = Burst(
        bed,
        cluster,
        Operators(work),
        lambda port: operator_env(
            bed.cp,
            cluster.namespace,
            f"http://127.0.0.1:{upload_port}/v1/internal/uploads",
            http_port=port,
        ),
        count,
    )
    state.launch()
    watch = PodWatch(bed.cp, cluster.namespace)
    completer = Completer(cluster, watch, args.pod_seconds)

    def start() -> Gateway:
        proc, log, port, _ = launch_gateway(
            bed.cp, cluster.namespace, tokens, work, upload_port=upload_port
        )
        gateway = Gateway(proc, f"http://127.0.0.1:{port}", log)
        wait_ready(gateway)
        return gateway

    try:
        ids, refused, ends, drain = kill_and_follow(start, count, args.drain_timeout)
    finally:
        completer.stop()
        for operator in state.live:
            operator.stop()
        watch.close()
    row = gateway_row("kubernetes", "cluster tier, stand-in kubelet", ids, refused, ends, drain)
    row.twice = sum(1 for uids in pods_per_attempt(watch).values() if len(uids) > 1)
    row.ok = row.ok and row.twice == 0
    return row


# ------------------------------------------------------------------------------ main


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextlib.contextmanager
def scenario(name: str, rows: list[Row], where: str) -> Iterator[None]:
    """Run one scenario; a scenario that cannot run is a row that says why, not a crash."""
    began = time.monotonic()
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the table must still come out, with the reason (pytest's
        # Failed, which a test helper raises, is a BaseException)
        rows.append(
            Row(name, where, 0, other=f"not run: {type(exc).__name__}: {exc}"[:300], ok=False)
        )
        print(rows[-1].line(), flush=True)
    print(f"# {name}: {time.monotonic() - began:.0f} s, load {load_average()}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--jobs", type=int, default=200, help="CaptureJobs per burst")
    parser.add_argument("--soak", type=int, default=1000, help="captures of the soak")
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--async-jobs", type=int, default=16, help="async jobs the gateway holds")
    parser.add_argument("--kubelet-jobs", type=int, default=6)
    parser.add_argument("--max-concurrent", type=int, default=20, help="the policy's limit")
    parser.add_argument("--pod-seconds", type=float, default=0.5, help="a stand-in pod's run")
    parser.add_argument("--kill-every", type=float, default=10.0, help="s after each takeover")
    parser.add_argument("--drain-timeout", type=float, default=600)
    args = parser.parse_args()
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: clean up
    print(f"# chaos: {' '.join(sys.argv[1:])}; {os.cpu_count()} CPUs, load {load_average()}")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kubeshot-chaos-") as tmp:
        bed = Bed(Path(tmp))
        try:
            cluster = "cluster tier, stand-in kubelet"
            plans: dict[str, tuple[str, Callable[[], list[Row]]]] = {
                "operator-kill": (
                    cluster,
                    lambda: [
                        burst(bed, "operator-kill", args.jobs, 1, kill_every(args.kill_every), args)
                    ],
                ),
                "failover": (
                    cluster,
                    lambda: [
                        burst(bed, "failover", args.jobs, 2, kill_leader_at(1 / 3, 2 / 3), args)
                    ],
                ),
                "apiserver-restart": (
                    cluster,
                    lambda: [
                        burst(
                            bed,
                            "apiserver-restart",
                            args.jobs,
                            1,
                            restart_apiserver_at(1 / 3, 2),
                            args,
                        )
                    ],
                ),
                "kubelet-stop": ("node tier, real pods", lambda: [kubelet_stop(bed, args)]),
                "gateway-kill": (
                    "gateway",
                    lambda: [
                        gateway_kill_local(_dir(bed, "gateway-kill-local"), args.async_jobs),
                        gateway_kill_kubernetes(bed, args.async_jobs, args),
                    ],
                ),
                "worker-kill": (
                    "gateway, local backend",
                    lambda: worker_kill(_dir(bed, "worker-kill")),
                ),
                "soak": ("gateway, local backend", lambda: [soak(_dir(bed, "soak"), args.soak)]),
                "load": (
                    "gateway, local backend",
                    lambda: [load(_dir(bed, "load"), args.load_seconds)],
                ),
            }
            for name in chosen:
                where, run = plans[name]
                with scenario(name, rows, where):
                    for row in run():
                        rows.append(row)
                        print(row.line(), flush=True)
        finally:
            bed.close()
    print(f"\nload at the end {load_average()}\n")
    print(HEADER)
    for row in rows:
        print(row.line())
    return 0 if all(row.ok for row in rows) else 1


def _dir(bed: Bed, name: str) -> Path:
    path = bed.work / name
    path.mkdir()
    return path


if __name__ == "__main__":
    sys.exit(main())

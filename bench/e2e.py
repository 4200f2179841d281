"""End to end on the node tier: CaptureJob created → Succeeded, against the local backend.

Starts the test control plane and a node (testenv/controlplane.py, testenv/node.py; root), the
capture image from testenv/image.sh, a real `kubeshot operator`, and an upload endpoint on the
node link's host address. Then, for the same small inline page:
  1. node tier: N CaptureJobs one after another, each timed from its creation to Succeeded (a
     watch on the jobs), and split by a watch on pods: job → pod created (operator), pod start
     (pod created → container running: scheduling, sandbox, CNI, container), the container's run
     (Python, Chromium, capture, upload) and exit → Succeeded (kubelet status, operator);
  2. local backend, in the same run: `kubeshot serve` (local backend, warm browser pool) answering
     POST /v1/screenshot for the same page, N times.
Prints p50/p95 of both and the ratio node/local.

    sudo .venv/bin/python bench/e2e.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: tests.support

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
KUBESHOT = Path(sys.executable).parent / "kubeshot"
API = "/apis/kubeshot.dev/v1alpha1"
PAGE = "<html><body><h1>kubeshot e2e</h1><p>a small page</p></body></html>"
TOKEN = "bench-e2e-token-0123456789"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


controlplane = _load("controlplane", ROOT / "testenv" / "controlplane.py")
nodes = _load("testenv_node", ROOT / "testenv" / "node.py")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watch:
    """When each object of a collection was first seen in a given state (client-side clock)."""

    def __init__(self, cp: Any, path: str, state: Any) -> None:
        self.cp, self.path, self.state = cp, path, state
        self.seen: dict[tuple[str, str], float] = {}
        self.stopped = threading.Event()
        version = (cp.get(path) or {})["metadata"]["resourceVersion"]
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

    def wait(self, name: str, label: str, timeout: float = 180) -> float:
        deadline = time.monotonic() + timeout
        while (name, label) not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never {label}")
            time.sleep(0.01)
        return self.seen[(name, label)]

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


def serve_uploads(address: str) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = hashlib.sha256(body).hexdigest() == self.headers.get("X-Kubeshot-Sha256")
            answer = json.dumps({"url": f"https://uploads.bench{self.path}"}).encode()
            self.send_response(201 if ok else 422)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer((address, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{address}:{server.server_address[1]}/v1/internal/uploads"


def node_tier(cp: Any, image: str, jobs: int, work: Path) -> dict[str, list[float]]:
    namespace = "bench-e2e"
    status, body = cp.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
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
    subprocess.run(
        [*kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
        check=True,
        capture_output=True,
    )
    uploads, upload_url = serve_uploads(nodes.HOST_ADDRESS)
    env = {**cp.env(), "PYTHONUNBUFFERED": "1"}
    env.update({
        f"KUBESHOT_OPERATOR_{k}": str(v)
        for k, v in {
            "NAMESPACES": json.dumps([namespace]),
            "LEASE_NAMESPACE": namespace,
            "UPLOAD_URL": upload_url,
            "CAPTURE_IMAGE": image,
            "IMAGE_PULL_POLICY": "Never",
            "GATEWAY_CIDRS": json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": free_port(),
        }.items()
    })  # fmt: skip
    log = (work / "operator.log").open("wb")
    operator = subprocess.Popen(
        [str(KUBESHOT), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    policy = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "ScreenshotPolicy",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"limits": {"memory": "1Gi", "timeoutSeconds": 60}},
    }
    status, body = cp.request("POST", f"{API}/namespaces/{namespace}/screenshotpolicies", policy)
    assert status == 201, body
    pods = Watch(cp, f"/api/v1/namespaces/{namespace}/pods", pod_states)
    job_watch = Watch(cp, f"{API}/namespaces/{namespace}/capturejobs", job_states)
    totals, to_pod, pod_start, container, report, shares = [], [], [], [], [], []
    try:
        for i in range(jobs + 1):  # the first one warms the node (page cache, first sandbox)
            name = f"e2e-{i}"
            job = {
                "apiVersion": "kubeshot.dev/v1alpha1",
                "kind": "CaptureJob",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"html": PAGE, "format": "png", "retries": 0},
            }
            created = time.monotonic()
            status, body = cp.request("POST", f"{API}/namespaces/{namespace}/capturejobs", job)
            assert status == 201, body
            done = job_watch.wait(name, "Succeeded")
            if (name, "Failed") in job_watch.seen:
                raise RuntimeError(
                    f"{name} failed: {cp.get(f'{API}/namespaces/{namespace}/capturejobs/{name}')}"
                )
            pod = cp.get(f"{API}/namespaces/{namespace}/capturejobs/{name}")["status"]["podName"]
            pod_created = pods.wait(pod, "created")
            running = pods.wait(pod, "running", timeout=5)
            exited = pods.wait(pod, "terminated", timeout=5)
            print(
                f"  {name}: {done - created:.2f}s (to pod {pod_created - created:.2f}s, pod start "
                f"{running - pod_created:.2f}s, container {exited - running:.2f}s, "
                f"report {done - exited:.2f}s)",
                file=sys.stderr,
            )
            if i == 0:
                continue
            totals.append(done - created)
            to_pod.append(pod_created - created)
            pod_start.append(running - pod_created)
            container.append(exited - running)
            report.append(done - exited)
            shares.append((running - pod_created) / (done - created))
    finally:
        pods.stop()
        job_watch.stop()
        operator.send_signal(signal.SIGTERM)
        operator.wait(30)
        uploads.shutdown()
    return {
        "total": totals,
        "to_pod": to_pod,
        "pod_start": pod_start,
        "container": container,
        "report": report,
        "share": shares,
    }


def local_backend(jobs: int, work: Path) -> list[float]:
    tokens = work / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(json.dumps({"tokens": [{"name": "bench", "sha256": digest}]}))
    port = free_port()
    env = {**os.environ, "RATE_LIMIT_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    log = (work / "gateway.log").open("wb")
    argv = [str(KUBESHOT), "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--metrics-port", "0"]  # an ephemeral port: nothing here scrapes it
    argv += ["--tokens-file", str(tokens)]
    gateway = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2):
                break
        except (OSError, urllib.error.HTTPError):
            if time.monotonic() > deadline or gateway.poll() is not None:
                raise RuntimeError((work / "gateway.log").read_text()) from None
            time.sleep(0.2)
    body = json.dumps({"html": PAGE, "format": "png"}).encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    times = []
    try:
        for i in range(jobs + 1):
            started = time.monotonic()
            request = urllib.request.Request(url + "/v1/screenshot", body, headers, method="POST")
            with urllib.request.urlopen(request, timeout=120) as answer:
                assert answer.read(8) == b"\x89PNG\r\n\x1a\n"
            if i:
                times.append(time.monotonic() - started)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/e2e.py needs root (a kubelet and containerd)", file=sys.stderr)
        return 2
    archive = (
        subprocess.run(
            ["bash", str(ROOT / "testenv" / "image.sh")], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    image = nodes.archive_ref(Path(archive))
    with tempfile.TemporaryDirectory(prefix="kubeshot-e2e-") as tmp:
        work = Path(tmp)
        cp = controlplane.ControlPlane(controlplane.find_bin_dir(), work / "controlplane").start()
        node = nodes.Node(cp, controlplane.find_bin_dir(), work / "node")
        try:
            started = time.monotonic()
            node.start(images=[Path(archive)])
            print(f"node ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
            measured = node_tier(cp, image, args.jobs, work)
        finally:
            node.stop()
            cp.stop()
        local = local_backend(args.jobs, work)

    def line(label: str, values: list[float]) -> str:
        return (
            f"{label:<34} p50 {percentile(values, 0.5):6.2f}s  p95 {percentile(values, 0.95):6.2f}s"
        )

    print(f"{args.jobs} captures of a small inline page, one after another")
    print(line("node tier: created → Succeeded", measured["total"]))
    print(line("  job created → pod created", measured["to_pod"]))
    print(line("  pod start (→ container running)", measured["pod_start"]))
    print(line("  container running (engine)", measured["container"]))
    print(line("  exited → job Succeeded", measured["report"]))
    share = 100 * statistics.median(measured["share"])
    print(f"  pod start share of the whole      p50 {share:5.1f}%")
    print(line("local backend (baseline)", local))
    ratio = percentile(measured["total"], 0.5) / percentile(local, 0.5)
    print(f"node tier / local backend (p50)    {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Operator tests: `kubeshot operator` as a real subprocess against the session's control plane.

There is no kubelet: capture pods stay Pending. `FakeKubelet` stands in for it: it runs the
capture engine as a local process with the Pod's environment and the Secret's request, then
writes the pod's terminated state from the engine's own termination-message file, exactly where
the kubelet would. For failure reasons it writes the terminated states the kubelet writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support import Handler, free_port, serving, wait_for

API = "/apis/kubeshot.dev/v1alpha1"
KUBESHOT = Path(sys.executable).parent / "kubeshot"


@dataclass
class Operator:
    """One `kubeshot operator` process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    http_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return dict(json.loads(response.read()))
        except OSError:
            return None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def wait_leader(self, timeout: float = 30) -> None:
        wait_for(
            lambda: (self.healthz() or {}).get("leader") or self.proc.poll() is not None,
            timeout,
            "the operator to lead",
        )
        assert self.proc.poll() is None, self.log()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@dataclass
class Uploads:
    """A stand-in for the gateway's upload endpoint: PUT with the job's bearer token."""

    url: str
    received: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # path → sha256 of the token


@pytest.fixture
def uploads() -> Iterator[Uploads]:
    store = Uploads(url="")

    class Receiver(Handler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            store.tokens[self.path] = hashlib.sha256(token.encode()).hexdigest()
            if hashlib.sha256(body).hexdigest() != self.headers.get("X-Kubeshot-Sha256"):
                self.reply(422)
                return
            store.received[self.path] = body
            answer = json.dumps({"url": f"https://gateway.test{self.path}"}).encode()
            self.reply(201, answer, "application/json")

    with serving(Receiver) as site:
        store.url = site.url("/v1/internal/uploads")
        yield store


def operator_env(
    control_plane: Any, namespace: str, upload_url: str, **overrides: object
) -> dict[str, str]:
    settings: dict[str, object] = {
        "NAMESPACES": json.dumps([namespace]),
        "LEASE_NAMESPACE": namespace,
        "LEASE_DURATION_SECONDS": 3,
        "RESYNC_SECONDS": 0.5,
        "RETRY_BACKOFF_SECONDS": 0.2,
        "RETRY_BACKOFF_MAX_SECONDS": 1,
        "UPLOAD_URL": upload_url,
        "HTTP_HOST": "127.0.0.1",
        "ASSIGNMENT_HOST": "127.0.0.1",
        "CAPTURE_IMAGE": "kubeshot/capture:test",
    }
    settings.update({k.upper(): v for k, v in overrides.items()})
    if "ASSIGNMENT_PORT" not in settings:  # warm pods ask this operator for their jobs
        settings["ASSIGNMENT_PORT"] = port = free_port()
        settings["ASSIGNMENT_URL"] = f"http://127.0.0.1:{port}/v1/assignments"
    env = {**control_plane.env(), "PYTHONUNBUFFERED": "1"}
    env.update({f"KUBESHOT_OPERATOR_{k}": str(v) for k, v in settings.items()})
    return env


def launch_gateway(
    control_plane: Any,
    namespace: str,
    tokens: Path,
    tmp_path: Path,
    *,
    host: str = "127.0.0.1",
    upload_port: int | None = None,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], Path, int, int]:
    """`kubeshot serve --backend kubernetes` for one namespace: (process, log, port, upload port).

    The caller waits for /readyz (its scheme depends on `env`) and ends it with stop_gateway().
    """
    port = free_port()
    upload_port = upload_port or free_port()
    full_env = {
        **control_plane.env(),
        "KUBESHOT_NAMESPACE": namespace,
        "RATE_LIMIT_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        "KUBESHOT_METRICS_PORT": str(free_port()),  # /metrics has a port of its own
        **(env or {}),
    }
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(KUBESHOT), "serve", "--backend", "kubernetes",
                "--host", host, "--port", str(port), "--upload-port", str(upload_port),
                "--tokens-file", str(tokens), "--result-dir", str(tmp_path / "results"),
            ],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, log_path, port, upload_port


def stop_gateway(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM (SIGKILL after 30 s); its log must hold no traceback."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]


class Operators:
    """The `kubeshot operator` processes of one test: stopped at its end, their logs checked."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Operator] = []

    def launch(self, env: dict[str, str], port: int, *, wait: bool = True) -> Operator:
        log_path = self.tmp_path / f"operator-{len(self.started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(KUBESHOT), "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        operator = Operator(proc, log_path, port)
        self.started.append(operator)
        if wait:
            operator.wait_leader()
        return operator

    def stop_all(self) -> None:
        for operator in self.started:
            operator.stop()
        for operator in self.started:
            text = operator.log()
            assert "Traceback" not in text, text[-5000:]


@pytest.fixture
def start_operator(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    uploads: Uploads,
    tmp_path: Path,
) -> Iterator[Callable[..., Operator]]:
    """Start `kubeshot operator` for the test's namespace (its Lease lives there too)."""
    operators = Operators(tmp_path)

    def start(wait: bool = True, **overrides: object) -> Operator:
        port = free_port()
        env = operator_env(control_plane, namespace, uploads.url, http_port=port, **overrides)
        return operators.launch(env, port, wait=wait)

    yield start
    operators.stop_all()


@pytest.fixture
def operator(start_operator: Callable[..., Operator]) -> Operator:
    return start_operator()


class Cluster:
    """The test's namespace through the admin REST API (fast) and kubectl (as users do)."""

    def __init__(self, control_plane: Any, kubectl: Any, namespace: str) -> None:
        self.cp = control_plane
        self.kubectl = kubectl
        self.namespace = namespace

    def path(self, plural: str, name: str | None = None, group: str = "/api/v1") -> str:
        base = f"{group}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def get(self, plural: str, name: str, group: str = "/api/v1") -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.cp.get(self.path(plural, name, group))
        return found

    def list(self, plural: str, group: str = "/api/v1", selector: str = "") -> list[dict[str, Any]]:
        query = f"?labelSelector={selector}" if selector else ""
        body = self.cp.get(self.path(plural, None, group) + query) or {}
        return list(body.get("items", []))

    def job(self, name: str) -> dict[str, Any] | None:
        return self.get("capturejobs", name, API)

    def policy(self, name: str = "default") -> dict[str, Any] | None:
        return self.get("screenshotpolicies", name, API)

    def apply(self, manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": self.namespace}}
        self.kubectl.apply(manifest)

    def create_job(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec or {"html": "<h1>hello</h1>"},
        }
        status, created = self.cp.request("POST", self.path("capturejobs", group=API), body)
        assert status == 201, created
        return dict(created)

    def create_policy(self, name: str = "default", **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        status, created = self.cp.request("POST", self.path("screenshotpolicies", group=API), body)
        assert status == 201, created
        return dict(created)

    def wait_phase(self, name: str, *phases: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(name)
            if job and (job.get("status") or {}).get("phase") in phases:
                return job
            return None

        found: dict[str, Any] = wait_for(check, timeout, f"job {name} to be {'/'.join(phases)}")
        return found

    def wait_pod(self, name: str, timeout: float = 30) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(lambda: self.get("pods", name), timeout, f"pod {name}")
        return found

    def capture_pods(self) -> list[dict[str, Any]]:
        return self.list("pods", selector="app.kubernetes.io/component%3Dcapture")

    def write_pod_status(self, name: str, status: dict[str, Any]) -> None:
        """What the kubelet would write: the pod's status subresource."""
        pod = self.get("pods", name)
        assert pod is not None, f"pod {name} is gone"
        pod["status"] = {**pod.get("status", {}), **status}
        code, body = self.cp.request("PUT", self.path("pods", name) + "/status", pod)
        assert code == 200, body

    def terminate(
        self, name: str, exit_code: int, reason: str = "Error", message: str = ""
    ) -> None:
        """The capture container exited."""
        self.write_pod_status(
            name,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": "capture",
                        "ready": False,
                        "restartCount": 0,
                        "image": "kubeshot/capture:test",
                        "imageID": "",
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "reason": reason,
                                "message": message,
                                "startedAt": "2026-01-01T00:00:00Z",
                                "finishedAt": "2026-01-01T00:00:01Z",
                            }
                        },
                    }
                ],
            },
        )


@pytest.fixture
def cluster(control_plane: Any, kubectl: Any, namespace: str) -> Cluster:
    return Cluster(control_plane, kubectl, namespace)


class FakeKubelet:
    """Runs a capture pod's container as a local process, the way the kubelet would."""

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.tmp_path = tmp_path

    def run(self, pod_name: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        env, termination = self._prepare(pod_name)
        done = subprocess.run(
            [sys.executable, "-m", "kubeshot_capture"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
        )
        self._ended(pod_name, done.returncode, termination)
        return done

    def start(self, pod_name: str) -> WarmProcess:
        """Start a (warm) pod's container and say it runs, as the kubelet would; `finish`
        writes its end."""
        env, termination = self._prepare(pod_name)
        log = (self.tmp_path / pod_name / "output").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubeshot_capture"],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        running = {"running": {"startedAt": now}}
        container = {"name": "capture", "ready": True, "restartCount": 0, "state": running}
        container.update({"image": "kubeshot/capture:test", "imageID": ""})
        status = {"phase": "Running", "startTime": now, "containerStatuses": [container]}
        self.cluster.write_pod_status(pod_name, status)
        return WarmProcess(pod_name, proc, termination, self.tmp_path / pod_name / "output")

    def finish(self, warm: WarmProcess, timeout: float = 120) -> int:
        """Wait for the container to exit; its end written to the pod if the pod is still there."""
        code = warm.proc.wait(timeout)
        try:
            self._ended(warm.pod, code, warm.termination)
        except AssertionError:  # the operator deleted it meanwhile (its outcome recorded)
            if self.cluster.get("pods", warm.pod) is not None:
                raise
        return code

    def _prepare(self, pod_name: str) -> tuple[dict[str, str], Path]:
        """The container's environment, its Secret's files in a private folder on this machine
        (the container's paths mapped there), and where its termination log goes."""
        pod = self.cluster.wait_pod(pod_name)
        container = pod["spec"]["containers"][0]
        volume = next(v for v in pod["spec"]["volumes"] if v.get("secret"))
        name = volume["secret"]["secretName"]
        secret = wait_for(lambda: self.cluster.get("secrets", name), what=f"secret {name}")
        workdir = self.tmp_path / pod_name
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        files = {}
        for key, value in secret["data"].items():
            files[f"{mount['mountPath']}/{key}"] = base64.b64decode(value)
        env = {e["name"]: e["value"] for e in container["env"]}
        workdir.mkdir()
        local = {path: workdir / Path(path).name for path in files}
        for path, data in files.items():
            local[path].write_bytes(data)
        termination = workdir / "termination-log"
        for mapped in ("KUBESHOT_REQUEST", "KUBESHOT_POD_KEY"):
            if mapped in env:
                env[mapped] = str(local[env[mapped]])
        env["KUBESHOT_TERMINATION_LOG"] = str(termination)
        env["KUBESHOT_OUTPUT"] = str(workdir / "artifact")
        env["HOME"] = str(workdir)
        assert container["command"][:3] == ["python", "-m", "kubeshot_capture"]
        return env, termination

    def _ended(self, pod_name: str, code: int, termination: Path) -> None:
        message = termination.read_text() if termination.exists() else ""
        self.cluster.terminate(pod_name, code, "Completed" if code == 0 else "Error", message)


@dataclass
class WarmProcess:
    """A pod's container started by `FakeKubelet.start`."""

    pod: str
    proc: subprocess.Popen[bytes]
    termination: Path
    output: Path


@pytest.fixture
def kubelet(cluster: Cluster, tmp_path: Path) -> FakeKubelet:
    return FakeKubelet(cluster, tmp_path)


class JobWatch:
    """Every CaptureJob change of the namespace from a real watch, with the wall-clock time this
    process received it: (time, event type, job), in the API server's order."""

    def __init__(self, control_plane: Any, namespace: str) -> None:
        self.control_plane = control_plane
        self.path = f"{API}/namespaces/{namespace}/capturejobs"
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.error: dict[str, Any] | None = None  # an ERROR event (410 Gone): the watch stops
        self.stopped = threading.Event()
        listed = wait_for(lambda: control_plane.get(self.path), what="the CaptureJob list")
        self.thread = threading.Thread(
            target=self._read, args=(listed["metadata"]["resourceVersion"],), daemon=True
        )
        self.thread.start()

    def _read(self, version: str) -> None:
        # Short server-side watches resumed from the last resourceVersion: no event is lost, and
        # close() never waits long on a blocked read.
        while not self.stopped.is_set() and self.error is None:
            query = f"?watch=1&timeoutSeconds=2&resourceVersion={version}"
            with urllib.request.urlopen(
                self.control_plane.server + self.path + query,
                context=self.control_plane.ssl_context(),
                timeout=30,
            ) as response:
                for line in response:
                    event = json.loads(line)
                    if event["type"] == "ERROR":
                        self.error = event["object"]
                        break
                    job = event["object"]
                    self.events.append((time.time(), event["type"], job))
                    version = job["metadata"]["resourceVersion"]

    def phases(self) -> list[tuple[float, str, str]]:
        """(time received, job name, phase) of every event, in order."""
        return [
            (at, job["metadata"]["name"], (job.get("status") or {}).get("phase", ""))
            for at, _, job in self.events
        ]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture
def job_watch(control_plane: Any, namespace: str, kubeshot_crds: list[str]) -> Iterator[JobWatch]:
    watch = JobWatch(control_plane, namespace)
    yield watch
    watch.close()

"""Node tier: real capture pods on a real kubelet (testenv/node.py), beside the control plane.

The node runs containerd, runc and the CNI bridge in a network namespace of its own, with
kube-router enforcing NetworkPolicies, CoreDNS and the `kubernetes` Service; the capture image is
the one `testenv/image.sh` builds from capture-pod/Dockerfile, imported into containerd (never
pulled). Here the operator and the gateway run as local processes on this host (the gateway on
the node link's host address, where capture pods upload), for fast restarts and logs at hand;
tests/e2e installs them with the Helm chart on the same node instead (its fixtures are these).

Pages for the pods live on the node's target addresses, inside its namespace: nothing a test does
leaves this machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.operator.conftest import (
    Cluster,
    Operators,
    launch_gateway,
    operator_env,
    stop_gateway,
)
from tests.conftest import ROOT, need
from tests.support import Handler, free_port, start, wait_for

_spec = importlib.util.spec_from_file_location("testenv_node", ROOT / "testenv" / "node.py")
assert _spec is not None
assert _spec.loader is not None
nodes = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = nodes
_spec.loader.exec_module(nodes)

_startup: list[str] = []


@pytest.fixture(scope="session")
def capture_image_archive() -> Path:
    """The capture image as an archive (testenv/image.sh: cached by the hash of its inputs)."""
    need(nodes.os.geteuid() == 0, "the node tier needs root")
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "testenv" / "image.sh")], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"testenv/image.sh failed:\n{proc.stderr[-5000:]}"
    _startup.append(f"capture image ready in {time.monotonic() - started:.1f}s")
    return Path(proc.stdout.strip().splitlines()[-1])


# Session scope: the node tier runs last (tests/conftest.py orders it so), because the rest of the
# cluster tier stands in for the kubelet itself and expects capture pods to stay Pending.
@pytest.fixture(scope="session")
def node(
    control_plane: Any,
    testenv_bin_dir: Path,
    capture_image_archive: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """A running testenv/node.py Node: kubelet, containerd, kube-proxy, kube-router, scheduler."""
    missing = nodes.missing_requirements(testenv_bin_dir)
    need(not missing, f"the node tier cannot run here: missing {missing} (make testenv)")
    node = nodes.Node(control_plane, testenv_bin_dir, tmp_path_factory.mktemp("node"))
    started = time.monotonic()
    node.start(images=[capture_image_archive])
    _startup.append(f"node ready in {time.monotonic() - started:.1f}s")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def capture_image(node: Any, capture_image_archive: Path) -> str:
    ref: str = nodes.archive_ref(capture_image_archive)
    assert ref in node.image_refs() or f"docker.io/{ref}" in node.image_refs()
    return ref


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _startup:
        terminalreporter.write_line(f"node tier: {line}")


# ------------------------------------------------------------------------------ pages


@dataclass
class Pages:
    """HTTP pages served inside the node's namespace on `address` (reachable by pods only)."""

    address: str
    port: int
    routes: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}:{self.port}{path}"

    def add(self, path: str, body: str, content_type: str = "text/html") -> str:
        self.routes[path] = (content_type, body.encode())
        return self.url(path)


def serve_in_node(node: Any, address: str, handler: type[BaseHTTPRequestHandler]) -> Any:
    """A threaded HTTP server on a free port of `address`, inside the node's namespace."""
    server = ThreadingHTTPServer((address, 0), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = node.listen(address, 0)
    server.server_address = server.socket.getsockname()
    return start(server)


@pytest.fixture
def pages(node: Any) -> Iterator[Pages]:
    holder: list[Pages] = []

    class Routed(Handler):
        def do_GET(self) -> None:
            served = holder[0]
            served.hits.append(self.path)
            found = served.routes.get(self.path.split("?")[0])
            if found is None:
                self.reply(404, b"not found", "text/plain")
            else:
                self.reply(200, found[1], found[0])

    server = serve_in_node(node, nodes.PAGE_ADDRESS, Routed)
    holder.append(Pages(nodes.PAGE_ADDRESS, server.server_address[1]))
    yield holder[0]
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------ kubeshot


@dataclass
class NodeGateway:
    """`kubeshot serve --backend kubernetes` on the node link's host address."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    upload_url: str
    token: str
    tls: ssl.SSLContext

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


TOKEN = "node-tier-token-0123456789"


@pytest.fixture
def gateway(
    node: Any, control_plane: Any, namespace: str, kubeshot_crds: list[str], tmp_path: Path
) -> Iterator[NodeGateway]:
    tokens = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(
        json.dumps({"tokens": [{"name": "node", "sha256": digest, "namespace": namespace}]})
    )
    # HTTPS, as the chart serves it: a certificate for the host address the tests call.
    cert, key = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=kubeshot-gateway",
            "-addext", f"subjectAltName=IP:{nodes.HOST_ADDRESS}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    tls_env = {"KUBESHOT_TLS_CERT": str(cert), "KUBESHOT_TLS_KEY": str(key)}
    proc, log_path, port, upload_port = launch_gateway(
        control_plane, namespace, tokens, tmp_path, host=nodes.HOST_ADDRESS, env=tls_env
    )
    served = NodeGateway(
        proc,
        log_path,
        f"https://{nodes.HOST_ADDRESS}:{port}",
        f"http://{nodes.HOST_ADDRESS}:{upload_port}/v1/internal/uploads",
        TOKEN,
        ssl.create_default_context(cafile=str(cert)),
    )

    def ready() -> bool:
        assert proc.poll() is None, served.log()
        try:
            with urllib.request.urlopen(
                served.url + "/readyz", timeout=2, context=served.tls
            ) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    wait_for(ready, 60, "the gateway")
    yield served
    stop_gateway(proc, log_path)


def node_assignments() -> dict[str, object]:
    """Where pods on the node reach an operator on this host (their outcomes, warm pods' jobs):
    the node link's host address, which their NetworkPolicy opens."""
    port = free_port()
    return {
        "assignment_host": nodes.HOST_ADDRESS,
        "assignment_port": port,
        "assignment_url": f"http://{nodes.HOST_ADDRESS}:{port}/v1/assignments",
        "operator_cidrs": json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
    }


@pytest.fixture
def start_node_operator(
    control_plane: Any, namespace: str, kubeshot_crds: list[str], capture_image: str, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Start `kubeshot operator` whose capture pods run on the node (upload_url: where to PUT)."""
    operators = Operators(tmp_path)

    def start(upload_url: str, **overrides: object) -> Any:
        port = free_port()
        env = operator_env(
            control_plane,
            namespace,
            upload_url,
            http_port=port,
            capture_image=capture_image,
            image_pull_policy="Never",
            # The gateway runs on this host, not in a pod: pods may reach its address only.
            gateway_cidrs=json.dumps([f"{nodes.HOST_ADDRESS}/32"]),
            **node_assignments(),
            **overrides,
        )
        return operators.launch(env, port)

    yield start
    operators.stop_all()


@pytest.fixture
def cluster(control_plane: Any, kubectl: Any, namespace: str) -> Cluster:
    return Cluster(control_plane, kubectl, namespace)


def pod_events(cluster: Cluster, pod: str) -> str:
    """The pod's events, for failure messages."""
    query = f"?fieldSelector=involvedObject.name%3D{pod}"
    body = cluster.cp.get(cluster.path("events") + query) or {}
    return "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in body.get("items", []))


class PodWatch:
    """Every state of the namespace's pods, from a real watch: the operator deletes a capture
    pod once its outcome is recorded, and the tests still read what the kubelet reported."""

    def __init__(self, control_plane: Any, namespace: str) -> None:
        self.states: dict[str, list[dict[str, Any]]] = {}
        self.control_plane = control_plane
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.stopped = threading.Event()
        listed = control_plane.get(self.path) or {}
        self.thread = threading.Thread(
            target=self._read, args=(listed["metadata"]["resourceVersion"],), daemon=True
        )
        self.thread.start()

    def _read(self, version: str) -> None:
        # Short server-side watches, resumed from the last resourceVersion: no event is lost,
        # and close() never waits on a blocked read for long.
        while not self.stopped.is_set():
            query = f"?watch=1&timeoutSeconds=2&resourceVersion={version}"
            try:
                with urllib.request.urlopen(
                    self.control_plane.server + self.path + query,
                    context=self.control_plane.ssl_context(),
                    timeout=30,
                ) as response:
                    for line in response:
                        event = json.loads(line)
                        pod = event["object"]
                        if event["type"] == "ERROR":  # e.g. 410 Gone: start over from now
                            version = (self.control_plane.get(self.path) or {})["metadata"][
                                "resourceVersion"
                            ]
                            break
                        version = pod["metadata"]["resourceVersion"]
                        self.states.setdefault(pod["metadata"]["name"], []).append(pod)
            except (OSError, ValueError):
                time.sleep(0.2)

    def terminated(self, name: str) -> dict[str, Any] | None:
        """The last state of `name` in which its container had terminated."""
        for pod in reversed(self.states.get(name, [])):
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if statuses and "terminated" in statuses[0].get("state", {}):
                return pod
        return None

    def last(self, name: str) -> dict[str, Any]:
        """The last state of `name` before its deletion."""
        states = self.states.get(name)
        assert states, f"no pod {name} was seen"
        return states[-1]

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(10)


@pytest.fixture
def pod_watch(control_plane: Any, namespace: str) -> Iterator[PodWatch]:
    watch = PodWatch(control_plane, namespace)
    yield watch
    watch.close()

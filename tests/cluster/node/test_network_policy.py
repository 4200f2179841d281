"""The NetworkPolicy layer on its own: what a pod carrying a policy's labels can open.

No capture engine and no egress guard here: the probe is a few lines of Python in the capture
image that open plain TCP connections. The operator writes the NetworkPolicy from a
ScreenshotPolicy; kube-router enforces it in the node's namespace. A control pod without the
labels reaches every target, so a blocked connection is the policy's doing and not a missing
listener.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from kubeshot.kube.names import capture_labels
from tests.cluster.node.conftest import nodes, pod_events, serve_in_node
from tests.cluster.operator.conftest import Cluster
from tests.support import Handler, wait_for

# Waits for the test's go-ahead (GET /go answers 200), then tries every target.
PROBE = """
import json, socket, sys, time, urllib.request
go = sys.argv[1]
while True:
    try:
        if urllib.request.urlopen(go, timeout=2).status == 200:
            break
    except OSError:
        pass
    time.sleep(0.2)
results = {}
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        results[target] = "open"
    except OSError as exc:
        results[target] = type(exc).__name__
open("/dev/termination-log", "w").write(json.dumps(results))
"""


class GoAhead:
    """GET /go answers 404 until `allow(pod_ip)`; then 200 to that pod."""

    def __init__(self) -> None:
        self.allowed: set[str] = set()
        self.lock = threading.Lock()

    def allow(self, ip: str) -> None:
        with self.lock:
            self.allowed.add(ip)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        state = self

        class GoHandler(Handler):
            def do_GET(self) -> None:
                with state.lock:
                    ok = self.client_address[0] in state.allowed
                self.reply(200 if ok else 404)

        return GoHandler


@pytest.fixture
def go_ahead(node: Any) -> Iterator[tuple[GoAhead, str]]:
    state = GoAhead()
    server = serve_in_node(node, nodes.PAGE_ADDRESS, state.handler())
    yield state, f"http://{nodes.PAGE_ADDRESS}:{server.server_address[1]}/go"
    server.shutdown()
    server.server_close()


@pytest.fixture
def targets(node: Any) -> Iterator[dict[str, str]]:
    """Listeners on every target (the kernel completes the handshake: no accept loop needed)."""
    opened = {
        "canary": node.listen(nodes.PRIVATE_CANARY, 0),
        "metadata": node.listen(nodes.METADATA_ADDRESS, 80),
        "page": node.listen(nodes.PAGE_ADDRESS, 0),
    }
    # The host itself (where the gateway runs) on a port that is not the upload port.
    host = socket.create_server((nodes.HOST_ADDRESS, 0))
    found = {name: "{}:{}".format(*sock.getsockname()) for name, sock in opened.items()}
    found["host"] = "{}:{}".format(*host.getsockname())
    yield found
    for sock in (*opened.values(), host):
        sock.close()


def probe_pod(name: str, image: str, labels: dict[str, str], argv: list[str]) -> dict[str, Any]:
    """A pod meeting the restricted Pod Security Standard, as capture pods do."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", PROBE, *argv],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                    },
                }
            ],
        },
    }


def run_probe(
    cluster: Cluster,
    node: Any,
    go_ahead: tuple[GoAhead, str],
    name: str,
    image: str,
    labels: dict[str, str],
    targets: list[str],
) -> dict[str, str]:
    state, url = go_ahead
    body = probe_pod(name, image, labels, [url, *targets])
    body["metadata"]["namespace"] = cluster.namespace
    status, created = cluster.cp.request("POST", cluster.path("pods"), body)
    assert status == 201, created

    def ip() -> str | None:
        pod = cluster.get("pods", name) or {}
        return (pod.get("status") or {}).get("podIP")

    pod_ip: str = wait_for(ip, 90, f"pod {name} to get an address")
    # kube-router writes a pod's firewall chain after the pod has its address; a pod that starts
    # faster than that is briefly unconfined (the egress guard inside capture pods covers that
    # window). The layer is tested once its rules for this pod are in place.
    wait_for(lambda: node.firewalled(pod_ip), 30, f"kube-router's chain for {pod_ip}")
    state.allow(pod_ip)

    def finished() -> dict[str, Any] | None:
        pod = cluster.get("pods", name) or {}
        phase = (pod.get("status") or {}).get("phase")
        return pod if phase in {"Succeeded", "Failed"} else None

    pod = wait_for(finished, 90, f"probe {name} to finish")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded", (terminated, pod_events(cluster, name))
    results: dict[str, str] = json.loads(terminated["message"])
    return results


def test_a_pod_with_a_policys_labels_reaches_only_what_the_policy_allows(
    node: Any,
    cluster: Cluster,
    capture_image: str,
    start_node_operator: Callable[..., Any],
    targets: dict[str, str],
    go_ahead: tuple[GoAhead, str],
) -> None:
    # The upload port named here is not the host port the probe tries.
    start_node_operator(f"http://{nodes.HOST_ADDRESS}:8081/v1/internal/uploads")
    cluster.create_policy(
        "confined",
        limits={"memory": "256Mi"},
        network={"allowedCIDRs": [f"{nodes.PAGE_ADDRESS}/32"]},
    )
    wait_for(
        lambda: (cluster.policy("confined") or {}).get("status", {}).get("networkPolicyName"),
        30,
        "the policy's NetworkPolicy",
    )
    everything = list(targets.values())

    control = run_probe(cluster, node, go_ahead, "control", capture_image, {}, everything)
    assert control == dict.fromkeys(everything, "open"), "a listener is missing: " + str(control)

    confined = run_probe(
        cluster, node, go_ahead, "confined", capture_image, capture_labels("confined"), everything
    )
    assert confined[targets["page"]] == "open"  # allowedCIDRs: the allowed egress works
    for blocked in ("canary", "metadata", "host"):
        assert confined[targets[blocked]] != "open", (blocked, confined)

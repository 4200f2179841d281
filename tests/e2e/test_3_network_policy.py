"""NetworkPolicy enforcement with the chart's own policies and the operator's per-policy one.

A probe pod carrying the capture pods' labels of the policy `default` (so the operator's
NetworkPolicy for that policy selects it) opens plain TCP connections from the capture image: it
must not reach the metadata address, a private canary, the API server, the gateway's API port or
its metrics port, while the gateway's upload port and the page the policy opens stay reachable
(so a refusal is the policy, not a broken network). A control pod without those labels reaches
what listens, and is itself kept off the upload port by the chart's gateway policy.

Enforcement may trail a pod's start (the node tier's kube-router writes a pod's chain a moment
after the pod has its address; capture pods start Chromium first and the egress guard inside them
covers that window): the probe first waits, up to a minute, until the gateway's API port is
refused, and reports how long that took.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeshot.kube.names import capture_labels
from tests.e2e.conftest import NAMESPACE, POLL, RELEASE, Kubectl, Pages, Target
from tests.support import wait_for

PROBE = """
import json, socket, sys, time
def attempt(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__
wait_until_refused, targets = sys.argv[1], sys.argv[2:]
started, waited = time.monotonic(), None
if wait_until_refused != "-":
    while time.monotonic() - started < 60:
        if attempt(wait_until_refused) != "open":
            waited = round(time.monotonic() - started, 1)
            break
        time.sleep(0.2)
results = {target: attempt(target) for target in targets}
open("/dev/termination-log", "w").write(json.dumps({"waited": waited, "results": results}))
"""


def probe_pod(name: str, image: str, pull: str, labels: dict[str, str], argv: list[str]) -> Any:
    """A pod meeting the restricted Pod Security Standard, as capture pods do."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": pull,
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


def run_probe(kubectl: Kubectl, pod: dict[str, Any]) -> dict[str, Any]:
    name = pod["metadata"]["name"]
    kubectl("delete", "pod", name, "-n", NAMESPACE, "--ignore-not-found", "--wait=true")
    kubectl.apply(pod)

    def finished() -> dict[str, Any] | None:
        found = kubectl.get("pod", name)
        phase = ((found or {}).get("status") or {}).get("phase")
        return found if phase in {"Succeeded", "Failed"} else None

    done = wait_for(finished, 180, f"probe pod {name}", POLL)
    kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", terminated
    report: dict[str, Any] = json.loads(terminated["message"])
    return report


@pytest.fixture(scope="module")
def targets(kubectl: Kubectl, pages: Pages, target: Target) -> dict[str, str]:
    (gateway_pod,) = kubectl.items("pods", "-l", "app.kubernetes.io/component=gateway")
    ip = gateway_pod["status"]["podIP"]
    ports = {p["name"]: p["containerPort"] for p in gateway_pod["spec"]["containers"][0]["ports"]}
    (slice_,) = kubectl.items("endpointslices", "-l", "kubernetes.io/service-name=kubernetes",
                              namespace="default")  # fmt: skip
    api = f"{slice_['endpoints'][0]['addresses'][0]}:{slice_['ports'][0]['port']}"
    service = kubectl.get("service", "kubernetes", "default")
    found = {
        "metadata": "169.254.169.254:80",
        "canary pod": pages.canary,
        "API server": api,
        "API server Service": f"{service['spec']['clusterIP']}:443",
        "gateway API port": f"{ip}:{ports['api']}",
        "gateway metrics port": f"{ip}:{ports['metrics']}",
        "gateway upload port": f"{ip}:{ports['upload']}",
        "upload Service": f"{RELEASE}-gateway.{NAMESPACE}.svc.cluster.local:{ports['upload']}",
        "page": pages.url.split("//", 1)[1].split("/", 1)[0],
    }
    for name, address in target.forbidden_listeners.items():
        found[f"{name} (listening)"] = address
    return found


def test_capture_pods_reach_only_dns_the_upload_port_and_allowed_pages(
    kubectl: Kubectl,
    targets: dict[str, str],
    capture_image: tuple[str, str],
    examples: list[dict[str, Any]],  # the `default` policy, opened for the page
) -> None:
    image, pull = capture_image
    everything = list(targets.values())
    confined = run_probe(
        kubectl,
        probe_pod(
            "e2e-probe-capture",
            image,
            pull,
            capture_labels("default"),
            [targets["gateway API port"], *everything],
        ),
    )
    results = confined["results"]
    assert confined["waited"] is not None, f"the gateway's API port stayed open: {results}"
    allowed = {"gateway upload port", "upload Service", "page"}
    for name, address in targets.items():
        expected = "open" if name in allowed else "refused"
        got = "open" if results[address] == "open" else "refused"
        assert got == expected, f"{name} ({address}): {results[address]}, expected {expected}"


def test_a_pod_without_the_labels_reaches_what_listens_but_not_the_upload_port(
    kubectl: Kubectl, targets: dict[str, str], capture_image: tuple[str, str]
) -> None:
    image, pull = capture_image
    listening = {k: v for k, v in targets.items() if k != "metadata"}  # nothing there off-node
    control = run_probe(
        kubectl, probe_pod("e2e-probe-control", image, pull, {}, ["-", *listening.values()])
    )
    results = control["results"]
    for name, address in listening.items():
        # The chart's gateway policy admits only capture pods to the upload port.
        expected = "refused" if name in {"gateway upload port", "upload Service"} else "open"
        got = "open" if results[address] == "open" else "refused"
        assert got == expected, f"{name} ({address}): {results[address]}, expected {expected}"

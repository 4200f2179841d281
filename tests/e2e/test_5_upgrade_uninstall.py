"""`helm upgrade` with a changed value rolls the pods and keeps the jobs; `helm uninstall` and
removing the CRDs leave nothing of kubeshot behind."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.e2e.conftest import (
    CHART,
    CRDS,
    NAMESPACE,
    PAGES_NAMESPACE,
    POLL,
    RELEASE,
    WAIT,
    Gateway,
    Helm,
    Kubectl,
    Release,
    Target,
    container_env,
)
from tests.support import wait_for

# Everything a release or its operator may leave in the release's namespace.
NAMESPACED_KINDS = ",".join((
    "pods", "secrets", "networkpolicies", "services", "deployments", "persistentvolumeclaims",
    "configmaps", "serviceaccounts", "roles", "rolebindings", "leases", "poddisruptionbudgets",
))  # fmt: skip


def _pod_names(kubectl: Kubectl) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {"operator": set(), "gateway": set()}
    for pod in kubectl.items("pods", "-l", f"app.kubernetes.io/instance={RELEASE}"):
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        if component in names and not pod["metadata"].get("deletionTimestamp"):
            names[component].add(pod["metadata"]["name"])
    return names


def test_helm_upgrade_with_a_changed_value_rolls_the_pods_and_keeps_the_jobs(
    release: Release,
    helm: Helm,
    kubectl: Kubectl,
    target: Target,
    gateway: Gateway,
    examples: list[dict[str, Any]],
) -> None:
    before = _pod_names(kubectl)
    secrets = {name: kubectl.get("secret", name)["data"]
               for name in (f"{RELEASE}-auth", f"{RELEASE}-gateway-tls")}  # fmt: skip
    jobs = {j["metadata"]["name"]: j["status"]["result"]["sha256"] for j in examples}
    helm(
        "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(target.values),
        "--set", "operator.resyncSeconds=12", "--set", "gateway.resultTTLSeconds=7200",
        "--wait", "--timeout", "300s",
    )  # fmt: skip
    after = wait_for(
        lambda: (
            (names := _pod_names(kubectl)) and all(len(n) == 1 for n in names.values()) and names
        ),
        WAIT,
        "one pod per component after the upgrade",
        POLL,
    )
    for component in ("operator", "gateway"):
        assert not after[component] & before[component], f"the {component} pod was not replaced"
    deployment = kubectl.get("deployment", f"{RELEASE}-operator")
    env = container_env(deployment)
    assert env["KUBESHOT_OPERATOR_RESYNC_SECONDS"] == "12"
    # The generated token, signing secret and certificate are kept.
    for name, data in secrets.items():
        assert kubectl.get("secret", name)["data"] == data, name
    # Every job is still there, finished, and its artifact still served (the gateway's PVC).
    gateway.connect()
    for name, sha256 in jobs.items():
        job = kubectl.get("capturejob", name)
        assert job["status"]["phase"] == "Succeeded", name
        assert job["status"]["result"]["sha256"] == sha256
        data = gateway.artifact(job)
        assert hashlib.sha256(data).hexdigest() == sha256
    assert json.loads(helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)["version"] == 2


def test_helm_uninstall_and_removing_the_crds_leave_nothing_behind(
    release: Release, helm: Helm, kubectl: Kubectl, gateway: Gateway
) -> None:
    gateway.close()
    helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "300s")
    release.uninstalled = True
    kubectl("delete", "crd", *CRDS, "--wait=true", "--timeout=300s", timeout=330)
    kubectl("delete", "namespace", PAGES_NAMESPACE, "--wait=true", timeout=330)

    def leftovers() -> list[str]:
        found = []
        for item in kubectl.items(NAMESPACED_KINDS, namespace=NAMESPACE):
            kind, name = item["kind"], item["metadata"]["name"]
            # What Kubernetes puts in every namespace.
            if (kind, name) in {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}:
                continue
            found.append(f"{kind} {NAMESPACE}/{name}")
        for item in kubectl.items("clusterroles,clusterrolebindings", namespace=None):
            if "kubeshot" in item["metadata"]["name"]:
                found.append(f"{item['kind']} {item['metadata']['name']}")
        for item in kubectl.items("pods,secrets,networkpolicies", "-l",
                                  "app.kubernetes.io/name=kubeshot", namespace=None):  # fmt: skip
            meta = item["metadata"]
            found.append(f"{item['kind']} {meta['namespace']}/{meta['name']}")
        for crd in kubectl.items("crd", namespace=None):
            if crd["metadata"]["name"].endswith(".kubeshot.dev"):
                found.append(f"CustomResourceDefinition {crd['metadata']['name']}")
        return sorted(set(found))

    remaining: list[str] = []

    def gone() -> bool:
        remaining[:] = leftovers()
        return not remaining

    wait_for(gone, 120, lambda: f"the release's objects to be gone; left: {remaining}", POLL)
    assert helm("list", "-n", NAMESPACE, "-q").stdout.strip() == ""

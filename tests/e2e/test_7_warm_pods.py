"""Warm capture pods (issue 14) with the chart's operator, a real kubelet and real capture pods.

A release of its own (`kubeshot-warm`), installed after test_6 removed its own (as test_6 does
after test_5), and removed at the end with its CRDs, as test_5 and test_6 leave the cluster. A
tenant namespace holds a ScreenshotPolicy with `runtime.warmPods: 2`; the gateway knows a token
of that namespace (`auth.tokensSecret`) to download its artifacts as its users would. Proven:
the pool's two pods run under the policy's NetworkPolicy, which opens the operator's assignment
port to them; no pod carries its key; a CaptureJob runs in one of them and its artifact
downloads; the pool refills to two; a page past the memory limit, in a warm pod too, ends
MemoryLimitExceeded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from kubeshot.gateway.auth import hash_token
from kubeshot.kube import names
from kubeshot.operator.building import network_policy_name
from tests.cluster.node.test_capture_pods import MEMORY_HOG
from tests.e2e.conftest import (
    CHART,
    CRDS,
    POLL,
    WAIT,
    Gateway,
    Helm,
    Kubectl,
    Target,
    namespace_manifest,
    png_size,
)
from tests.support import wait_for

RELEASE = "kubeshot-warm"  # contains the chart's name: the fullname is the release name
NAMESPACE = "kubeshot-warm"
TENANT = "kubeshot-warm-tenant"
TENANT_TOKEN = "e2e-warm-tenant-token-0123456789abcdef"
POLICY = "warm"
POOL = 2
# What a warm pod logs once Chromium runs and it asks for its job (kubeshot_capture.pod): only a
# pod that asks is given a job, a job finding none takes a cold pod.
ASKING = "asking for a job at"
PAGE = "<!doctype html><title>warm</title><h1 style='color:#20335c'>a warm pod</h1>"


@dataclass
class Warm:
    kubectl: Kubectl
    gateway: Gateway

    def idle_pods(self) -> list[dict[str, Any]]:
        """The pool: the policy's warm pods no job has claimed, not being deleted."""
        selector = f"{names.WARM}=true,{names.POLICY}={POLICY},!{names.JOB_UID}"
        pods = self.kubectl.items("pods", "-l", selector, namespace=TENANT)
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def asking(self, pod: dict[str, Any]) -> bool:
        if pod["status"].get("phase") != "Running":
            return False
        logs = self.kubectl("logs", "-n", TENANT, pod["metadata"]["name"], check=False)
        return ASKING in logs.stdout + logs.stderr

    def full_pool(self) -> list[dict[str, Any]]:
        """The pool once it has POOL pods, each asking for a job."""

        def full() -> list[dict[str, Any]] | None:
            pods = [p for p in self.idle_pods() if self.asking(p)]
            return pods if len(pods) == POOL else None

        pods: list[dict[str, Any]] = wait_for(full, WAIT, f"{POOL} warm pods asking", POLL)
        return pods

    def run(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """A CaptureJob of the policy, applied with kubectl, once finished."""
        job = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "metadata": {"name": name},
            "spec": {"policyRef": POLICY, "retries": 0, **spec},
        }
        self.kubectl.apply(job, namespace=TENANT)

        def finished() -> dict[str, Any] | None:
            found = self.kubectl.get("capturejob", name, TENANT)
            phase = ((found or {}).get("status") or {}).get("phase")
            return found if phase in {"Succeeded", "Failed"} else None

        done: dict[str, Any] = wait_for(finished, WAIT, f"CaptureJob {name} to finish", POLL)
        return done


@pytest.fixture(scope="module")
def warm(
    target: Target, kubectl: Kubectl, helm: Helm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warm]:
    others = helm("list", "--all-namespaces", "-q").stdout.split()
    assert not others, (
        f"another kubeshot release is installed (test_5, test_6 remove theirs): {others}"
    )
    work = tmp_path_factory.mktemp("warm")
    with contextlib.ExitStack() as stack:
        for namespace in (NAMESPACE, TENANT):
            kubectl.apply(namespace_manifest(namespace), namespace=namespace)
            stack.callback(kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
        tenant = {"name": "tenant", "sha256": hash_token(TENANT_TOKEN), "namespace": TENANT}
        tokens = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "e2e-tokens"},
            "stringData": {"tokens.yaml": yaml.safe_dump({"tokens": [tenant]})},
        }
        kubectl.apply(tokens, namespace=NAMESPACE)
        (work / "values.yaml").write_text(yaml.safe_dump({"auth": {"tokensSecret": "e2e-tokens"}}))
        stack.callback(kubectl, "delete", "crd", *CRDS, "--ignore-not-found", check=False)
        stack.callback(helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False)
        helm(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(target.values),
            "-f", str(work / "values.yaml"), "--wait", "--timeout", f"{WAIT}s",
        )  # fmt: skip
        policy = {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": POLICY},
            # 600Mi: a small page fits, the memory hog does not (tests/cluster/node).
            "spec": {
                "limits": {"memory": "600Mi", "timeoutSeconds": 60},
                "runtime": {"warmPods": POOL},
            },
        }
        kubectl.apply(policy, namespace=TENANT)
        gateway = Gateway(kubectl, work, RELEASE, NAMESPACE)
        stack.callback(gateway.close)
        gateway.token = TENANT_TOKEN  # the tenant's artifacts, with the tenant's token
        yield Warm(kubectl, gateway)


def test_the_pool_runs_under_the_policys_network_policy_without_its_keys(warm: Warm) -> None:
    pods = warm.full_pool()
    netpol = warm.kubectl.get("networkpolicy", network_policy_name(POLICY), TENANT)
    assert netpol is not None
    selector = netpol["spec"]["podSelector"]["matchLabels"]
    operator = warm.kubectl.get("deployment", f"{RELEASE}-operator", NAMESPACE)
    operator_labels = operator["spec"]["selector"]["matchLabels"]
    # The one way out to the operator: its pods, on the assignment port.
    [to_operator] = [
        rule for rule in netpol["spec"]["egress"] if {"protocol": "TCP", "port": 8082} in
        rule.get("ports", [])
    ]  # fmt: skip
    assert to_operator["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
            "podSelector": {"matchLabels": operator_labels},
        }
    ]
    for pod in pods:
        name = pod["metadata"]["name"]
        assert name.startswith(f"{POLICY}-warm-"), name
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        [container] = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert "KUBESHOT_REQUEST" not in env  # the job comes later, from the operator
        assert env["KUBESHOT_ASSIGNMENT_URL"] == (
            f"http://{RELEASE}-operator.{NAMESPACE}.svc:8082/v1/assignments/{TENANT}/{name}"
        )
        # The key is a file of its own Secret: not in the environment, labels or annotations.
        secret = warm.kubectl.get("secret", f"{name}-key", TENANT)
        assert secret is not None, name
        [key] = [base64.b64decode(v).decode() for v in secret["data"].values()]
        assert len(key) >= 32
        assert key not in json.dumps(pod), name  # its env, labels, annotations, everything


def test_a_job_runs_in_a_warm_pod_and_the_pool_refills(warm: Warm) -> None:
    before = {p["metadata"]["name"] for p in warm.full_pool()}
    job = warm.run("warm-hello", {"html": PAGE, "format": "png"})
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["podName"] in before, (status["podName"], before)  # a pool pod, not a cold one
    data = warm.gateway.artifact(job)
    assert hashlib.sha256(data).hexdigest() == status["result"]["sha256"]
    assert png_size(data) == (status["result"]["width"], status["result"]["height"])
    # The pool is two again, with a new pod in place of the one used.
    after = {p["metadata"]["name"] for p in warm.full_pool()}
    assert status["podName"] not in after
    assert len(after - before) >= 1


def test_a_page_past_the_memory_limit_in_a_warm_pod_ends_with_memory_limit_exceeded(
    warm: Warm,
) -> None:
    pool = {p["metadata"]["name"] for p in warm.full_pool()}
    job = warm.run("warm-hog", {"html": MEMORY_HOG, "format": "png"})
    status = job["status"]
    assert status["podName"] in pool, (status["podName"], pool)
    assert status["phase"] == "Failed", status
    assert status["failure"]["reason"] == "MemoryLimitExceeded", status

"""RBAC proven sufficient and minimal against the real authorizer.

Sufficient: `kubeshot operator` runs as a local process whose only credential is a TokenRequest
token of the chart's operator ServiceAccount, and takes a CaptureJob (created and followed with the
gateway ServiceAccount's token, as the gateway's kubernetes backend does) through its whole life
(policy → NetworkPolicy, Secret + Pod, status, clean-up, TTL deletion, Events). Minimal: what
neither component's code does is refused, both by SubjectAccessReviews (`kubectl auth can-i
--as`) and by the real tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.chart.conftest import Release, can_i, service_account_token
from tests.cluster.operator.conftest import Cluster, Operator
from tests.conftest import ROOT
from tests.support import wait_for

SHA = "0" * 64
RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 10, "sha256": SHA}})
CRD = "capturejobs.kubeshot.dev"
EXAMPLES = ROOT / "examples"


def operator_checks(
    namespace: str, lease: str
) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(allowed, refused) `auth can-i` arguments for the operator in a namespace it watches."""
    ns = ("-n", namespace)
    allowed = [
        ("list", "capturejobs.kubeshot.dev", *ns),
        ("watch", "screenshotpolicies.kubeshot.dev", *ns),
        ("delete", "capturejobs.kubeshot.dev", *ns),
        ("patch", "capturejobs.kubeshot.dev", "--subresource=status", *ns),
        ("patch", "screenshotpolicies.kubeshot.dev", "--subresource=status", *ns),
        ("create", "pods", *ns),
        ("delete", "pods", *ns),
        ("watch", "pods", *ns),
        ("patch", "pods", *ns),  # a warm pod claimed by a job
        ("create", "secrets", *ns),
        ("get", "secrets", *ns),
        ("patch", "networkpolicies.networking.k8s.io", *ns),
        ("get", "networkpolicies.networking.k8s.io", *ns),  # checked before each capture pod
        ("create", "events", *ns),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    refused = [
        ("list", "secrets", *ns),
        ("watch", "secrets", *ns),
        ("update", "secrets", *ns),
        ("patch", "capturejobs.kubeshot.dev", *ns),  # the spec is the user's; status only
        ("update", "capturejobs.kubeshot.dev", *ns),
        ("create", "capturejobs.kubeshot.dev", *ns),
        ("delete", "screenshotpolicies.kubeshot.dev", *ns),
        ("update", "pods", *ns),
        ("create", "pods", "--subresource=exec", *ns),
        ("create", "serviceaccounts", "--subresource=token", *ns),
        ("delete", "networkpolicies.networking.k8s.io", *ns),
        ("create", "deployments.apps", *ns),
        ("get", "configmaps", *ns),
        ("delete", f"customresourcedefinitions.apiextensions.k8s.io/{CRD}"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("get", f"leases.coordination.k8s.io/{lease}-other", *ns),
        ("delete", f"leases.coordination.k8s.io/{lease}", *ns),
        ("create", "leases.coordination.k8s.io", "-n", "kube-system"),
        ("get", "namespaces", "-n", namespace),
        ("list", "nodes"),
    ]
    return allowed, refused


def assert_can(
    control_plane: Any, account: str, allowed: list[tuple[str, ...]], refused: list[tuple[str, ...]]
) -> None:
    wrong = [a for a in allowed if not can_i(control_plane, account, *a)]
    wrong += [("NOT", *r) for r in refused if can_i(control_plane, account, *r)]
    assert not wrong, f"{account}: {wrong}"


def test_cluster_wide_operator_identity_is_least_privilege(
    install: Callable[..., Release], control_plane: Any, namespace: str
) -> None:
    release = install()
    account = f"{namespace}:{release.operator_sa}"
    lease = f"{release.fullname}-operator"
    allowed, refused = operator_checks(namespace, lease)
    allowed += [
        ("create", "pods", "-n", "default"),
        ("get", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
        ("update", f"leases.coordination.k8s.io/{lease}", "-n", namespace),
        ("create", "leases.coordination.k8s.io", "-n", namespace),
    ]
    refused += [("list", "secrets", "-A"), ("list", "secrets", "-n", "kube-system")]
    assert_can(control_plane, account, allowed, refused)


def test_namespaced_identities_reach_nothing_outside_their_namespaces(
    install: Callable[..., Release], control_plane: Any, namespace: str
) -> None:
    release = install(
        {"operator": {"watchNamespaces": [namespace]}, "gateway": {"watchNamespaces": [namespace]}}
    )
    operator = f"{namespace}:{release.operator_sa}"
    allowed, refused = operator_checks(namespace, f"{release.fullname}-operator")
    refused += [
        ("get", "secrets", "-n", "kube-system"),
        ("get", "secrets", "-n", "default"),
        ("create", "pods", "-n", "default"),
        ("list", "capturejobs.kubeshot.dev", "-A"),
    ]
    assert_can(control_plane, operator, allowed, refused)
    gateway = f"{namespace}:{release.gateway_sa}"
    assert_can(
        control_plane,
        gateway,
        [
            ("create", "capturejobs.kubeshot.dev", "-n", namespace),
            ("watch", "capturejobs.kubeshot.dev", "-n", namespace),
            ("get", "screenshotpolicies.kubeshot.dev", "-n", namespace),
            ("create", "secrets", "-n", namespace),
        ],
        [
            ("create", "capturejobs.kubeshot.dev", "-n", "default"),
            ("create", "secrets", "-n", "default"),
            ("delete", "secrets", "-n", "kube-system"),
        ],
    )


def test_gateway_identity_only_creates_and_follows_capturejobs(
    install: Callable[..., Release], control_plane: Any, namespace: str
) -> None:
    release = install()
    ns = ("-n", namespace)
    assert_can(
        control_plane,
        f"{namespace}:{release.gateway_sa}",
        [
            ("create", "capturejobs.kubeshot.dev", *ns),
            ("get", "capturejobs.kubeshot.dev", *ns),
            ("list", "capturejobs.kubeshot.dev", *ns),
            ("watch", "capturejobs.kubeshot.dev", *ns),
            ("list", "screenshotpolicies.kubeshot.dev", *ns),
            # A webhook's signing secret: its own Secret, made, owned by its job, or removed.
            ("create", "secrets", *ns),
            ("update", "secrets", *ns),
            ("delete", "secrets", *ns),
        ],
        [
            ("delete", "capturejobs.kubeshot.dev", *ns),
            ("patch", "capturejobs.kubeshot.dev", "--subresource=status", *ns),
            ("create", "screenshotpolicies.kubeshot.dev", *ns),
            ("get", "secrets", *ns),
            ("list", "secrets", *ns),
            ("watch", "secrets", *ns),
            ("patch", "secrets", *ns),  # a patch answers with the whole Secret: a read
            ("list", "pods", *ns),
            ("create", "pods", *ns),
            ("create", "leases.coordination.k8s.io", *ns),
            ("delete", f"customresourcedefinitions.apiextensions.k8s.io/{CRD}"),
        ],
    )


def test_local_backend_gateway_has_no_permissions(
    install: Callable[..., Release], control_plane: Any, namespace: str
) -> None:
    release = install({"gateway": {"backend": "local"}})
    gateway = f"{namespace}:{release.gateway_sa}"
    for args in [("list", "capturejobs.kubeshot.dev", "-n", namespace), ("get", "pods", "-A")]:
        assert not can_i(control_plane, gateway, *args)


def test_operator_runs_a_capture_job_with_the_charts_identity_only(
    install: Callable[..., Release],
    chart_operator: Callable[..., Operator],
    control_plane: Any,
    kubectl: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    release = install(
        {"operator": {"watchNamespaces": [namespace]}, "gateway": {"watchNamespaces": [namespace]}}
    )
    operator = chart_operator(release)
    cluster = Cluster(control_plane, kubectl, namespace)

    # The chart's default policy → its NetworkPolicy (server-side apply) and Ready status.
    def policy_ready() -> bool:
        policy = cluster.policy() or {}
        conditions = (policy.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(policy_ready, what="the default policy to be Ready")
    netpols = cluster.list("networkpolicies", "/apis/networking.k8s.io/v1")
    assert any(n["metadata"].get("ownerReferences") for n in netpols), netpols

    # Created and followed with the gateway's identity, as its kubernetes backend does.
    gateway_token = service_account_token(kubectl, namespace, release.gateway_sa)
    as_gateway = kubectl.as_token(gateway_token, tmp_path / "gateway.kubeconfig")
    job = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "CaptureJob",
        "metadata": {"name": "hello", "namespace": namespace},
        "spec": {"html": "<h1>hello</h1>", "ttlSecondsAfterFinished": 1},
    }
    as_gateway("create", "-f", "-", input=json.dumps(job))
    running = cluster.wait_phase("hello", "Running")
    seen = as_gateway("get", "capturejobs", "-n", namespace, "-o", "json").stdout
    assert json.loads(seen)["items"][0]["status"]["phase"] == "Running"
    refused = as_gateway("get", "secret", "hello-request", "-n", namespace, check=False)
    assert "forbidden" in refused.stderr.lower(), refused.stderr
    pod = cluster.wait_pod(running["status"]["podName"])
    assert pod["spec"]["containers"][0]["image"] == "ghcr.io/kubeshot/capture:0.1.0"
    assert cluster.get("secrets", "hello-request") is not None
    cluster.terminate(pod["metadata"]["name"], 0, "Completed", RESULT)
    done = cluster.wait_phase("hello", "Succeeded")
    assert done["status"]["result"]["sha256"] == SHA
    wait_for(lambda: cluster.get("pods", pod["metadata"]["name"]) is None, what="pod removed")
    wait_for(lambda: cluster.job("hello") is None, timeout=20, what="TTL deletion of the job")
    # Events are posted in the background (never holding up a capture): wait for them.
    wait_for(
        lambda: {"Started", "Succeeded"} <= {e["reason"] for e in cluster.list("events")},
        what="the operator's Events",
    )
    log = operator.log()
    # A refused call shows as HTTP 403 or "Forbidden" (not the milliseconds of a timestamp).
    refused = re.search(r"(?<![,.\d])403(?!\d)|Forbidden", log.replace("forbidden_", ""))
    assert refused is None, log[-4000:]

    # The same token is refused what the operator never does.
    token = service_account_token(kubectl, namespace, release.operator_sa)
    as_operator = kubectl.as_token(token, tmp_path / "operator.kubeconfig")
    for args in [
        ("get", "secrets", "-n", "kube-system"),
        ("get", "secrets", "-n", namespace),  # a list
        ("delete", "crd", CRD, "--dry-run=server"),
        ("create", "deployment", "x", "--image=x", "-n", namespace, "--dry-run=server"),
    ]:
        refused = as_operator(*args, check=False)
        assert refused.returncode != 0, args
        assert "forbidden" in refused.stderr.lower(), (args, refused.stderr)


def test_examples_are_reconciled_by_the_charts_operator_identity(
    install: Callable[..., Release],
    chart_operator: Callable[..., Operator],
    control_plane: Any,
    kubectl: Any,
    namespace: str,
) -> None:
    manifests = sorted(EXAMPLES.glob("*.yaml")) if EXAMPLES.is_dir() else []
    if not manifests:
        pytest.skip("examples/ holds no manifests yet")
    release = install({"operator": {"watchNamespaces": [namespace]}})
    chart_operator(release)
    # Policies first (hack/e2e-kind.sh does the same): a job whose policy is missing fails.
    policies = [m for m in manifests if "\nkind: ScreenshotPolicy" in "\n" + m.read_text()]
    for manifest in policies:
        kubectl("apply", "-n", namespace, "-f", str(manifest))
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    cluster = Cluster(control_plane, kubectl, namespace)
    jobs = cluster.list("capturejobs", "/apis/kubeshot.dev/v1alpha1")
    assert jobs, "examples/ created no CaptureJob"
    for job in jobs:
        name = job["metadata"]["name"]
        seen = cluster.wait_phase(name, "Queued", "Running", "Failed", timeout=30)
        assert seen["status"]["phase"] != "Failed", seen["status"]
    running = [j for j in cluster.list("capturejobs", "/apis/kubeshot.dev/v1alpha1")
               if (j.get("status") or {}).get("phase") == "Running"]  # fmt: skip
    for job in running:
        cluster.wait_pod(job["status"]["podName"])

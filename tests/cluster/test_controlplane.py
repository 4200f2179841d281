"""The test control plane behaves like a real cluster where operators break: RBAC with
service-account tokens, Pod Security admission, garbage collection by the controller-manager."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import wait_for

if TYPE_CHECKING:
    from tests.cluster.conftest import Kubectl


def test_version_is_the_pinned_release(kubectl: Kubectl) -> None:
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"].startswith("v1.")
    assert server["major"] == "1"


def test_service_account_token_is_authorized_by_rbac(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = kubectl("create", "token", "robot", "-n", namespace, "--duration=10m").stdout.strip()
    robot = kubectl.as_token(token, tmp_path / "robot.kubeconfig")

    def can_list_configmaps() -> str:
        return robot(
            "auth", "can-i", "list", "configmaps", "-n", namespace, check=False
        ).stdout.strip()

    whoami = robot.json("auth", "whoami")["status"]["userInfo"]
    assert whoami["username"] == f"system:serviceaccount:{namespace}:robot"
    assert can_list_configmaps() == "no"
    denied = robot("get", "configmaps", "-n", namespace, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr

    kubectl("create", "role", "reader", "--verb=get,list", "--resource=configmaps", "-n", namespace)
    kubectl(
        "create", "rolebinding", "robot-reads", "--role=reader",
        f"--serviceaccount={namespace}:robot", "-n", namespace,
    )  # fmt: skip
    wait_for(lambda: can_list_configmaps() == "yes", what="RBAC to allow listing configmaps")
    robot("get", "configmaps", "-n", namespace)


def test_pod_security_admission_enforces_restricted(kubectl: Kubectl, namespace: str) -> None:
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": namespace},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "securityContext": {"privileged": True}}
            ]
        },
    }
    rejected = kubectl.apply(privileged, check=False)
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr
    assert "privileged" in rejected.stderr

    restricted = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "restricted", "namespace": namespace},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    kubectl.apply(restricted)


def test_controller_manager_collects_garbage_and_publishes_root_ca(
    kubectl: Kubectl, namespace: str
) -> None:
    owner = kubectl.json("create", "configmap", "owner", "-n", namespace)
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    kubectl.apply(dependent)
    kubectl("delete", "configmap", "owner", "-n", namespace)

    def dependent_gone() -> bool:
        got = kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
        return got.returncode != 0 and "NotFound" in got.stderr

    wait_for(dependent_gone, 60, "the garbage collector to delete the dependent")
    root_ca = ("get", "configmap", "kube-root-ca.crt", "-n", namespace)
    wait_for(lambda: kubectl(*root_ca, check=False).returncode == 0, what="the root CA configmap")

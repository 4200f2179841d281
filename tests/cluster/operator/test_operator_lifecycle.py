"""Queueing, TTL, garbage collection, NetworkPolicies, Pod Security, restarts and replicas."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.cluster.operator.conftest import Cluster, Operator
from tests.support import wait_for

SHA = "0" * 64
RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 10, "sha256": SHA}})
NETWORKING = "/apis/networking.k8s.io/v1"


def running_pods(cluster: Cluster) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in cluster.capture_pods()
        if p.get("status", {}).get("phase") not in {"Succeeded", "Failed"}
        and not p["metadata"].get("deletionTimestamp")
    )


def test_jobs_queue_fifo_under_max_concurrent_jobs(operator: Operator, cluster: Cluster) -> None:
    cluster.create_policy(limits={"maxConcurrentJobs": 2})
    names = [f"job-{i}" for i in range(1, 7)]
    for name in names:
        cluster.create_job(name, html=f"<p>{name}</p>")
    # Every job admitted before any finishes: a job admitted after one finished finds a free
    # slot and rightly never queues (the fake kubelet can finish pods faster than the operator
    # admits the last jobs).
    for name in names[2:]:
        cluster.wait_phase(name, "Queued")
    started: list[str] = []
    for _ in range(len(names)):
        pods = wait_for(lambda: running_pods(cluster) or None, what="a running pod")
        assert len(pods) <= 2, pods
        job_names = sorted({p.rsplit("-", 1)[0] for p in pods}, key=names.index)
        for name in job_names:
            if name not in started:
                started.append(name)
        first = f"{job_names[0]}-1"
        cluster.terminate(first, 0, "Completed", RESULT)
        cluster.wait_phase(job_names[0], "Succeeded")
        wait_for(lambda pod=first: cluster.get("pods", pod) is None, what=f"{first} removed")
    assert started == names
    wait_for(
        lambda: (cluster.policy() or {}).get("status", {}).get("activeJobs") == 0,
        what="activeJobs 0 once every job finished",
    )
    queued = {
        e["involvedObject"]["name"] for e in cluster.list("events") if e["reason"] == "Queued"
    }
    # The others waited; the first found a free slot (the second too, unless admitted while
    # the first's admission was in flight: it then waits for it, a moment).
    assert set(names[2:]) <= queued and names[0] not in queued


def test_finished_jobs_are_deleted_after_their_ttl(operator: Operator, cluster: Cluster) -> None:
    cluster.create_policy(runtime={"ttlSecondsAfterFinished": 3600})
    cluster.create_job("short", html="<p>x</p>", ttlSecondsAfterFinished=1)
    cluster.create_job("kept", html="<p>x</p>")
    for name in ("short", "kept"):
        cluster.wait_pod(f"{name}-1")
        cluster.terminate(f"{name}-1", 0, "Completed", RESULT)
    cluster.wait_phase("kept", "Succeeded")
    wait_for(lambda: cluster.job("short") is None, timeout=15, what="the TTL to delete the job")
    time.sleep(1)
    assert cluster.job("kept") is not None


def test_deleting_a_job_cascades_to_its_pod_and_secret(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.create_policy()
    job = cluster.create_job("doomed", html="<p>x</p>")
    pod = cluster.wait_pod("doomed-1")
    assert pod["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "CaptureJob",
            "name": "doomed",
            "uid": job["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert cluster.get("secrets", "doomed-request") is not None
    # No finalizer of ours holds the job: it goes at once, the garbage collector takes the rest.
    assert not (cluster.job("doomed") or {})["metadata"].get("finalizers")
    cluster.kubectl("delete", "capturejob", "doomed", "-n", cluster.namespace, "--wait=false")
    wait_for(lambda: cluster.get("pods", "doomed-1") is None, what="GC of the pod")
    wait_for(lambda: cluster.get("secrets", "doomed-request") is None, what="GC of the secret")


def network_policy(cluster: Cluster, name: str = "kubeshot-capture-default") -> Any:
    return cluster.get("networkpolicies", name, NETWORKING)


def test_policy_becomes_a_network_policy_and_follows_its_updates(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": "default"},
            "spec": {"network": {"allowedPorts": [443]}},
        }
    )
    np = wait_for(lambda: network_policy(cluster), what="the NetworkPolicy")
    assert np["spec"]["ingress"] == [] if "ingress" in np["spec"] else True
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["egress"][3]["ports"] == [{"protocol": "TCP", "port": 443}]
    policy = wait_for(
        lambda: (
            (p := cluster.policy()) and p.get("status", {}).get("observedGeneration") == 1 and p
        ),
        what="the policy status",
    )
    ready = next(c for c in policy["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "NetworkPolicyApplied")
    assert policy["status"]["networkPolicyName"] == "kubeshot-capture-default"

    cluster.apply(
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": "default"},
            "spec": {"network": {"allowedPorts": [443, 8443], "allowedCIDRs": ["10.20.0.0/16"]}},
        }
    )
    np = wait_for(
        lambda: (n := network_policy(cluster)) and len(n["spec"]["egress"]) == 5 and n,
        what="the NetworkPolicy update",
    )
    assert np["spec"]["egress"][3]["ports"] == [
        {"protocol": "TCP", "port": 443},
        {"protocol": "TCP", "port": 8443},
    ]
    assert np["spec"]["egress"][4] == {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
    wait_for(
        lambda: (cluster.policy() or {}).get("status", {}).get("observedGeneration") == 2,
        what="observedGeneration 2",
    )
    cluster.kubectl(
        "delete", "screenshotpolicy", "default", "-n", cluster.namespace, "--wait=false"
    )
    wait_for(lambda: network_policy(cluster) is None, what="GC of the NetworkPolicy")


def test_restricted_pod_security_admits_the_capture_pod(
    operator: Operator, cluster: Cluster
) -> None:
    labels = cluster.kubectl.json("get", "namespace", cluster.namespace)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster.create_policy()
    cluster.create_job("secure", html="<p>x</p>")
    pod = cluster.wait_pod("secure-1")
    # The same pod, made a little less safe, is refused: the namespace really enforces.
    weaker = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "weaker", "namespace": cluster.namespace},
        "spec": pod["spec"],
    }
    weaker["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = cluster.kubectl.apply(weaker, check=False)
    assert refused.returncode != 0
    assert "allowPrivilegeEscalation != false" in refused.stderr


def test_operator_killed_mid_job_restarts_without_a_second_pod(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    first = start_operator()
    cluster.create_policy()
    cluster.create_job("survivor", html="<p>x</p>")
    cluster.wait_phase("survivor", "Running")
    cluster.wait_pod("survivor-1")
    first.stop(signal.SIGKILL)
    cluster.create_job("newcomer", html="<p>x</p>")  # while no operator runs
    cluster.terminate("survivor-1", 0, "Completed", RESULT)  # finishes while no operator runs
    second = start_operator()
    job = cluster.wait_phase("survivor", "Succeeded", "Failed")
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["attempts"] == 1
    cluster.wait_pod("newcomer-1")
    time.sleep(1.5)  # a few sweeps: nothing else may appear
    assert cluster.get("pods", "survivor-2") is None
    assert [p["metadata"]["name"] for p in cluster.capture_pods()] == ["newcomer-1"]
    assert second.proc.poll() is None


def test_restart_finds_a_pod_lost_while_it_was_down(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    first = start_operator()
    cluster.create_policy()
    cluster.create_job("orphan", html="<p>x</p>", retries=1)
    cluster.wait_pod("orphan-1")
    first.stop(signal.SIGKILL)
    cluster.kubectl("delete", "pod", "orphan-1", "-n", cluster.namespace, "--wait=false")
    start_operator()
    cluster.wait_pod("orphan-2")
    job = cluster.job("orphan")
    assert job is not None
    assert job["status"]["attempts"] == 2


def test_two_replicas_process_every_job_once(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    leader = start_operator()
    follower = start_operator(wait=False)
    assert wait_for(follower.healthz, what="the follower's /healthz") == {
        "status": "ok",
        "leader": False,
    }
    cluster.create_policy(limits={"maxConcurrentJobs": 100})
    for i in range(20):
        cluster.create_job(f"twin-{i}", html="<p>x</p>")
    for i in range(20):
        cluster.wait_phase(f"twin-{i}", "Running")
    leader.stop()  # releases the Lease: the follower takes over at once
    follower.wait_leader(timeout=15)
    for i in range(20, 25):
        cluster.create_job(f"twin-{i}", html="<p>x</p>")
    for i in range(20, 25):
        cluster.wait_phase(f"twin-{i}", "Running")
    for i in range(25):
        cluster.terminate(f"twin-{i}-1", 0, "Completed", RESULT)
    for i in range(25):
        job = cluster.wait_phase(f"twin-{i}", "Succeeded")
        assert job["status"]["attempts"] == 1
    started = [
        e["involvedObject"]["name"] for e in cluster.list("events") if e["reason"] == "Started"
    ]
    assert sorted(started) == sorted(f"twin-{i}" for i in range(25))
    lease = cluster.get("leases", "kubeshot-operator", "/apis/coordination.k8s.io/v1")
    assert lease is not None
    assert lease["spec"]["leaseTransitions"] >= 1


def test_metrics_and_liveness(operator: Operator, cluster: Cluster) -> None:
    cluster.create_policy()
    cluster.create_job("counted", html="<p>x</p>")
    cluster.wait_pod("counted-1")
    assert operator.healthz() == {"status": "ok", "leader": True}
    text = operator.metrics()
    assert "kubeshot_operator_pods_created_total 1.0" in text
    assert "kubeshot_operator_reconcile_time_seconds_bucket" in text
    assert "kubeshot_operator_leader 1.0" in text
    wait_for(
        lambda: 'kubeshot_operator_jobs{phase="Running"} 1.0' in operator.metrics(),
        what="the jobs gauge",
    )
    assert (
        f'kubeshot_operator_workqueue_depth{{namespace="{cluster.namespace}",policy="default"}} 0.0'
        in text
    )

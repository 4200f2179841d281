"""Warm capture pods (docs/operator.md "Warm capture pods") against a real API server: the pool,
the claim, the assignment endpoint, and the queue's failure reasons for warm pods exactly as for
cold ones. The fake kubelet runs a warm pod's real container (`python -m kubeshot_capture`), or
the test itself asks as a warm pod would, with the pod's key, to drive failures."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.cluster.operator.conftest import Cluster, FakeKubelet, Operator, Uploads
from tests.cluster.operator.test_operator_capture import capture_job
from tests.support import free_port, metric_value, wait_for

WARM = "kubeshot.dev/warm"


def warm_policy(pods: int = 1, **limits: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "ScreenshotPolicy",
        "metadata": {"name": "default"},
        "spec": {
            "limits": {"memory": "512Mi", "timeoutSeconds": 30, **limits},
            "runtime": {"warmPods": pods},
        },
    }


def idle_pods(cluster: Cluster) -> list[dict[str, Any]]:
    """The policy's warm pods that no job has claimed."""
    return [
        p
        for p in cluster.capture_pods()
        if p["metadata"]["labels"].get(WARM) == "true"
        and not p["metadata"].get("deletionTimestamp")
        and [o["kind"] for o in p["metadata"]["ownerReferences"]] == ["ScreenshotPolicy"]
    ]


def one_idle_pod(cluster: Cluster, other_than: frozenset[str] = frozenset()) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        fresh = [p for p in idle_pods(cluster) if p["metadata"]["name"] not in other_than]
        return fresh[0] if fresh else None

    pod: dict[str, Any] = wait_for(found, 30, "an idle warm pod")
    return pod


def asking(operator: Operator) -> float:
    return metric_value(operator.metrics(), "kubeshot_operator_warm_pods_asking")


def pod_key(cluster: Cluster, pod: str) -> str:
    secret = wait_for(lambda: cluster.get("secrets", f"{pod}-key"), what=f"{pod}'s key")
    return base64.b64decode(secret["data"]["key"]).decode()


def url_of(pod: dict[str, Any]) -> str:
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    return str(env["KUBESHOT_ASSIGNMENT_URL"])


def ask(url: str, key: str | None, data: bytes | None = None) -> tuple[int, bytes]:
    """One request as a warm pod makes it: its status and body."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def running(cluster: Cluster, pod: str) -> None:
    """What the kubelet writes once the container runs."""
    now = "2026-01-01T00:00:00Z"
    state = {"running": {"startedAt": now}}
    container = {"name": "capture", "ready": True, "restartCount": 0, "state": state}
    container.update({"image": "kubeshot/capture:test", "imageID": ""})
    cluster.write_pod_status(
        pod, {"phase": "Running", "startTime": now, "containerStatuses": [container]}
    )


def assigned_in_background(url: str, key: str) -> Callable[[], tuple[int, bytes]]:
    """Ask (until a job comes) in a thread, as the pod does; the answer when it came."""
    answers: list[tuple[int, bytes]] = []

    def poll() -> None:
        while True:
            status, body = ask(url, key)
            if status != 204:
                answers.append((status, body))
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def answer() -> tuple[int, bytes]:
        thread.join(60)
        assert answers, "no assignment came"
        return answers[0]

    return answer


def test_a_job_runs_in_the_warm_pod_that_asked_for_it_and_the_pool_refills(
    operator: Operator, cluster: Cluster, kubelet: FakeKubelet, uploads: Uploads
) -> None:
    cluster.apply(warm_policy())
    pod = one_idle_pod(cluster)
    name = pod["metadata"]["name"]
    # Built like a cold pod, minus a deadline; its key in a Secret of its own, never in sight.
    spec = pod["spec"]
    assert "activeDeadlineSeconds" not in spec
    assert spec["automountServiceAccountToken"] is False
    assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    key = pod_key(cluster, name)
    assert key not in json.dumps(pod)
    secret = cluster.get("secrets", f"{name}-key")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]

    warm = kubelet.start(name)
    wait_for(lambda: asking(operator) >= 1, 60, "the warm pod to ask for a job")
    page = "<title>warm</title><h1>hello</h1>"
    cluster.apply(capture_job("hot", html=page, format="png"))
    # Succeeded from the pod's own report: the kubelet has not written the pod's end yet.
    job = cluster.wait_phase("hot", "Succeeded", "Failed", timeout=60)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    assert job["status"]["podName"] == name
    assert job["status"]["attempts"] == 1
    path = f"/v1/internal/uploads/{cluster.namespace}/hot"
    assert uploads.received[path].startswith(b"\x89PNG")
    assert uploads.tokens[path] == job["status"]["uploadTokenSha256"]
    assert job["status"]["result"]["title"] == "warm"
    assert kubelet.finish(warm) == 0, warm.output.read_text()[-3000:]
    # Its lines carry the job's fields from its assignment on: the operator sent them with it.
    lines = [json.loads(x) for x in warm.output.read_text().splitlines() if x.startswith("{")]
    [assigned] = [line for line in lines if line.get("message") == "assigned a job"]
    assert assigned["job"] == f"{cluster.namespace}/hot", assigned
    assert assigned["policy"] == "default", assigned
    wait_for(lambda: cluster.get("pods", name) is None, what="the used warm pod removed")
    # Never reused; the pool has a fresh pod in its place.
    one_idle_pod(cluster, other_than=frozenset({name}))
    assert "kubeshot_operator_warm_pods_claimed_total 1.0" in operator.metrics()


def test_the_assignment_endpoint_answers_only_a_warm_pod_with_its_own_key(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(warm_policy(pods=2))
    wait_for(lambda: len(idle_pods(cluster)) == 2, 30, "two warm pods")
    first, second = (p["metadata"]["name"] for p in idle_pods(cluster))
    url = url_of(cluster.get("pods", first) or {})
    first_key, second_key = pod_key(cluster, first), pod_key(cluster, second)
    assert ask(url, None)[0] == 401
    assert ask(url, second_key)[0] == 401  # another pod's key
    assert ask(url, first_key + "x")[0] == 401
    assert ask(url.replace(first, "no-such-pod"), first_key)[0] == 404
    assert ask(url + "/outcome", first_key, b'{"failure": {}}')[0] == 409  # no job names it


def assigned(
    operator: Operator, cluster: Cluster, job: str, used: frozenset[str] = frozenset()
) -> tuple[str, bytes]:
    """A job started in an idle warm pod that asks for it as a pod does (the test is the
    pod, started by the kubelet): the pod's name and the request it was given."""
    pod = one_idle_pod(cluster, other_than=used)
    name = pod["metadata"]["name"]
    running(cluster, name)
    answer = assigned_in_background(url_of(pod), pod_key(cluster, name))
    wait_for(lambda: asking(operator) >= 1, 30, "the pod to ask")
    cluster.apply(capture_job(job, html=f"<p>{job}</p>", format="png"))
    status, body = answer()
    assert status == 200
    return name, body


def test_warm_pods_fail_as_cold_ones_and_a_lost_one_is_retried_never_run_twice(
    operator: Operator, cluster: Cluster
) -> None:
    cluster.apply(warm_policy())
    # Out of memory after the assignment: MemoryLimitExceeded.
    name, body = assigned(operator, cluster, "oom")
    assert json.loads(body)["options"]["html"] == "<p>oom</p>"
    claimed = cluster.get("pods", name)
    assert claimed is not None
    assert [o["name"] for o in claimed["metadata"]["ownerReferences"]] == ["oom"]
    # The deadline, counted from the pod's start, covers the capture's timeout and grace.
    assert claimed["spec"]["activeDeadlineSeconds"] >= 30
    cluster.terminate(name, 137, "OOMKilled")
    job = cluster.wait_phase("oom", "Failed", "Succeeded")
    assert job["status"]["failure"]["reason"] == "MemoryLimitExceeded", job["status"]

    # Past its deadline: the kubelet's DeadlineExceeded is Timeout.
    name, _ = assigned(operator, cluster, "slow", frozenset({name}))
    cluster.write_pod_status(name, {"phase": "Failed", "reason": "DeadlineExceeded"})
    job = cluster.wait_phase("slow", "Failed", "Succeeded")
    assert job["status"]["failure"]["reason"] == "Timeout", job["status"]

    # Lost after the assignment: PodLost, retried in another pod; the lost one never runs it.
    lost, _ = assigned(operator, cluster, "lost", frozenset({name}))
    cluster.kubectl("delete", "pod", lost, "-n", cluster.namespace, "--wait=false")
    job = wait_for(
        lambda: (j := cluster.job("lost")) and j["status"].get("attempts", 0) >= 2 and j,
        60,
        "the lost job's second attempt",
    )
    assert job["status"]["podName"] != lost
    events = [e for e in cluster.list("events") if e["involvedObject"]["name"] == "lost"]
    retried = [e["message"] for e in events if e["reason"] == "Retrying"]
    assert retried and f"the capture pod {lost} was deleted" in retried[0], retried


def test_an_assignment_survives_a_failover(
    start_operator: Callable[..., Operator], cluster: Cluster
) -> None:
    port = free_port()
    where = {
        "assignment_port": port,
        "assignment_url": f"http://127.0.0.1:{port}/v1/assignments",
    }
    first = start_operator(**where)
    cluster.apply(warm_policy())
    pod = one_idle_pod(cluster)
    name = pod["metadata"]["name"]
    key = pod_key(cluster, name)
    running(cluster, name)
    answer = assigned_in_background(url_of(pod), key)
    wait_for(lambda: asking(first) >= 1, 30, "the pod to ask")
    cluster.apply(capture_job("moved", html="<p>moved</p>", format="png"))
    status, given = answer()
    assert status == 200
    first.stop(9)
    second = start_operator(**where)
    # The pod asks again (its connection broke): the new leader answers with the same job,
    # from the API server alone, and records the pod's one outcome once.
    # (As a pod does, it asks again after a 503: the new leader's indexes are still filling.)
    status, again = wait_for(
        lambda: (answer := ask(url_of(pod), key))[0] != 503 and answer, 30, "the new leader"
    )
    assert (status, again) == (200, given)
    outcome = {"failure": {"reason": "Timeout", "message": "the page took too long"}}
    assert ask(url_of(pod) + "/outcome", key, json.dumps(outcome).encode())[0] == 204
    job = cluster.wait_phase("moved", "Failed", "Succeeded")
    assert job["status"]["failure"]["reason"] == "Timeout"
    assert job["status"]["attempts"] == 1
    assert job["status"]["podName"] == name
    assert second.healthz() is not None

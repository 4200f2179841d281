"""CaptureJobs end to end on a real kubelet: the pod runs, is limited, and is stopped.

Each test starts the operator (and, where the artifact travels, the gateway) as local processes;
the capture pods are real pods of the capture image, on the node, under their NetworkPolicy.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from PIL import Image

from tests.cluster.node.conftest import NodeGateway, Pages, PodWatch, nodes, pod_events
from tests.cluster.operator.conftest import Cluster
from tests.support import wait_for

PAGE_CIDR = f"{nodes.PAGE_ADDRESS}/32"


def post(gateway: NodeGateway, path: str, document: dict[str, Any]) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(document).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {gateway.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300, context=gateway.tls) as answer:
            return answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def test_a_capturejob_runs_in_a_real_pod_and_answers_with_a_real_artifact(
    node: Any,
    gateway: NodeGateway,
    start_node_operator: Callable[..., Any],
    cluster: Cluster,
    pages: Pages,
    pod_watch: PodWatch,
) -> None:
    start_node_operator(gateway.upload_url)
    cluster.create_policy(
        limits={"memory": "1Gi", "timeoutSeconds": 60}, network={"allowedCIDRs": [PAGE_CIDR]}
    )
    url = pages.add(
        "/hello",
        "<html><body style='margin:0;background:rgb(200,0,0)'><h1>node tier</h1></body></html>",
    )
    status, body, headers = post(
        gateway,
        "/v1/screenshot",
        {"url": url, "format": "png", "viewport": {"width": 640, "height": 360}},
    )
    jobs = cluster.list("capturejobs", "/apis/kubeshot.dev/v1alpha1")
    assert len(jobs) == 1, (status, body[:2000])
    job = jobs[0]
    pod_name = (job.get("status") or {}).get("podName")
    assert status == 200, (body[:2000], job.get("status"), pod_events(cluster, str(pod_name)))
    image = Image.open(io.BytesIO(body))
    assert image.format == "PNG"
    assert image.size == (640, 360)
    assert image.convert("RGB").getpixel((600, 340)) == (200, 0, 0)  # the page, not a blank one
    assert headers["X-Kubeshot-Sha256"] == hashlib.sha256(body).hexdigest()
    assert "/hello" in pages.hits  # fetched by the pod, through its NetworkPolicy

    finished = cluster.wait_phase(job["metadata"]["name"], "Succeeded")
    result = finished["status"]["result"]
    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    # The pod's whole report reaches the job: its format, timings and phases, not a summary.
    assert result["format"] == "png"
    assert result["bytes"] == len(body)
    assert result["timings"]["totalMs"] > result["timings"]["renderMs"] > 0
    assert [p["name"] for p in result["timings"]["phases"]][:2] == ["setup", "navigate"]
    pod = wait_for(lambda: pod_watch.terminated(finished["status"]["podName"]), 30, "the pod")
    assert pod["spec"]["nodeName"] == nodes.NODE_NAME
    [container] = pod["status"]["containerStatuses"]
    assert container["state"]["terminated"]["exitCode"] == 0
    assert container["imageID"]  # the kubelet ran the image, not a stand-in


MEMORY_HOG = """<html><body><h1>allocating</h1><script>
const kept = [];
function grow() {
  for (let i = 0; i < 16; i++) kept.push(new Float64Array(1 << 20).fill(Math.random()));
  setTimeout(grow, 0);
}
grow();
</script></body></html>"""


def test_a_page_past_the_memory_limit_ends_with_memory_limit_exceeded(
    node: Any,
    start_node_operator: Callable[..., Any],
    cluster: Cluster,
    pages: Pages,
    pod_watch: PodWatch,
) -> None:
    start_node_operator(f"http://{nodes.HOST_ADDRESS}:9/v1/internal/uploads")
    cluster.create_policy(
        limits={"memory": "600Mi", "timeoutSeconds": 60}, network={"allowedCIDRs": [PAGE_CIDR]}
    )
    url = pages.add("/hog", MEMORY_HOG)
    cluster.create_job("hog", url=url, retries=0)
    job = cluster.wait_phase("hog", "Failed", "Succeeded", timeout=180)
    pod_name = job["status"].get("podName")
    assert job["status"]["phase"] == "Failed", job["status"]
    assert job["status"]["failure"]["reason"] == "MemoryLimitExceeded", (
        job["status"],
        pod_events(cluster, str(pod_name)),
    )
    pod = wait_for(lambda: pod_watch.terminated(pod_name), 30, "the pod's last state")
    [container] = pod["status"]["containerStatuses"]
    assert container["state"]["terminated"]["reason"] == "OOMKilled"  # the kernel's verdict
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "600Mi"


def test_active_deadline_ends_a_hanging_capture_with_timeout(
    node: Any,
    start_node_operator: Callable[..., Any],
    cluster: Cluster,
    pages: Pages,
    pod_watch: PodWatch,
) -> None:
    # The upload endpoint accepts connections and never answers: the pod hangs after capturing,
    # where its engine's own timeout no longer runs. Only the kubelet can end it.
    hang = socket.create_server((nodes.HOST_ADDRESS, 0))
    upload = "http://{}:{}/v1/internal/uploads".format(*hang.getsockname())
    try:
        start_node_operator(upload, pod_deadline_grace_seconds=0)
        cluster.create_policy(
            limits={"memory": "1Gi", "timeoutSeconds": 15},
            network={"allowedCIDRs": [PAGE_CIDR]},
        )
        url = pages.add("/slow", "<h1>captured, then stuck uploading</h1>")
        cluster.create_job("stuck", url=url, retries=0)
        job = cluster.wait_phase("stuck", "Failed", "Succeeded", timeout=120)
    finally:
        hang.close()
    pod_name = job["status"].get("podName")
    assert job["status"]["phase"] == "Failed", job["status"]
    assert job["status"]["failure"]["reason"] == "Timeout", job["status"]
    pod = pod_watch.last(pod_name)
    assert pod["spec"]["activeDeadlineSeconds"] == 15
    events = pod_events(cluster, pod_name)
    assert pod["status"]["reason"] == "DeadlineExceeded", (pod["status"], events)
    assert "/slow" in pages.hits

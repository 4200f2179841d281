"""The happy path end to end, and what the operator builds for it in a real API server."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.cluster.operator.conftest import Cluster, FakeKubelet, Operator, Uploads
from tests.support import wait_for

POLICY = {
    "apiVersion": "kubeshot.dev/v1alpha1",
    "kind": "ScreenshotPolicy",
    "metadata": {"name": "default"},
    "spec": {"limits": {"memory": "512Mi", "timeoutSeconds": 30}},
}


def capture_job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "CaptureJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_kubectl_apply_to_succeeded_with_the_artifact_uploaded(
    operator: Operator, cluster: Cluster, kubelet: FakeKubelet, uploads: Uploads
) -> None:
    cluster.apply(POLICY)
    page = "<title>Hello\tkubeshot</title><h1 style='color:red'>hello</h1>"
    cluster.apply(capture_job("hello", html=page, format="png"))

    running = cluster.wait_phase("hello", "Running")
    status = running["status"]
    assert status["podName"] == "hello-1"
    assert status["attempts"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Admitted": "True",
        "Started": "True",
    }
    secret = cluster.get("secrets", "hello-request")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == running["metadata"]["uid"]

    done = kubelet.run("hello-1")
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    job = cluster.wait_phase("hello", "Succeeded", "Failed")
    result = job["status"]["result"]
    assert job["status"]["phase"] == "Succeeded", job["status"]
    path = f"/v1/internal/uploads/{cluster.namespace}/hello"
    artifact = uploads.received[path]
    assert artifact.startswith(b"\x89PNG")
    assert result["contentType"] == "image/png"
    assert result["bytes"] == len(artifact)
    assert result["sha256"] == hashlib.sha256(artifact).hexdigest()
    assert result["url"] == f"https://gateway.test{path}"
    # What the target answered: the title (html input has no HTTP status nor final URL).
    assert result["title"] == "Hello kubeshot"
    assert "httpStatus" not in result and "finalUrl" not in result
    # The pod uploaded with the job's own token, which only the job's status names (hashed).
    assert uploads.tokens[path] == job["status"]["uploadTokenSha256"]
    assert job["status"]["completionTime"]
    # The result is recorded: the pod and the request Secret (with the token) are removed.
    wait_for(lambda: cluster.get("pods", "hello-1") is None, what="the pod to be removed")
    wait_for(lambda: cluster.get("secrets", "hello-request") is None, what="the secret removed")
    events = cluster.list("events")
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "hello"]
    assert {"Started", "Succeeded"} <= set(reasons)


def test_the_targets_answer_is_kept_in_status_result(operator: Operator, cluster: Cluster) -> None:
    # The pod's report, as the kubelet hands it over: the API server keeps every field of it
    # (the CRD's status schema names them), the operator cleans what the page wrote.
    cluster.apply(POLICY)
    cluster.apply(capture_job("answered", url="https://example.com/", format="png"))
    cluster.wait_pod("answered-1")
    reported = {
        "contentType": "image/png",
        "bytes": 10,
        "sha256": "0" * 64,
        "finalUrl": "https://example.com/missing",
        "httpStatus": 404,
        "title": "Not\r\nfound \u202eyet",
    }
    cluster.terminate("answered-1", 0, "Completed", json.dumps({"result": reported}))
    job = cluster.wait_phase("answered", "Succeeded", "Failed")
    assert job["status"]["phase"] == "Succeeded", job["status"]
    result = job["status"]["result"]
    assert result["finalUrl"] == "https://example.com/missing"
    assert result["httpStatus"] == 404
    assert result["title"] == "Not found yet"

"""Capture pods upload straight to the S3 result store (KUBESHOT_STORE=s3), end to end: the real
control plane, `kubeshot operator` and `kubeshot serve --backend kubernetes` as subprocesses with
the same store environment, a real S3-compatible server (versitygw, `s3_server`), and the fake
kubelet running the real capture pod, which POSTs the form the operator signed for its attempt.
The gateway never sees the bytes on their way in: it checks them at their first read instead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeshot.api import CaptureOutcome, CaptureReport, Format
from kubeshot.store.s3 import S3Config, S3Store
from kubeshot_capture.pod import multipart_form, termination_message
from tests.cluster.operator.conftest import (
    Cluster,
    FakeKubelet,
    Operator,
    Operators,
    operator_env,
    stop_gateway,
)
from tests.cluster.operator.test_gateway_kubernetes import (
    POLICY,
    Gateway,
    gateway_jobs,
    http,
    png_file,
    pod_of,
    start_gateway,
)
from tests.conftest import S3Server
from tests.support import free_port, wait_for

MAX_UPLOAD_BYTES = 1024 * 1024


@pytest.fixture
def store_env(s3_server: S3Server) -> dict[str, str]:
    """The store's environment, the same for the operator and the gateway (as the chart sets
    it); a prefix of the test's own in the session's bucket."""
    return {
        **s3_server.store_env(f"test-{uuid.uuid4().hex[:8]}"),
        "KUBESHOT_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "KUBESHOT_S3_NETWORK_PEERS": json.dumps([{"ipBlock": {"cidr": "127.0.0.1/32"}}]),
    }


@pytest.fixture
def s3_operator(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    store_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Operator]:
    operators = Operators(tmp_path)
    port = free_port()
    # An upload URL nobody listens on: with S3 the pods never use it.
    env = operator_env(control_plane, namespace, "http://127.0.0.1:9/none", http_port=port)
    yield operators.launch({**env, **store_env}, port)
    operators.stop_all()


@pytest.fixture
def s3_gateway(
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    store_env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Gateway]:
    served = start_gateway(control_plane, namespace, tmp_path, store_env)
    yield served
    stop_gateway(served.proc, served.log_path)


def bucket_store(s3: S3Server, store_env: dict[str, str]) -> S3Store:
    """The test's own client of the bucket: what anyone with its keys can do."""
    config = S3Config(
        bucket=s3.bucket,
        prefix=store_env["KUBESHOT_S3_PREFIX"],
        endpoint=s3.endpoint,
        access_key_id=s3.access_key_file.read_text().strip(),
        secret_access_key=s3.secret_key_file.read_text().strip(),
    )
    return S3Store(config, ttl_seconds=3600)


def in_bucket(s3: S3Server, key: str) -> bytes | None:
    """The object as the server's posix backend keeps it (a file under the bucket)."""
    path = s3.data / s3.bucket / key
    return path.read_bytes() if path.is_file() else None


def request_of(cluster: Cluster, job: str) -> dict[str, Any]:
    secret = cluster.get("secrets", f"{job}-request")
    assert secret is not None
    return dict(json.loads(base64.b64decode(secret["data"]["request.json"])))


def async_job(gateway: Gateway, cluster: Cluster) -> tuple[str, str, str]:
    """An async PNG capture through the gateway, Running: (its id, its job's name, its pod)."""
    cluster.create_policy(**POLICY)
    accepted = gateway.call("POST", "/v1/captures", {"html": "<h1>to the bucket</h1>"})
    assert accepted.status == 202, accepted.body
    [job] = gateway_jobs(cluster, 1)
    name = job["metadata"]["name"]
    return accepted.json()["id"], name, pod_of(cluster, name)


def wait_succeeded(gateway: Gateway, job_id: str) -> dict[str, Any]:
    def succeeded() -> dict[str, Any] | None:
        state: dict[str, Any] = gateway.call("GET", f"/v1/captures/{job_id}").json()
        assert state["phase"] != "Failed", state
        return state if state["phase"] == "Succeeded" else None

    found: dict[str, Any] = wait_for(succeeded, 60, "the capture to succeed")
    return found


def test_a_capture_pod_uploads_to_the_bucket_and_the_gateway_serves_it_checked(
    s3_operator: Operator,
    s3_gateway: Gateway,
    cluster: Cluster,
    kubelet: FakeKubelet,
    s3_server: S3Server,
    store_env: dict[str, str],
) -> None:
    job_id, name, pod = async_job(s3_gateway, cluster)
    key = f"{store_env['KUBESHOT_S3_PREFIX']}/{job_id}"
    upload = request_of(cluster, name)["upload"]
    # The Secret holds the form the operator signed for this job's object; no token, no keys.
    assert upload["url"] == f"{s3_server.endpoint}/{s3_server.bucket}"
    assert set(upload) == {"url", "fields"} and upload["fields"]["key"] == key
    policy = json.loads(base64.b64decode(upload["fields"]["policy"]))
    assert ["content-length-range", 1, MAX_UPLOAD_BYTES] in policy["conditions"]
    secret_key = s3_server.secret_key_file.read_text().strip()
    assert secret_key not in json.dumps(cluster.get("secrets", f"{name}-request"))
    # The capture pods' NetworkPolicy opens the bucket's peers on its port, not the gateway.
    netpol = cluster.get(
        "networkpolicies", "kubeshot-capture-default", "/apis/networking.k8s.io/v1"
    )
    assert netpol is not None
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    assert netpol["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "127.0.0.1/32"}}],
        "ports": [{"protocol": "TCP", "port": port}],
    }

    done = kubelet.run(pod)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    state = wait_succeeded(s3_gateway, job_id)
    stored = in_bucket(s3_server, key)
    assert stored is not None and stored.startswith(b"\x89PNG")
    assert hashlib.sha256(stored).hexdigest() == state["result"]["sha256"]
    assert "/v1/internal/uploads" not in s3_gateway.log()  # the bytes never passed the gateway

    artifact = s3_gateway.call("GET", state["result"]["url"])
    assert (artifact.status, artifact.body) == (200, stored)

    # Changed in the bucket after its check (anyone with the bucket's keys): refused, deleted.
    async def overwrite() -> None:
        other = png_file()
        store = bucket_store(s3_server, store_env)
        await store.open()
        try:
            await store.put(job_id, other, hashlib.sha256(other).hexdigest())
        finally:
            await store.close()

    asyncio.run(overwrite())
    refused = s3_gateway.call("GET", state["result"]["url"])
    assert refused.status == 500, refused.body
    assert "refused and deleted" in refused.json()["error"]["message"]
    assert in_bucket(s3_server, key) is None


def act_as_the_pod(cluster: Cluster, name: str, pod: str, data: bytes) -> int:
    """A hostile capture pod: POSTs `data` with its Secret's form and reports it a PNG."""
    upload = request_of(cluster, name)["upload"]
    body, content_type = multipart_form(upload["fields"], data)
    answer = http("POST", upload["url"], body, {"Content-Type": content_type})
    if answer.status < 300:
        report = CaptureReport(
            format=Format.PNG,
            content_type="image/png",
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        cluster.terminate(pod, 0, "Completed", termination_message(CaptureOutcome(result=report)))
    return answer.status


def test_what_does_not_decode_as_the_jobs_format_is_never_served(
    s3_operator: Operator,
    s3_gateway: Gateway,
    cluster: Cluster,
    s3_server: S3Server,
    store_env: dict[str, str],
) -> None:
    job_id, name, pod = async_job(s3_gateway, cluster)
    assert act_as_the_pod(cluster, name, pod, b"<html>not a png</html>") == 204
    state = wait_succeeded(s3_gateway, job_id)
    key = f"{store_env['KUBESHOT_S3_PREFIX']}/{job_id}"
    assert in_bucket(s3_server, key) is not None
    refused = s3_gateway.call("GET", state["result"]["url"])
    assert refused.status == 500, refused.body
    assert refused.json()["error"]["message"] == (
        "the uploaded artifact was refused and deleted: it is not a png file"
    )
    assert in_bucket(s3_server, key) is None
    # Pods no longer upload to the gateway: its endpoint says so.
    put = http("PUT", f"{s3_gateway.upload_url}/{name}", b"x", {"X-Kubeshot-Sha256": "0" * 64})
    assert put.status == 409 and "KUBESHOT_STORE=s3" in put.json()["error"]["message"]


def test_the_bucket_refuses_an_upload_over_the_limit(
    s3_operator: Operator,
    s3_gateway: Gateway,
    cluster: Cluster,
    s3_server: S3Server,
    store_env: dict[str, str],
) -> None:
    job_id, name, pod = async_job(s3_gateway, cluster)
    assert act_as_the_pod(cluster, name, pod, b"\x89PNG" + b"x" * MAX_UPLOAD_BYTES) == 400
    assert in_bucket(s3_server, f"{store_env['KUBESHOT_S3_PREFIX']}/{job_id}") is None


def test_every_attempt_gets_a_form_signed_anew(s3_operator: Operator, cluster: Cluster) -> None:
    """A retry must not inherit the last attempt's form: it expires with that attempt."""
    cluster.create_policy(**POLICY)
    created = cluster.create_job("flaky", html="<p>x</p>", retries=1)
    cluster.wait_pod("flaky-1")
    first = request_of(cluster, "flaky")["upload"]
    failed = json.dumps({"failure": {"reason": "Internal", "message": "upload failed: 503"}})
    cluster.terminate("flaky-1", 1, "Error", failed)
    cluster.wait_pod("flaky-2")
    second = request_of(cluster, "flaky")["upload"]
    assert first["fields"]["key"] == second["fields"]["key"]
    assert first["fields"]["key"].endswith("/" + created["metadata"]["uid"].replace("-", ""))
    assert first["fields"]["x-amz-signature"] != second["fields"]["x-amz-signature"]
    # The signatures are in the Secret only: not in the job, its pod, events or the operator's log.
    pod = cluster.get("pods", "flaky-2")
    seen = json.dumps([cluster.job("flaky"), cluster.list("events"), pod]) + s3_operator.log()
    for form in (first, second):
        assert form["fields"]["x-amz-signature"] not in seen

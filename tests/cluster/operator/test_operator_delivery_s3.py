"""`delivery.s3` end to end: the artifact put into the caller's own bucket. The real control
plane, `kubeshot operator` (with the S3 result store) and `kubeshot serve --backend kubernetes`
as subprocesses, a real S3-compatible server (versitygw, `s3_server`) holding kubeshot's bucket
and a second one, the caller's, and the fake kubelet running the real capture pod, which POSTs
the form the operator signed with the keys of the caller's opted-in Secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.session import get_session

from kubeshot.api.delivery import S3_CREDENTIALS_LABEL
from tests.cluster.operator.conftest import Cluster, FakeKubelet, Operator, stop_gateway
from tests.cluster.operator.test_gateway_kubernetes import gateway_jobs, pod_of, start_gateway
from tests.cluster.operator.test_operator_s3 import (  # noqa: F401 - two are fixtures
    in_bucket,
    request_of,
    s3_operator,
    store_env,
)
from tests.conftest import S3Server

KEYS_SECRET = "caller-bucket-keys"


@pytest.fixture
def caller_bucket(s3_server: S3Server) -> str:
    """A bucket of the caller's, made with the server's keys through the S3 API."""
    bucket = f"caller-{uuid.uuid4().hex[:12]}"
    client = get_session().create_client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_server.access_key_file.read_text().strip(),
        aws_secret_access_key=s3_server.secret_key_file.read_text().strip(),
    )
    client.create_bucket(Bucket=bucket)
    return bucket


def open_policy(cluster: Cluster, s3_server: S3Server) -> None:
    """A ScreenshotPolicy that opens the S3 server (127.0.0.1, its port), as a policy must for
    an endpoint at a private address."""
    port = int(s3_server.endpoint.rsplit(":", 1)[1])
    network = {"allowedCIDRs": ["127.0.0.1/32"], "allowedPorts": [80, 443, port]}
    cluster.create_policy(limits={"memory": "512Mi", "timeoutSeconds": 30}, network=network)


def keys_secret(cluster: Cluster, s3_server: S3Server, *, opted_in: bool) -> str:
    """The caller's Secret with the bucket's keys; its secret access key."""
    secret_key = s3_server.secret_key_file.read_text().strip()
    labels = {S3_CREDENTIALS_LABEL: "true"} if opted_in else {}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": KEYS_SECRET, "labels": labels},
        "stringData": {
            "accessKeyId": s3_server.access_key_file.read_text().strip(),
            "secretAccessKey": secret_key,
        },
    }
    status, created = cluster.cp.request("POST", cluster.path("secrets"), body)
    assert status == 201, created
    return secret_key


def s3_delivery(s3_server: S3Server, bucket: str, prefix: str = "shots/nov") -> dict[str, Any]:
    return {
        "bucket": bucket,
        "prefix": prefix,
        "endpoint": s3_server.endpoint,
        "credentialsSecretRef": {"name": KEYS_SECRET},
    }


def secret_key_nowhere(
    cluster: Cluster, operator: Operator, job: str, pod: str | None, secret_key: str
) -> None:
    """The secret access key is not in the job, its pod, its request Secret, the events or the
    operator's log."""
    request = cluster.get("secrets", f"{job}-request")
    seen = [cluster.job(job), cluster.list("events"), request]
    if pod is not None:
        seen.append(cluster.get("pods", pod))
    text = json.dumps(seen) + operator.log()
    if request is not None:
        text += base64.b64decode(request["data"]["request.json"]).decode()
    assert secret_key not in text


def test_the_artifact_lands_in_the_callers_bucket_under_its_key(
    s3_operator: Operator,  # noqa: F811
    cluster: Cluster,
    kubelet: FakeKubelet,
    s3_server: S3Server,
    store_env: dict[str, str],  # noqa: F811
    caller_bucket: str,
    control_plane: Any,
    namespace: str,
    kubeshot_crds: list[str],
    tmp_path: Path,
) -> None:
    open_policy(cluster, s3_server)
    secret_key = keys_secret(cluster, s3_server, opted_in=True)
    gateway = start_gateway(control_plane, namespace, tmp_path / "gateway", store_env)
    try:
        body = {
            "html": "<h1>to their bucket</h1>",
            "delivery": {"s3": s3_delivery(s3_server, caller_bucket)},
        }
        accepted = gateway.call("POST", "/v1/captures", body)
        assert accepted.status == 202, accepted.body
        job_id = accepted.json()["id"]
        [job] = gateway_jobs(cluster, 1)
        name = job["metadata"]["name"]
        # The gateway passed the ref on (it reads no Secret); the operator signed one key.
        assert job["spec"]["delivery"]["s3"]["credentialsSecretRef"]["name"] == KEYS_SECRET
        pod = pod_of(cluster, name)
        deliver = request_of(cluster, name)["deliver"]
        key = f"shots/nov/{job_id}.png"
        assert deliver["url"] == f"{s3_server.endpoint}/{caller_bucket}"
        assert deliver["fields"]["key"] == key and set(deliver) == {"url", "fields"}
        secret_key_nowhere(cluster, s3_operator, name, pod, secret_key)

        done = kubelet.run(pod)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        finished = cluster.wait_phase(name, "Succeeded", "Failed", timeout=60)
        assert finished["status"]["phase"] == "Succeeded", finished["status"]
        assert finished["status"]["delivery"]["s3"] == {"bucket": caller_bucket, "key": key}
        theirs = (s3_server.data / caller_bucket / key).read_bytes()
        ours = in_bucket(s3_server, f"{store_env['KUBESHOT_S3_PREFIX']}/{job_id}")
        assert theirs.startswith(b"\x89PNG") and theirs == ours
        assert hashlib.sha256(theirs).hexdigest() == finished["status"]["result"]["sha256"]
        state = gateway.call("GET", f"/v1/captures/{job_id}").json()
        assert state["delivery"]["s3"] == {"bucket": caller_bucket, "key": key}
        secret_key_nowhere(cluster, s3_operator, name, pod, secret_key)
    finally:
        stop_gateway(gateway.proc, gateway.log_path)


def test_a_secret_that_has_not_opted_in_fails_the_job_and_nothing_is_uploaded(
    s3_operator: Operator,  # noqa: F811
    cluster: Cluster,
    s3_server: S3Server,
    caller_bucket: str,
) -> None:
    open_policy(cluster, s3_server)
    secret_key = keys_secret(cluster, s3_server, opted_in=False)
    cluster.create_job(
        "unlabelled",
        html="<p>x</p>",
        policyRef="default",
        retries=2,
        delivery={"s3": s3_delivery(s3_server, caller_bucket)},
    )
    failed = cluster.wait_phase("unlabelled", "Failed", timeout=60)
    status = failed["status"]
    assert status["failure"]["reason"] == "InvalidSpec"
    assert status["failure"]["message"] == (
        f"delivery.s3 credentials Secret {KEYS_SECRET!r} not found, not labelled"
        f" {S3_CREDENTIALS_LABEL}: \"true\", or without the keys 'accessKeyId' and"
        " 'secretAccessKey' as base64 of text"
    )
    assert status["attempts"] == 1 and "delivery" not in status  # not retried
    assert cluster.get("pods", "unlabelled-1") is None
    assert not any((s3_server.data / caller_bucket).iterdir())
    secret_key_nowhere(cluster, s3_operator, "unlabelled", None, secret_key)


def test_a_bucket_that_refuses_the_artifact_fails_the_capture(
    s3_operator: Operator,  # noqa: F811
    cluster: Cluster,
    kubelet: FakeKubelet,
    s3_server: S3Server,
) -> None:
    open_policy(cluster, s3_server)
    keys_secret(cluster, s3_server, opted_in=True)
    cluster.create_job(
        "refused",
        html="<p>x</p>",
        policyRef="default",
        retries=0,
        delivery={"s3": s3_delivery(s3_server, "no-such-bucket-here")},
    )
    done = kubelet.run(cluster.wait_phase("refused", "Running", timeout=60)["status"]["podName"])
    assert done.returncode != 0
    failure = cluster.wait_phase("refused", "Failed", timeout=60)["status"]["failure"]
    assert failure == {
        "reason": "Internal",
        "message": "delivery to the caller's bucket: upload refused: HTTP 404 NoSuchBucket",
    }


def test_a_retry_keeps_its_upload_token_and_gets_a_delivery_form_signed_anew(
    operator: Operator, cluster: Cluster, s3_server: S3Server, caller_bucket: str
) -> None:
    """With the filesystem store a retry reuses the job's upload token; the caller's form, which
    expires with its attempt, is signed anew all the same."""
    open_policy(cluster, s3_server)
    keys_secret(cluster, s3_server, opted_in=True)
    delivery = {"s3": s3_delivery(s3_server, caller_bucket)}
    cluster.create_job("flaky", html="<p>x</p>", retries=1, delivery=delivery)
    cluster.wait_pod("flaky-1")
    first = request_of(cluster, "flaky")
    failed = json.dumps({"failure": {"reason": "Internal", "message": "upload failed: 503"}})
    cluster.terminate("flaky-1", 1, "Error", failed)
    cluster.wait_pod("flaky-2")
    second = request_of(cluster, "flaky")
    assert first["upload"]["token"] == second["upload"]["token"]
    assert first["deliver"]["fields"]["key"] == second["deliver"]["fields"]["key"]
    signature = "x-amz-signature"
    assert first["deliver"]["fields"][signature] != second["deliver"]["fields"][signature]

"""The gateway's kubernetes backend against the real control plane and operator.

`kubeshot serve --backend kubernetes` runs as a subprocess with the admin kubeconfig; the operator
runs as a subprocess too, and the fake kubelet runs the real capture engine, which uploads to the
gateway's upload port on 127.0.0.1 with the job's own token.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from pypdf import PdfWriter

from tests.cluster.operator.conftest import (
    API,
    Cluster,
    FakeKubelet,
    Operator,
    Uploads,
    launch_gateway,
    stop_gateway,
)
from tests.support import free_port, wait_for

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
POLICY = {"limits": {"memory": "512Mi", "timeoutSeconds": 30}}


def failure_message(reason: str, message: str) -> str:
    """A termination message as the engine writes it for a failed capture."""
    return json.dumps({"failure": {"reason": reason, "message": message}})


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 300,
) -> Response:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, dict(err.headers), err.read())


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    upload_url: str
    metrics_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, method: str, path: str, document: Any = None, token: str = ALICE) -> Response:
        headers = {"Authorization": f"Bearer {token}"}
        body = None
        if document is not None:
            body = json.dumps(document).encode()
            headers["Content-Type"] = "application/json"
        return http(method, self.url + path, body, headers)

    def watch_connections(self) -> float:
        text = http("GET", self.metrics_url).body.decode()
        found = re.search(r"^kubeshot_watch_connections_total (\S+)$", text, re.MULTILINE)
        assert found, text
        return float(found.group(1))


@pytest.fixture
def upload_port() -> int:
    return free_port()


@pytest.fixture
def uploads(upload_port: int) -> Uploads:
    """The operator's upload URL: the real gateway's upload port (overrides the stand-in)."""
    return Uploads(url=f"http://127.0.0.1:{upload_port}/v1/internal/uploads")


def start_gateway(
    control_plane: Any,
    namespace: str,
    tmp_path: Path,
    env: dict[str, str],
    upload_port: int | None = None,
) -> Gateway:
    """`kubeshot serve --backend kubernetes` with `env` (the store's, and more), for alice and
    bob of `namespace`, once ready (its log and results under `tmp_path`); end it with
    stop_gateway."""
    tmp_path.mkdir(exist_ok=True)
    tokens = tmp_path / "tokens.yaml"
    callers = [
        {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "namespace": namespace}
        for name, token in (("alice", ALICE), ("bob", BOB))
    ]
    tokens.write_text(json.dumps({"tokens": callers}))
    metrics_port = free_port()
    env = {**env, "KUBESHOT_METRICS_PORT": str(metrics_port)}
    proc, log_path, port, upload_port = launch_gateway(
        control_plane, namespace, tokens, tmp_path, upload_port=upload_port, env=env
    )
    served = Gateway(
        proc,
        log_path,
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{upload_port}/v1/internal/uploads/{namespace}",
        f"http://127.0.0.1:{metrics_port}/metrics",
    )

    def ready() -> bool:
        assert proc.poll() is None, served.log()
        try:
            return http("GET", served.url + "/readyz", timeout=2).status == 200
        except OSError:
            return False

    wait_for(ready, 60, "the gateway's CaptureJob watch")
    return served


@pytest.fixture
def gateway(
    control_plane: Any, namespace: str, kubeshot_crds: list[str], upload_port: int, tmp_path: Path
) -> Iterator[Gateway]:
    env = {"KUBESHOT_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    served = start_gateway(control_plane, namespace, tmp_path, env, upload_port=upload_port)
    yield served
    stop_gateway(served.proc, served.log_path)


BODY_TIMEOUT = 3


def gateway_jobs(cluster: Cluster, count: int) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]] | None:
        jobs = cluster.list("capturejobs", API)
        return jobs if len(jobs) >= count else None

    found: list[dict[str, Any]] = wait_for(listed, 60, f"{count} CaptureJob(s)")
    return found


def pod_of(cluster: Cluster, name: str) -> str:
    job = cluster.wait_phase(name, "Running", timeout=60)
    pod = str(job["status"]["podName"])
    cluster.wait_pod(pod, timeout=60)  # Running is written alongside the Secret, before the Pod
    return pod


def in_background(pool: ThreadPoolExecutor, call: Callable[[], Response]) -> Future[Response]:
    return pool.submit(call)


def test_sync_capture_runs_as_a_capturejob_and_answers_with_the_artifact(
    operator: Operator, gateway: Gateway, cluster: Cluster, kubelet: FakeKubelet
) -> None:
    cluster.create_policy(**POLICY)
    with ThreadPoolExecutor(1) as pool:
        answer = in_background(
            pool,
            lambda: gateway.call(
                "POST",
                "/v1/screenshot",
                {"html": "<title>Hello ✓</title><h1>hello</h1>", "format": "png"},
            ),
        )
        [job] = gateway_jobs(cluster, 1)
        meta = job["metadata"]
        assert meta["labels"] == {
            "app.kubernetes.io/managed-by": "kubeshot-gateway",
            "kubeshot.dev/caller": "alice",
        }
        assert job["spec"]["policyRef"] == "default"
        done = kubelet.run(pod_of(cluster, meta["name"]))
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        response = answer.result(timeout=300)
    assert response.status == 200, response.body[:2000]
    assert response.body.startswith(b"\x89PNG")
    finished = cluster.wait_phase(meta["name"], "Succeeded")
    result = finished["status"]["result"]
    digest = hashlib.sha256(response.body).hexdigest()
    assert result["sha256"] == digest == response.headers["X-Kubeshot-Sha256"]
    assert result["url"] == f"/v1/captures/{meta['uid'].replace('-', '')}/artifact"
    # The page's title, from the job's status.result, percent-encoded in a header.
    assert result["title"] == "Hello ✓"
    assert response.headers["X-Kubeshot-Title"] == "Hello %E2%9C%93"
    assert "X-Kubeshot-Http-Status" not in response.headers


def test_async_capture_follows_its_capturejob(
    operator: Operator, gateway: Gateway, cluster: Cluster, kubelet: FakeKubelet
) -> None:
    cluster.create_policy(**POLICY)
    accepted = gateway.call(
        "POST", "/v1/captures", {"html": "<title>Later</title><p>later</p>", "format": "png"}
    )
    assert accepted.status == 202, accepted.body
    view = accepted.json()
    assert view["phase"] in {"Pending", "Queued", "Running"}
    assert accepted.headers["Location"] == f"/v1/captures/{view['id']}"
    # Another token of the same namespace does not see alice's job.
    assert gateway.call("GET", f"/v1/captures/{view['id']}", token=BOB).status == 404
    [job] = gateway_jobs(cluster, 1)
    assert job["metadata"]["uid"].replace("-", "") == view["id"]
    pending = gateway.call("GET", f"/v1/captures/{view['id']}/artifact")
    assert pending.status == 409

    done = kubelet.run(pod_of(cluster, job["metadata"]["name"]))
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    def succeeded() -> dict[str, Any] | None:
        state: dict[str, Any] = gateway.call("GET", f"/v1/captures/{view['id']}").json()
        return state if state["phase"] == "Succeeded" else None

    state = wait_for(succeeded, 60, "the async capture to succeed")
    assert state["result"]["url"] == f"/v1/captures/{view['id']}/artifact"
    assert state["result"]["title"] == "Later"
    artifact = gateway.call("GET", state["result"]["url"])
    assert artifact.status == 200
    assert hashlib.sha256(artifact.body).hexdigest() == state["result"]["sha256"]
    assert artifact.body.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("exit_code", "reason", "status", "code"),
    [
        (3, "BlockedByPolicy", 403, "blocked_by_policy"),
        (4, "NavigationFailed", 502, "capture_failed"),
        (4, "TargetHttpError", 502, "target_http_error"),
    ],
)
def test_a_failed_job_answers_with_its_reasons_http_status(
    operator: Operator,
    gateway: Gateway,
    cluster: Cluster,
    exit_code: int,
    reason: str,
    status: int,
    code: str,
) -> None:
    cluster.create_policy(**POLICY)
    with ThreadPoolExecutor(1) as pool:
        answer = in_background(
            pool, lambda: gateway.call("POST", "/v1/screenshot", {"url": "https://example.test/"})
        )
        [job] = gateway_jobs(cluster, 1)
        cluster.terminate(
            pod_of(cluster, job["metadata"]["name"]),
            exit_code,
            message=failure_message(reason, "the page could not be captured"),
        )
        response = answer.result(timeout=300)
    assert response.status == status, response.body
    error = response.json()["error"]
    assert error["code"] == code
    assert error["details"] == {"reason": reason}


def test_a_missing_policy_is_refused_before_any_job(gateway: Gateway, cluster: Cluster) -> None:
    response = gateway.call("POST", "/v1/screenshot", {"html": "<p>x</p>"})
    assert response.status == 403
    assert response.json()["error"]["details"] == {"reason": "PolicyNotFound"}
    assert cluster.list("capturejobs", API) == []


def upload_token(cluster: Cluster, job: str) -> str:
    secret = cluster.get("secrets", f"{job}-request")
    assert secret is not None
    request = json.loads(base64.b64decode(secret["data"]["request.json"]))
    return str(request["upload"]["token"])


def put_upload(
    gateway: Gateway, job: str, body: bytes, bearer: str | None, sha256: str | None = None
) -> Response:
    """PUT an artifact to the upload endpoint as a capture pod does."""
    headers = {
        "X-Kubeshot-Sha256": sha256 or hashlib.sha256(body).hexdigest(),
        "Content-Type": "application/octet-stream",
    }
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return http("PUT", f"{gateway.upload_url}/{job}", body, headers)


def png_file() -> bytes:
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, format="PNG")
    return image.getvalue()


def running_async_job(gateway: Gateway, cluster: Cluster, fmt: str) -> tuple[str, str, str]:
    """An async capture through the gateway, Running: (its id, its job's name, its pod)."""
    cluster.create_policy(**POLICY)
    accepted = gateway.call("POST", "/v1/captures", {"html": "<p>x</p>", "format": fmt})
    assert accepted.status == 202, accepted.body
    [job] = gateway_jobs(cluster, 1)
    name = job["metadata"]["name"]
    return accepted.json()["id"], name, pod_of(cluster, name)


def test_an_upload_must_decode_as_its_jobs_format(
    operator: Operator, gateway: Gateway, cluster: Cluster
) -> None:
    """A capture pod runs hostile pages: what it uploads is untrusted input."""
    _, name, _ = running_async_job(gateway, cluster, "png")
    token = upload_token(cluster, name)
    # PNG's magic bytes in front of a page: not a PNG, whatever its first bytes say.
    polyglot = b"\x89PNG\r\n\x1a\n<html><script>alert(document.domain)</script></html>"
    refused = put_upload(gateway, name, polyglot, token)
    assert refused.status == 422, refused.body
    assert refused.json()["error"]["code"] == "invalid_artifact"
    stored = put_upload(gateway, name, png_file(), token)
    assert stored.status == 201, stored.body


def test_an_artifact_is_served_as_its_jobs_format_whatever_its_pod_reports(
    operator: Operator, gateway: Gateway, cluster: Cluster
) -> None:
    """A capture pod runs hostile pages: what it reports is untrusted too."""
    job_id, name, pod = running_async_job(gateway, cluster, "png")
    data = png_file()
    stored = put_upload(gateway, name, data, upload_token(cluster, name))
    assert stored.status == 201, stored.body
    # The pod reports its artifact as a web page (to be served as one from the gateway's origin).
    digest = hashlib.sha256(data).hexdigest()
    result = {"contentType": "text/html", "bytes": len(data), "sha256": digest}
    cluster.terminate(pod, 0, reason="Completed", message=json.dumps({"result": result}))

    def succeeded() -> dict[str, Any] | None:
        state: dict[str, Any] = gateway.call("GET", f"/v1/captures/{job_id}").json()
        return state if state["phase"] == "Succeeded" else None

    state = wait_for(succeeded, 60, "the capture to succeed")
    assert state["result"]["contentType"] == "image/png"
    artifact = gateway.call("GET", f"/v1/captures/{job_id}/artifact")
    assert artifact.status == 200, artifact.body
    assert artifact.headers["Content-Type"] == "image/png"
    assert "Content-Disposition" not in artifact.headers
    assert artifact.body == data


def test_kubernetes_api_refusals_are_logged_not_echoed(
    gateway: Gateway, cluster: Cluster, namespace: str
) -> None:
    """What the API server says (here: a ResourceQuota's name and numbers) is for the
    gateway's operators, not its callers."""
    cluster.create_policy(**POLICY)
    quota = "captures-of-tenant-secret-quota"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": quota},
            "spec": {"hard": {"count/capturejobs.kubeshot.dev": "0"}},
        }
    )
    for path in ("/v1/captures", "/v1/screenshot"):
        response = gateway.call("POST", path, {"html": "<p>x</p>"})
        assert response.status == 503, response.body
        error = response.json()["error"]
        assert error["code"] == "unavailable"
        text = response.body.decode()
        for leak in (quota, "quota", "forbidden", namespace, "capturejobs.kubeshot.dev"):
            assert leak not in text, text
    assert cluster.list("capturejobs", API) == []
    assert gateway.log().count(quota) >= 2


def test_an_upload_counts_only_with_its_own_jobs_token_and_sha256(
    operator: Operator, gateway: Gateway, cluster: Cluster
) -> None:
    cluster.create_policy(**POLICY)
    cluster.create_job("one", html="<p>1</p>", format="pdf")
    cluster.create_job("two", html="<p>2</p>", format="pdf")
    cluster.wait_phase("one", "Running")
    cluster.wait_phase("two", "Running")
    token = upload_token(cluster, "one")
    document = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=100)
    writer.write(document)
    pdf = document.getvalue()
    digest = hashlib.sha256(pdf).hexdigest()

    def put(job: str, body: bytes, sha256: str, bearer: str | None) -> Response:
        headers = {"X-Kubeshot-Sha256": sha256, "Content-Type": "application/octet-stream"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        return http("PUT", f"{gateway.upload_url}/{job}", body, headers)

    assert put("one", pdf, digest, None).status == 401
    assert put("two", pdf, digest, token).status == 403  # job one's token, job two's upload
    assert put("nobody", pdf, digest, token).status == 403
    assert put("one", pdf, "f" * 64, token).status == 422
    assert put("one", pdf, "not-a-sha", token).status == 400
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 16
    assert put("one", png, hashlib.sha256(png).hexdigest(), token).status == 422  # not a pdf
    fake = b"%PDF-1.7\n%a header, and nothing that decodes\n"
    assert put("one", fake, hashlib.sha256(fake).hexdigest(), token).status == 422
    stored = put("one", pdf, digest, token)
    assert stored.status == 201, stored.body
    uid = cluster.job("one")["metadata"]["uid"].replace("-", "")  # type: ignore[index]
    assert stored.json() == {"url": f"/v1/captures/{uid}/artifact"}
    # Nothing else is served on the upload port.
    base = gateway.upload_url.split("/v1/")[0]
    for path in ("/v1/screenshot", "/healthz", "/metrics", f"/v1/captures/{uid}/artifact"):
        assert http("GET", base + path).status in {404, 405}


def test_concurrent_sync_requests_share_one_watch(
    operator: Operator, gateway: Gateway, cluster: Cluster
) -> None:
    count = 5
    cluster.create_policy(limits={**POLICY["limits"], "maxConcurrentJobs": count})
    assert gateway.watch_connections() == 1
    with ThreadPoolExecutor(count) as pool:
        answers = [
            in_background(
                pool,
                lambda i=i: gateway.call("POST", "/v1/screenshot", {"html": f"<p>{i}</p>"}),
            )
            for i in range(count)
        ]
        jobs = gateway_jobs(cluster, count)
        for job in jobs:
            cluster.terminate(
                pod_of(cluster, job["metadata"]["name"]),
                3,
                message=failure_message("BlockedByPolicy", "blocked"),
            )
        responses = [a.result(timeout=300) for a in answers]
    assert [r.status for r in responses] == [403] * count
    assert gateway.watch_connections() == 1


def test_an_upload_whose_body_never_arrives_is_408_and_closed(
    operator: Operator, gateway: Gateway, cluster: Cluster, upload_port: int
) -> None:
    """A pod (or whatever holds its token) cannot hold the upload port open by trickling."""
    _, name, _ = running_async_job(gateway, cluster, "png")
    path = urlsplit(f"{gateway.upload_url}/{name}").path
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {upload_token(cluster, name)}\r\n"
        f"X-Kubeshot-Sha256: {'0' * 64}\r\nContent-Length: 100000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", upload_port), timeout=BODY_TIMEOUT * 10) as conn:
        conn.sendall(head.encode() + b"x" * 10)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer

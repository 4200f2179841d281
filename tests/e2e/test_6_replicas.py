"""Two gateway replicas and the operator against a real S3 store and a real Redis, as the chart's
pods: `replicaCount: 2`, `gateway.store.type: s3`, `gateway.redis.enabled: true`.

A release of its own (`kubeshot-ha`, in a namespace of its own), installed after test_5 removed
the suite's release: two operators watching every namespace must not run at once. The servers are
the ones the gateway tier uses, started here on the node link's host address (10.203.0.1), which
pods reach through the node's default route: versitygw (tests/conftest.py `run_s3_server`) and
Debian's redis-server (tests/gateway/conftest.py `run_redis`). The test talks to the gateway
Service's ClusterIP from inside the node's network namespace, where kube-proxy spreads each new
connection over the two pods, as it does for any client in the cluster (`kubectl port-forward`
would pin one pod). Proven with the chart's pods: both replicas Ready; a synchronous and an
asynchronous capture through the Service, the artifact in the bucket (listed with the S3 API),
put there by the capture pod itself; one rate limit across both replicas; the replica that
accepted an async job deleted mid-capture, the job finished all the same.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubeshot.gateway.auth import hash_token
from kubeshot.operator.building import network_policy_name
from tests.cluster.node.conftest import nodes, serve_in_node
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, run_s3_server
from tests.e2e.conftest import (
    CHART,
    CRDS,
    PNG_SIGNATURE,
    POLL,
    WAIT,
    Helm,
    Kubectl,
    Target,
    namespace_manifest,
)
from tests.gateway.conftest import run_redis
from tests.support import Handler, wait_for

RELEASE = "kubeshot-ha"  # contains the chart's name: the fullname is the release name
NAMESPACE = "kubeshot-ha"
SERVICE_NAME = f"{RELEASE}-gateway.{NAMESPACE}.svc"  # in the chart's certificate
PREFIX = "e2e"
LIMITED_TOKEN = "e2e-limited-token-0123456789abcdef0123"
LIMIT = 5  # the limited token's captures per minute
BURST = 16  # requests sent at once at that limit
SLOW_SECONDS = 12  # the slow page: a capture is still running when its replica goes
PAGE = b"<!doctype html><title>replicas</title><h1 style='color:#20335c'>two gateways</h1>"


# ------------------------------------------------------------------------------ the cluster


class NodeConnection(http.client.HTTPConnection):
    """HTTP(S) from inside the node's network namespace: there kube-proxy routes the Service's
    ClusterIP (this host has no route to it) and pods are one hop away. TLS is verified against
    the chart's CA for the Service's name, whatever address is dialled."""

    def __init__(
        self, netns: str, address: str, port: int, tls: ssl.SSLContext | None, timeout: float
    ) -> None:
        super().__init__(address, port, timeout=timeout)
        self.netns = netns
        self.tls = tls

    def connect(self) -> None:
        sock: socket.socket = nodes.socket_in_netns(self.netns)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = self.tls.wrap_socket(sock, server_hostname=SERVICE_NAME) if self.tls else sock


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HA:
    kubectl: Kubectl
    netns: str
    s3: S3Server
    page: str
    slow_page: str
    service_ip: str
    token: str
    tls: ssl.SSLContext

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        address: str | None = None,
        port: int = 443,
    ) -> Answer:
        """One request on a new connection (kube-proxy picks the pod per connection)."""
        address = address or self.service_ip
        connection = NodeConnection(self.netns, address, port, self.tls, timeout=WAIT)
        headers = {"Authorization": f"Bearer {token or self.token}"}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def gateway_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl.items(
            "pods", "-l", "app.kubernetes.io/component=gateway", namespace=NAMESPACE
        )
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def requests_served(self) -> dict[str, Counter[tuple[str, str]]]:
        """Per gateway pod: its kubeshot_http_requests counts by (route, status), read from its
        /metrics port (plain HTTP, reached on the pod's address)."""
        served: dict[str, Counter[tuple[str, str]]] = {}
        for pod in self.gateway_pods():
            connection = NodeConnection(self.netns, pod["status"]["podIP"], 9090, None, 30)
            try:
                connection.request("GET", "/metrics")
                text = connection.getresponse().read().decode()
            finally:
                connection.close()
            counts: Counter[tuple[str, str]] = Counter()
            for family in text_string_to_metric_families(text):
                if family.name == "kubeshot_http_requests":
                    for sample in family.samples:
                        if sample.name.endswith("_total"):
                            key = (sample.labels["route"], sample.labels["status"])
                            counts[key] += int(sample.value)
            served[pod["metadata"]["name"]] = counts
        return served

    def bucket(self) -> dict[str, bytes]:
        """Every object under the release's prefix, listed and read with the S3 API."""
        from botocore.session import get_session

        client = get_session().create_client(
            "s3",
            endpoint_url=self.s3.endpoint,
            region_name="us-east-1",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
        )
        listed = client.list_objects_v2(Bucket=self.s3.bucket, Prefix=f"{PREFIX}/")
        keys = [o["Key"] for o in listed.get("Contents", [])]
        return {k: client.get_object(Bucket=self.s3.bucket, Key=k)["Body"].read() for k in keys}

    def wait_job(self, job_id: str, phases: set[str]) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            answer = self.request("GET", f"/v1/captures/{job_id}")
            view = answer.json() if answer.status == 200 else {}
            return view if view.get("phase") in phases else None

        view: dict[str, Any] = wait_for(reached, WAIT, f"job {job_id} to be {phases}", POLL * 4)
        return view


class Pages(Handler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(SLOW_SECONDS)
        self.reply(200, PAGE)


@pytest.fixture(scope="module")
def ha(
    target: Target,
    kubectl: Kubectl,
    helm: Helm,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HA]:
    if os.environ.get("KUBECONFIG"):
        pytest.skip("S3 and Redis run on this host, on the node tier's link: node tier only")
    node = request.getfixturevalue("node")
    others = helm("list", "--all-namespaces", "-q").stdout.split()
    assert not others, f"another kubeshot release is installed (test_5 removes it): {others}"
    work = tmp_path_factory.mktemp("replicas")
    with contextlib.ExitStack() as stack:
        (work / "s3").mkdir()
        (work / "redis").mkdir()
        s3 = stack.enter_context(run_s3_server(work / "s3", nodes.HOST_ADDRESS))
        redis_url = stack.enter_context(run_redis(work / "redis", nodes.HOST_ADDRESS))
        pages = serve_in_node(node, nodes.PAGE_ADDRESS, Pages)
        stack.callback(pages.server_close)
        stack.callback(pages.shutdown)
        page_port = pages.server_address[1]
        host = nodes.HOST_ADDRESS
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        kubectl.apply(namespace_manifest(NAMESPACE), namespace=NAMESPACE)
        stack.callback(
            lambda: kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
        )
        limited = {"name": "limited", "sha256": hash_token(LIMITED_TOKEN), "namespace": NAMESPACE}
        tokens = {"tokens": [{**limited, "rateLimit": f"{LIMIT} per minute"}]}
        kubectl.apply(
            _secret("e2e-s3", accessKeyId=S3_ACCESS_KEY, secretAccessKey=S3_SECRET_KEY),
            _secret("e2e-redis", url=redis_url),
            _secret("e2e-tokens", **{"tokens.yaml": yaml.safe_dump(tokens)}),
            namespace=NAMESPACE,
        )
        link = [{"ipBlock": {"cidr": f"{host}/32"}}]
        values = {
            "auth": {"tokensSecret": "e2e-tokens"},
            "gateway": {
                "replicaCount": 2,
                "store": {
                    "type": "s3",
                    "s3": {
                        "endpoint": s3.endpoint,
                        "bucket": s3.bucket,
                        "prefix": PREFIX,
                        "credentialsSecret": "e2e-s3",
                        "peers": link,
                    },
                },
                "redis": {
                    "enabled": True,
                    "urlSecret": "e2e-redis",
                    "port": redis_port,
                    "peers": link,
                },
            },
            "defaultPolicy": {
                "spec": {
                    "network": {
                        "allowedCIDRs": [f"{nodes.PAGE_ADDRESS}/32"],
                        "allowedPorts": [80, 443, page_port],
                    }
                }
            },
        }
        (work / "values.yaml").write_text(yaml.safe_dump(values))
        stack.callback(lambda: kubectl("delete", "crd", *CRDS, "--ignore-not-found", check=False))
        stack.callback(lambda: helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False))
        helm(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(target.values),
            "-f", str(work / "values.yaml"), "--wait", "--timeout", f"{WAIT}s",
        )  # fmt: skip
        secret = kubectl.json("get", "secret", f"{RELEASE}-auth", "-n", NAMESPACE)
        tls = kubectl.json("get", "secret", f"{RELEASE}-gateway-tls", "-n", NAMESPACE)
        ca = work / "ca.crt"
        ca.write_bytes(_decoded(tls, "ca.crt"))
        service = kubectl.get("service", f"{RELEASE}-gateway", NAMESPACE)
        yield HA(
            kubectl,
            node.netns_path,
            s3,
            f"http://{nodes.PAGE_ADDRESS}:{page_port}/",
            f"http://{nodes.PAGE_ADDRESS}:{page_port}/slow",
            service["spec"]["clusterIP"],
            _decoded(secret, "token").decode(),
            ssl.create_default_context(cafile=str(ca)),
        )


def _secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}


def _decoded(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def _ready(pod: dict[str, Any]) -> bool:
    conditions = pod["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# ------------------------------------------------------------------------------ the tests


def test_two_ready_gateways_serve_a_synchronous_capture_from_the_bucket(ha: HA) -> None:
    pods = ha.gateway_pods()
    assert len(pods) == 2 and all(_ready(p) for p in pods), [p["status"] for p in pods]
    assert len({p["status"]["podIP"] for p in pods}) == 2
    operator = ha.kubectl.get("deployment", f"{RELEASE}-operator", NAMESPACE)
    assert operator["status"].get("readyReplicas") == 1
    answer = ha.request("POST", "/v1/screenshot", {"url": ha.page, "format": "png"})
    assert answer.status == 200, answer.body[:500]
    assert answer.body.startswith(PNG_SIGNATURE)


def test_two_replicas_share_one_rate_limit(ha: HA) -> None:
    # BURST capture requests at LIMIT per minute, each on its own connection through the
    # Service: exactly LIMIT pass the limit (and are then refused as invalid: no capture runs).
    before = ha.requests_served()
    body = {"url": "not a url", "format": "png"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: ha.request("POST", "/v1/screenshot", body, token=LIMITED_TOKEN),
                range(BURST),
            )
        )
    statuses = Counter(a.status for a in answers)
    assert statuses[429] == BURST - LIMIT, statuses
    assert sum(n for s, n in statuses.items() if s != 429) == LIMIT, statuses
    after = ha.requests_served()
    assert before.keys() == after.keys()
    per_pod = {
        name: sum(
            n for (route, _), n in (after[name] - before[name]).items() if route == "screenshot"
        )
        for name in after
    }
    # Both replicas answered some of them: the limit held across the two, not within one.
    assert len(per_pod) == 2 and all(per_pod.values()), per_pod
    assert sum(per_pod.values()) == BURST, per_pod


def test_an_async_job_outlives_the_replica_that_accepted_it(ha: HA) -> None:
    # With the kubernetes backend an async job is its CaptureJob: no gateway holds it, so
    # whichever replica is asked answers for it, and the replica that accepted it may go.
    before = ha.requests_served()
    answer = ha.request("POST", "/v1/captures", {"url": ha.slow_page, "format": "png"})
    assert answer.status == 202, answer.body[:500]
    job_id = answer.json()["id"]
    after = ha.requests_served()
    (accepted_by,) = [
        name for name in after if (after[name] - before[name])[("captures_create", "202")]
    ]
    ha.wait_job(job_id, {"Running"})
    # Deleted mid-capture with one second of grace, and gone before the capture could end (the
    # page alone takes SLOW_SECONDS): everything from here on is answered by the other replica
    # or the Deployment's replacement.
    ha.kubectl("delete", "pod", accepted_by, "-n", NAMESPACE, "--grace-period=1", "--wait=false")
    wait_for(
        lambda: ha.kubectl.get("pod", accepted_by, NAMESPACE) is None,
        60,
        f"{accepted_by} to be gone",
        POLL,
    )
    still = ha.request("GET", f"/v1/captures/{job_id}").json()
    assert still["phase"] in {"Pending", "Running"}, still
    view = ha.wait_job(job_id, {"Succeeded", "Failed"})
    assert view["phase"] == "Succeeded", view
    # The artifact, through the Service (either replica), and in the bucket.
    artifact = ha.request("GET", view["result"]["url"])
    assert artifact.status == 200 and artifact.body.startswith(PNG_SIGNATURE)
    sha256 = hashlib.sha256(artifact.body).hexdigest()
    assert view["result"]["sha256"] == sha256
    stored = {key: hashlib.sha256(data).hexdigest() for key, data in ha.bucket().items()}
    assert sha256 in stored.values(), stored
    # Capture pods uploaded it to the bucket themselves: their NetworkPolicy opens the bucket,
    # and the gateway's upload port not at all.
    policy = ha.kubectl.get("networkpolicy", network_policy_name("default"), NAMESPACE)
    egress = policy["spec"]["egress"]
    s3_port = int(ha.s3.endpoint.rsplit(":", 1)[1])
    bucket_rule = {"to": [{"ipBlock": {"cidr": f"{nodes.HOST_ADDRESS}/32"}}],
                   "ports": [{"protocol": "TCP", "port": s3_port}]}  # fmt: skip
    assert bucket_rule in egress, egress
    assert not [r for r in egress if {"protocol": "TCP", "port": 8081} in r.get("ports", [])]

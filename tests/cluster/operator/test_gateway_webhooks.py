"""A webhook asked of the gateway's kubernetes backend (`POST /v1/captures` with
`delivery.webhook`) is the CaptureJob's own: its secret in a Secret the gateway makes for the job
(opted in, owned by the job), sent by the real operator, recorded in the job's status. The
gateway keeps nothing of it: stopped right after accepting the capture, it misses nothing, and
once restarted it shows the delivery as the operator recorded it.

The receiver (tests/gateway/test_webhooks.py's, served from a thread, verifying every signature
with standardwebhooks) is on loopback, opened by the policy's allowedCIDRs.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.cluster.operator import test_gateway_kubernetes as kube
from tests.cluster.operator import test_operator_webhooks as hooks
from tests.cluster.operator.conftest import API, Cluster, Operator, stop_gateway
from tests.cluster.operator.test_gateway_kubernetes import start_gateway
from tests.gateway.test_webhooks import RECEIVER_HOST, SECRET, Receiver
from tests.support import wait_for

receiver = hooks.receiver  # the fixtures: a threaded receiver; the gateway's upload port
uploads, upload_port = kube.uploads, kube.upload_port


def open_to(cluster: Cluster, receiver: Receiver) -> None:
    cluster.create_policy(
        network={"allowedCIDRs": [f"{RECEIVER_HOST}/32"], "allowedPorts": [80, 443, receiver.port]},
        **kube.POLICY,
    )


def webhook_secrets(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.list("secrets", selector="kubeshot.dev/webhook-secret%3Dtrue")


def test_the_operator_sends_it_and_a_restarted_gateway_shows_it(
    operator: Operator,
    cluster: Cluster,
    receiver: Receiver,
    control_plane: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    open_to(cluster, receiver)
    gateway = start_gateway(control_plane, namespace, tmp_path / "first", {})
    body = {"html": "<p>x</p>", "delivery": {"webhook": {"url": receiver.url, "secret": SECRET}}}
    accepted = gateway.call("POST", "/v1/captures", body)
    stop_gateway(gateway.proc, gateway.log_path)  # right after accepting
    assert accepted.status == 202, accepted.body
    view = accepted.json()
    promised = {"outcome": "Pending", "id": f"msg_{view['id']}", "attempts": 0}
    assert view["delivery"]["webhook"] == promised
    assert SECRET not in accepted.body.decode()

    [job] = cluster.list("capturejobs", API)
    name, uid = job["metadata"]["name"], job["metadata"]["uid"]
    assert job["spec"]["delivery"] == {
        "webhook": {"url": receiver.url, "secretRef": {"name": f"{name}-webhook", "key": "secret"}}
    }
    # The Secret: opted in, the signing secret alone, owned by the job (goes with it).
    [secret] = webhook_secrets(cluster)
    assert secret["metadata"]["name"] == f"{name}-webhook"
    assert secret["data"] == {"secret": base64.b64encode(SECRET.encode()).decode()}
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("CaptureJob", name, uid)

    hooks.succeed(cluster, name)  # the pod's report; the gateway is down meanwhile
    recorded = hooks.delivered(cluster, name)["status"]["delivery"]["webhook"]
    assert recorded == {**promised, "outcome": "Delivered", "attempts": 1, "httpStatus": 200}
    [hit] = receiver.received
    assert hit.headers["webhook-id"] == promised["id"]  # the operator's id is the one promised
    assert isinstance(hit.verified, dict), hit.verified
    assert hit.verified["data"]["job"] == view["id"]

    gateway = start_gateway(control_plane, namespace, tmp_path / "second", {})
    try:
        shown = gateway.call("GET", f"/v1/captures/{view['id']}").json()
    finally:
        stop_gateway(gateway.proc, gateway.log_path)
    assert shown["phase"] == "Succeeded", shown
    assert shown["delivery"]["webhook"] == recorded
    for log in (tmp_path / "first" / "gateway.log", tmp_path / "second" / "gateway.log"):
        assert SECRET.removeprefix("whsec_") not in log.read_text()
    cluster.kubectl("delete", "capturejob", name, "-n", namespace, "--wait=true")
    wait_for(lambda: not webhook_secrets(cluster), 30, "the Secret to go with its job")


def test_a_job_the_api_server_refuses_takes_its_secret_with_it(
    kubeshot_crds: list[str],
    cluster: Cluster,
    receiver: Receiver,
    control_plane: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    open_to(cluster, receiver)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/capturejobs.kubeshot.dev": "0"}},
        }
    )
    gateway = start_gateway(control_plane, namespace, tmp_path, {})
    try:
        body = {
            "html": "<p>x</p>",
            "delivery": {"webhook": {"url": receiver.url, "secret": SECRET}},
        }
        refused = gateway.call("POST", "/v1/captures", body)
    finally:
        stop_gateway(gateway.proc, gateway.log_path)
    assert refused.status == 503, refused.body
    assert cluster.list("capturejobs", API) == []
    assert webhook_secrets(cluster) == []

"""CaptureJob webhooks, sent by the real operator to a real receiver (an aiohttp server on
127.0.0.9 that verifies every signature with standardwebhooks' own `verify`): a Succeeded and a
Failed job announced once each (one refused at admission too), a failing receiver retried, a
webhook to the metadata address or to a loopback canary refused like a capture, nothing signed
with a Secret that did not opt in, and a delivery cut short by a failover sent again by the next
leader with the same webhook-id.

The receiver is on loopback, which the egress guard refuses unless the policy opens it: the
policy's allowedCIDRs name its address, the explicit opt-in the operator logs on each delivery.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from tests.browser.guard.conftest import Canary
from tests.cluster.operator.conftest import Cluster, Operator
from tests.gateway.test_webhooks import RECEIVER_HOST, SECRET, Receiver
from tests.support import free_port, wait_for

SHA = "1" * 64


class SlowReceiver(Receiver):
    """Holds the first `hold` requests for `seconds` before answering (a receiver that hangs)."""

    hold = 0
    seconds = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        response = await super().handle(request)  # recorded on arrival
        if self.hold > 0:
            self.hold -= 1
            await asyncio.sleep(self.seconds)
        return response


@pytest.fixture
def receiver() -> Iterator[SlowReceiver]:
    """The receiver, served from a thread of its own (the test's waits block)."""
    hook = SlowReceiver(free_port(RECEIVER_HOST))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hook", hook.handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, RECEIVER_HOST, hook.port).start()
        return runner

    runner = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    yield hook
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.shutdown()


def setup(cluster: Cluster, receiver: Receiver, *ports: int, **policy: Any) -> None:
    """The policy that opens the receiver (its address and port), and the signing Secret."""
    cluster.create_policy(
        network={
            "allowedCIDRs": [f"{RECEIVER_HOST}/32"],
            "allowedPorts": [80, 443, receiver.port, *ports],
        },
        limits={"maxConcurrentJobs": 10},
        **policy,
    )
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "hook",
            "namespace": cluster.namespace,
            "labels": {"kubeshot.dev/webhook-secret": "true"},
        },
        "data": {"secret": base64.b64encode(SECRET.encode()).decode()},
    }
    status, created = cluster.cp.request("POST", cluster.path("secrets"), secret)
    assert status == 201, created


def hooked(url: str, secret: str = "hook") -> dict[str, Any]:
    return {"webhook": {"url": url, "secretRef": {"name": secret}}}


def job_id(job: dict[str, Any]) -> str:
    return str(job["metadata"]["uid"]).replace("-", "")


def succeed(cluster: Cluster, name: str) -> None:
    cluster.wait_pod(f"{name}-1")
    report = {"contentType": "image/png", "bytes": 10, "sha256": SHA}
    report["url"] = f"/v1/captures/{job_id(cluster.job(name) or {})}/artifact"
    cluster.terminate(f"{name}-1", 0, "Completed", json.dumps({"result": report}))


def fail(cluster: Cluster, name: str) -> None:
    cluster.wait_pod(f"{name}-1")
    report = {"failure": {"reason": "Timeout", "message": "no load in 30s"}}
    cluster.terminate(f"{name}-1", 4, "Error", json.dumps(report))


def delivered(cluster: Cluster, name: str, timeout: float = 30) -> dict[str, Any]:
    """The job once its webhook's delivery ended (status.delivery.webhook, not Pending)."""

    def ended() -> dict[str, Any] | None:
        job = cluster.job(name) or {}
        webhook = ((job.get("status") or {}).get("delivery") or {}).get("webhook") or {}
        return job if webhook.get("outcome") not in (None, "Pending") else None

    found: dict[str, Any] = wait_for(ended, timeout, f"the webhook of {name} to be delivered")
    return found


def test_finished_jobs_are_announced_once_signed_with_their_payload(
    operator: Operator, cluster: Cluster, receiver: Receiver
) -> None:
    setup(cluster, receiver)
    cluster.create_job("ok", html="<p>x</p>", delivery=hooked(receiver.url))
    cluster.create_job("ko", html="<p>x</p>", retries=0, delivery=hooked(receiver.url))
    succeed(cluster, "ok")
    fail(cluster, "ko")
    ok, ko = delivered(cluster, "ok"), delivered(cluster, "ko")
    time.sleep(2)  # sweeps every 0.5 s: none sends a delivered webhook again
    by_id = {h.headers["webhook-id"]: h for h in receiver.received}
    assert len(receiver.received) == 2 == len(by_id), [h.headers for h in receiver.received]

    hit = by_id[f"msg_{job_id(ok)}"]
    event = hit.verified  # standardwebhooks' verify: the signature and timestamp are good
    assert isinstance(event, dict), event
    assert event["type"] == "capture.succeeded"
    assert event["data"] == {
        "job": job_id(ok),
        "phase": "Succeeded",
        "result": {
            "contentType": "image/png",
            "bytes": 10,
            "sha256": SHA,
            "url": f"/v1/captures/{job_id(ok)}/artifact",
        },
        "artifactUrl": f"/v1/captures/{job_id(ok)}/artifact",
    }
    assert ok["status"]["delivery"]["webhook"] == {
        "outcome": "Delivered",
        "id": f"msg_{job_id(ok)}",
        "attempts": 1,
        "httpStatus": 200,
    }

    event = by_id[f"msg_{job_id(ko)}"].verified
    assert isinstance(event, dict), event
    assert event["type"] == "capture.failed"
    assert event["data"] == {
        "job": job_id(ko),
        "phase": "Failed",
        "failure": {"reason": "Timeout", "message": "no load in 30s"},
    }
    assert ko["status"]["delivery"]["webhook"]["outcome"] == "Delivered"
    assert ko["status"]["phase"] == "Failed"
    assert 'kubeshot_operator_webhooks_total{outcome="Delivered"} 2.0' in operator.metrics()
    text = operator.log()
    assert "opened by the policy's allowedCIDRs" in text
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text


def test_a_failing_receiver_gets_retries_with_the_same_id(
    operator: Operator, cluster: Cluster, receiver: Receiver
) -> None:
    setup(cluster, receiver)
    receiver.script = [500, 500]
    cluster.create_job("retried", html="<p>x</p>", delivery=hooked(receiver.url))
    succeed(cluster, "retried")
    webhook = delivered(cluster, "retried")["status"]["delivery"]["webhook"]
    assert (webhook["outcome"], webhook["attempts"], webhook["httpStatus"]) == ("Delivered", 3, 200)
    assert [h.verified == receiver.received[0].verified for h in receiver.received] == [True] * 3
    assert isinstance(receiver.received[0].verified, dict)
    assert {h.headers["webhook-id"] for h in receiver.received} == {webhook["id"]}


def test_webhooks_to_metadata_or_private_addresses_are_refused(
    operator: Operator, cluster: Cluster, receiver: Receiver, canary: Canary
) -> None:
    canary.reset()
    setup(cluster, receiver, canary.port)  # the canary's port is open, its addresses are not
    targets = {
        "metadata": ("http://169.254.169.254/latest/meta-data/", "metadata"),
        "canary": (canary.url("/hook"), "loopback"),
        "canary-name": (f"http://localhost:{canary.port}/hook", "loopback"),
        "canary-decimal": (f"http://2130706498:{canary.port}/hook", "loopback"),
    }
    for name, (url, _) in targets.items():
        cluster.create_job(name, html="<p>x</p>", retries=0, delivery=hooked(url))
    for name in targets:
        fail(cluster, name)
    for name, (_, why) in targets.items():
        webhook = delivered(cluster, name)["status"]["delivery"]["webhook"]
        assert webhook["outcome"] == "Refused", (name, webhook)
        assert webhook["attempts"] == 0
        assert why in webhook["message"].lower(), (name, webhook)
    assert not canary.reached(), canary.summary()
    assert not receiver.received


def test_a_secret_that_did_not_opt_in_signs_nothing(
    operator: Operator, cluster: Cluster, receiver: Receiver
) -> None:
    setup(cluster, receiver)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "token", "namespace": cluster.namespace},
        "data": {"secret": base64.b64encode(SECRET.encode()).decode()},
    }
    assert cluster.cp.request("POST", cluster.path("secrets"), secret)[0] == 201
    for name, ref in (("unlabelled", "token"), ("missing", "nowhere")):
        cluster.create_job(name, html="<p>x</p>", retries=0, delivery=hooked(receiver.url, ref))
        fail(cluster, name)
    for name, ref in (("unlabelled", "token"), ("missing", "nowhere")):
        webhook = delivered(cluster, name)["status"]["delivery"]["webhook"]
        assert webhook["outcome"] == "Refused", webhook
        assert f"Secret '{ref}' not found, not labelled" in webhook["message"]
    assert not receiver.received


def test_jobs_that_can_never_run_are_announced_too(
    operator: Operator, cluster: Cluster, receiver: Receiver
) -> None:
    setup(cluster, receiver, features={"allowedFormats": ["png"]})
    cluster.create_job("violation", html="<p>x</p>", format="jpeg", delivery=hooked(receiver.url))
    cluster.create_job(
        "no-policy", html="<p>x</p>", policyRef="missing", delivery=hooked(receiver.url)
    )
    violation = delivered(cluster, "violation")
    assert violation["status"]["delivery"]["webhook"]["outcome"] == "Delivered"
    [hit] = receiver.received
    assert isinstance(hit.verified, dict), hit.verified
    assert hit.verified["type"] == "capture.failed"
    assert hit.verified["data"]["failure"]["reason"] == "PolicyViolation"
    # No policy, no rules to judge the receiver by: never sent.
    webhook = delivered(cluster, "no-policy")["status"]["delivery"]["webhook"]
    assert webhook["outcome"] == "Refused", webhook
    assert "no ScreenshotPolicy 'missing'" in webhook["message"]
    assert len(receiver.received) == 1


def test_a_delivery_cut_short_by_a_failover_is_sent_again(
    start_operator: Callable[..., Operator], cluster: Cluster, receiver: SlowReceiver
) -> None:
    setup(cluster, receiver)
    first = start_operator()
    receiver.hold, receiver.seconds = 1, 60.0  # the first request hangs
    cluster.create_job("handover", html="<p>x</p>", delivery=hooked(receiver.url))
    succeed(cluster, "handover")
    wait_for(lambda: receiver.received, 30, "the first delivery to arrive")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL  # before it recorded how it went
    start_operator()  # leads once the first's Lease lapses; its sweep finds the job owed
    job = delivered(cluster, "handover")
    webhook = job["status"]["delivery"]["webhook"]
    assert webhook["outcome"] == "Delivered", webhook
    assert len(receiver.received) == 2
    assert {h.headers["webhook-id"] for h in receiver.received} == {f"msg_{job_id(job)}"}
    assert receiver.received[0].verified["data"] == receiver.received[1].verified["data"]

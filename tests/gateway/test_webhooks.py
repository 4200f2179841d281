"""Signed webhooks against a real receiver (an aiohttp server on 127.0.0.9 that verifies every
signature with standardwebhooks' own `verify`): delivered, retried with the same id, never
redirected, and refused for every target of the egress guard's navigation corpus (the same
zone file and canary as tests/browser/guard), like a capture. Then through a real gateway: an
asynchronous capture announced, a refusal visible in the job, and the delivery latency.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web
from standardwebhooks import Webhook

from kubeshot.api import NetworkRules, Phase
from kubeshot.api.delivery import DeliveryOutcome
from kubeshot.gateway import keys
from kubeshot.webhooks import Retries, WebhookSender, capture_event
from kubeshot_capture.guard import IPAddress
from tests.browser.guard.conftest import CANARY_HOST, Canary, Network
from tests.browser.guard.test_guard_navigation import BLOCKED_TARGETS
from tests.gateway.conftest import Gateway, Pages
from tests.support import free_port

pytestmark = pytest.mark.gateway

RECEIVER_HOST = "127.0.0.9"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
QUICK = Retries(attempts=4, total_seconds=10, timeout=2, first_delay=0.05, max_delay=0.2)
EVENT = capture_event("0" * 32, Phase.SUCCEEDED, artifact_url="/v1/captures/0/artifact")


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    verified: Any = None


@dataclass
class Receiver:
    """Answers each request with the next status of `script` (200 once it runs out)."""

    port: int
    received: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    location: str | None = None

    @property
    def url(self) -> str:
        return f"http://{RECEIVER_HOST}:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        hit = Received(dict(request.headers), body, time.time())
        try:
            hit.verified = Webhook(SECRET).verify(body, hit.headers)
        except Exception as exc:  # the test asserts on `verified`
            hit.verified = exc
        self.received.append(hit)
        status = self.script.pop(0) if self.script else 200
        headers = {"Location": self.location} if self.location and 300 <= status < 400 else {}
        return web.Response(status=status, text="x" * 100_000, headers=headers)


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A receiver served on the running loop for the block's duration."""
    hook = Receiver(free_port(RECEIVER_HOST))
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, RECEIVER_HOST, hook.port).start()
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as hook:
        yield hook


@pytest.fixture(scope="module")
def canary_server() -> Iterator[Canary]:
    server = Canary()
    yield server
    server.shutdown()


@pytest.fixture
def canary(canary_server: Canary) -> Canary:
    canary_server.reset()
    return canary_server


def opened(*cidrs: str) -> NetworkRules:
    """The receiver's address opened explicitly, as a policy's allowedCIDRs do (and log)."""
    return NetworkRules.model_validate({"allowedCIDRs": list(cidrs or [f"{RECEIVER_HOST}/32"])})


async def test_delivered_signed_and_verified(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kubeshot.webhooks")
    status = await WebhookSender(retries=QUICK).deliver(receiver.url, SECRET, EVENT, opened())
    assert status.outcome is DeliveryOutcome.DELIVERED, status
    assert (status.attempts, status.http_status) == (1, 200)
    [hit] = receiver.received
    assert hit.verified == EVENT  # standardwebhooks' verify: signature and timestamp good
    assert hit.headers["webhook-id"] == status.id
    assert hit.headers["Content-Type"] == "application/json"
    assert any("opened by the policy's allowedCIDRs" in r.message for r in caplog.records)
    # Another secret does not verify: the signature is over this body with this secret.
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(hit.body, hit.headers)


async def test_retried_on_5xx_with_the_same_id(receiver: Receiver) -> None:
    receiver.script = [500, 503]
    status = await WebhookSender(retries=QUICK).deliver(receiver.url, SECRET, EVENT, opened())
    assert status.outcome is DeliveryOutcome.DELIVERED, status
    assert status.attempts == 3
    assert [h.verified == EVENT for h in receiver.received] == [True, True, True]
    assert {h.headers["webhook-id"] for h in receiver.received} == {status.id}


@pytest.mark.parametrize(
    ("script", "outcome", "attempts"),
    [
        ([400], DeliveryOutcome.REJECTED, 1),
        ([410], DeliveryOutcome.REJECTED, 1),
        ([408, 429, 200], DeliveryOutcome.DELIVERED, 3),
        ([502] * 10, DeliveryOutcome.FAILED, QUICK.attempts),
    ],
)
async def test_which_answers_are_retried(
    receiver: Receiver, script: list[int], outcome: DeliveryOutcome, attempts: int
) -> None:
    receiver.script = list(script)
    status = await WebhookSender(retries=QUICK).deliver(receiver.url, SECRET, EVENT, opened())
    assert (status.outcome, status.attempts) == (outcome, attempts), status
    assert len(receiver.received) == attempts


async def test_connection_errors_are_retried_within_the_bounds() -> None:
    closed = f"http://{RECEIVER_HOST}:{free_port(RECEIVER_HOST)}/"
    started = time.monotonic()
    status = await WebhookSender(retries=QUICK).deliver(closed, SECRET, EVENT, opened())
    assert status.outcome is DeliveryOutcome.FAILED
    assert status.attempts == QUICK.attempts
    assert "cannot reach the receiver" in (status.message or "")
    assert time.monotonic() - started < QUICK.total_seconds


async def test_redirects_are_not_followed(receiver: Receiver, canary: Canary) -> None:
    receiver.script, receiver.location = [307], canary.url("/")
    rules = opened(f"{RECEIVER_HOST}/32", f"{CANARY_HOST}/32")  # even where it may go
    status = await WebhookSender(retries=QUICK).deliver(receiver.url, SECRET, EVENT, rules)
    assert (status.outcome, status.http_status) == (DeliveryOutcome.REJECTED, 307)
    assert not canary.reached(), canary.summary()


# -- the guard's corpus --------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), BLOCKED_TARGETS)
async def test_refused_like_a_capture(
    canary: Canary, template: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every navigation target the guard refuses, by the guard's zone file: refused, logged,
    never reached."""
    url = template.format(p=canary.port)
    sender = WebhookSender(resolver=Network(canary).resolve, retries=QUICK)
    rules = NetworkRules.model_validate({"allowedPorts": [80, 443, canary.port]})
    status = await sender.deliver(url, SECRET, EVENT, rules)
    assert status.outcome is DeliveryOutcome.REFUSED, status
    assert status.attempts == 0
    assert any(expected.lower() in r.message.lower() for r in caplog.records), caplog.text
    assert not canary.reached(), canary.summary()


LOOPBACK_TWINS = [
    "http://127.0.0.66:{p}/",
    "http://2130706498:{p}/",
    "http://localhost:{p}/",
    "http://[::1]:{p}/",
    "http://[::ffff:127.0.0.66]:{p}/",
    "http://canary.test:{p}/",
]


@pytest.mark.parametrize("template", LOOPBACK_TWINS)
async def test_the_allowed_twin_is_delivered(canary: Canary, template: str) -> None:
    """The same targets opened by the rules are reached: the refusals above are the rules'."""
    sender = WebhookSender(resolver=Network(canary).resolve, retries=QUICK)
    rules = opened("127.0.0.0/8", "::1/128")
    status = await sender.deliver(template.format(p=canary.port), SECRET, EVENT, rules)
    assert status.outcome is DeliveryOutcome.DELIVERED, status
    assert canary.reached()


async def test_the_checked_address_is_the_one_connected_to(
    receiver: Receiver, canary: Canary
) -> None:
    """DNS rebinding: the name is resolved once per attempt, by the guard; the connection goes
    to the address judged, never to a second answer."""
    answers: list[Sequence[IPAddress]] = [[ip_address(RECEIVER_HOST)], [ip_address(CANARY_HOST)]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> Sequence[IPAddress]:
        asked.append(host)
        return answers[min(len(asked), 2) - 1]

    sender = WebhookSender(resolver=rebinding, retries=QUICK)
    url = f"http://rebind.test:{receiver.port}/hook"
    status = await sender.deliver(url, SECRET, EVENT, opened())
    assert status.outcome is DeliveryOutcome.DELIVERED, status
    assert asked == ["rebind.test"]
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["Host"] == f"rebind.test:{receiver.port}"
    assert not canary.reached(), canary.summary()


# -- through the gateway --------------------------------------------------------------------------


def hook(receiver: Receiver, **capture: Any) -> dict[str, Any]:
    return {
        "html": "<p>hi</p>",
        **capture,
        "delivery": {"webhook": {"url": receiver.url, "secret": SECRET}},
    }


async def submit(
    gateway: Gateway, session: ClientSession, body: dict[str, Any], policy: str = "default"
) -> dict[str, Any]:
    async with session.post(
        f"{gateway.url}/v1/captures?policy={policy}", json=body, headers=gateway.auth()
    ) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def test_an_async_capture_is_announced(
    gateway: Gateway, session: ClientSession, receiver: Receiver
) -> None:
    accepted = await submit(gateway, session, hook(receiver))
    assert accepted["delivery"]["webhook"]["outcome"] == "Pending"
    assert "secret" not in str(accepted)
    job = await gateway.finished(session, accepted["id"])
    assert job["phase"] == "Succeeded"
    for _ in range(100):
        if receiver.received:
            break
        await asyncio.sleep(0.05)
    [hit] = receiver.received
    event = hit.verified
    assert isinstance(event, dict), event
    assert event["type"] == "capture.succeeded"
    assert event["data"]["job"] == job["id"]
    assert event["data"]["artifactUrl"] == job["result"]["url"]
    assert event["data"]["result"]["sha256"] == job["result"]["sha256"]
    async with session.get(f"{gateway.url}/v1/captures/{job['id']}", headers=gateway.auth()) as r:
        delivery = (await r.json())["delivery"]["webhook"]
    assert delivery["outcome"] == "Delivered"
    assert delivery["id"] == hit.headers["webhook-id"] == f"msg_{job['id']}"


async def test_refusals_are_visible_to_the_caller(
    gateway: Gateway, session: ClientSession, receiver: Receiver, pages: Pages
) -> None:
    # On its face (a literal metadata address): 403 before anything runs.
    body = hook(receiver)
    body["delivery"]["webhook"]["url"] = "http://169.254.169.254/latest/meta-data/"
    async with session.post(f"{gateway.url}/v1/captures", json=body, headers=gateway.auth()) as r:
        assert r.status == 403
        assert "metadata" in (await r.json())["error"]["message"]
    # A name that resolves to loopback, under a policy that does not open it: the job runs, its
    # webhook is refused, and the job says so.
    body = hook(receiver)
    body["delivery"]["webhook"]["url"] = f"http://localhost:{pages.port}/hook"  # a port it allows
    job = await gateway.finished(session, (await submit(gateway, session, body, "public"))["id"])
    for _ in range(100):
        async with session.get(
            f"{gateway.url}/v1/captures/{job['id']}", headers=gateway.auth()
        ) as r:
            delivery = (await r.json())["delivery"]["webhook"]
        if delivery["outcome"] != "Pending":
            break
        await asyncio.sleep(0.05)
    assert delivery["outcome"] == "Refused", delivery
    assert "loopback" in delivery["message"]
    assert not receiver.received


async def test_delivery_latency(
    gateway: Gateway, session: ClientSession, receiver: Receiver
) -> None:
    """Completion (the job saved as finished) to the receiver, over 48 deliveries."""
    registry = gateway.app[keys.JOBS]
    latencies: list[float] = []
    for _ in range(12):  # four at a time: the identity's captures in flight
        ids = [(await submit(gateway, session, hook(receiver)))["id"] for _ in range(4)]
        for job_id in ids:
            await gateway.finished(session, job_id)
        for _ in range(100):
            if (
                sum(h.headers["webhook-id"] in {f"msg_{i}" for i in ids} for h in receiver.received)
                == 4
            ):
                break
            await asyncio.sleep(0.05)
        arrived = {h.headers["webhook-id"]: h.at for h in receiver.received}
        for job_id in ids:
            stored = await registry.jobs.load(job_id)  # type: ignore[attr-defined]
            latencies.append(arrived[f"msg_{job_id}"] - stored.finished_at)
    p50 = statistics.median(latencies)
    print(
        f"webhook delivery latency over {len(latencies)}: p50 {p50 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert all(isinstance(h.verified, dict) for h in receiver.received)
    assert p50 < 0.5

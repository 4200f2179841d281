"""Webhooks, the pure parts: the delivery models and their secrets, the event, which answers are
retried and how long between attempts, the opt-in of a CaptureJob's Secret, and the URL a
request is made to (the guard's reading of the host), which finished CaptureJobs owe their
webhook, and the deliveries running in the background."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kubeshot.api import CaptureJobSpec, Failure, FailureReason, NetworkRules, Phase, ResultSummary
from kubeshot.api.delivery import (
    SECRET_PATTERN,
    WEBHOOK_SECRET_LABEL,
    CaptureRequestBody,
    JobDelivery,
    webhook_key,
)
from kubeshot.gateway.openapi import openapi_document
from kubeshot.operator.notifying import owed
from kubeshot.operator.views import JobView
from kubeshot.webhooks import (
    Deliveries,
    Retries,
    capture_event,
    message_id,
    refusal,
    request_url,
    retried,
    secret_of,
)
from kubeshot_capture.guard import parse_url

pytestmark = pytest.mark.unit

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()


@pytest.mark.parametrize("size", [24, 25, 26, 32, 63, 64])
def test_secrets_of_24_to_64_bytes_are_accepted(size: int) -> None:
    text = base64.b64encode(bytes(size)).decode()
    assert webhook_key(text) == webhook_key("whsec_" + text) == bytes(size)


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        base64.b64encode(bytes(23)).decode(),
        base64.b64encode(bytes(65)).decode(),
        "whsec_" + "!" * 44,
        "whsec_" + base64.b64encode(KEY).decode().rstrip("="),  # unpadded
        " " + SECRET,
    ],
)
def test_other_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        webhook_key(secret)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(SECRET_PATTERN, fullmatch=True))
def test_every_secret_the_document_allows_is_accepted(secret: str) -> None:
    """The OpenAPI document states the secret's rule exactly (a client generated from it never
    sends a secret the gateway refuses)."""
    assert 24 <= len(webhook_key(secret)) <= 64


def test_the_document_states_the_rules_of_a_webhook() -> None:
    schemas = openapi_document()["components"]["schemas"]
    webhook = schemas["Webhook"]["properties"]
    assert webhook["secret"]["pattern"] == SECRET_PATTERN
    assert webhook["secret"]["writeOnly"] is True
    assert "delivery" in schemas["CaptureRequestBody"]["properties"]
    assert "delivery" not in schemas["CaptureOptions"]["properties"]  # synchronous: none


def test_a_request_body_keeps_its_secret_out_of_every_dump() -> None:
    body = CaptureRequestBody.model_validate(
        {
            "url": "https://example.com",
            "delivery": {"webhook": {"url": "https://h.test/x", "secret": SECRET}},
        }
    )
    assert body.delivery is not None and body.delivery.webhook is not None
    assert body.delivery.webhook.secret.get_secret_value() == SECRET
    assert SECRET not in str(body.to_wire()) and SECRET not in repr(body)
    options = body.capture_options()
    assert type(options).__name__ == "CaptureOptions"
    assert "delivery" not in options.to_wire()


def test_webhook_urls_are_validated_like_capture_urls() -> None:
    for url in ("ftp://h.test/", "http://user:pw@h.test/", "http://h.test/\n"):
        with pytest.raises(ValidationError):
            CaptureRequestBody.model_validate(
                {"html": "<p/>", "delivery": {"webhook": {"url": url, "secret": SECRET}}}
            )


def test_a_capture_job_names_a_secret_and_never_holds_one() -> None:
    delivery = JobDelivery.model_validate(
        {"webhook": {"url": "https://h.test/", "secretRef": {"name": "hook"}}}
    )
    assert delivery.webhook is not None
    assert (delivery.webhook.secret_ref.name, delivery.webhook.secret_ref.key) == (
        "hook",
        "secret",
    )
    with pytest.raises(ValidationError, match="secret"):
        JobDelivery.model_validate({"webhook": {"url": "https://h.test/", "secret": SECRET}})


def test_only_a_secret_that_opts_in_is_read() -> None:
    data = {"secret": base64.b64encode(SECRET.encode()).decode()}
    opted = {"metadata": {"labels": {WEBHOOK_SECRET_LABEL: "true"}}, "data": data}
    assert secret_of(opted, "secret") == SECRET
    assert secret_of(opted, "other") is None
    assert secret_of({"metadata": {}, "data": data}, "secret") is None
    assert (
        secret_of({"metadata": {"labels": {WEBHOOK_SECRET_LABEL: "yes"}}, "data": data}, "secret")
        is None
    )
    # A value that is not base64 of text: an error the operator records as Refused, not a crash.
    for junk in ("not base64!", base64.b64encode(b"\xff\xfe").decode()):
        with pytest.raises((binascii.Error, UnicodeDecodeError)):
            secret_of({**opted, "data": {"secret": junk}}, "secret")


def test_the_event() -> None:
    failed = capture_event(
        "j1", Phase.FAILED, failure=Failure(reason=FailureReason.TIMEOUT, message="slow")
    )
    assert failed["type"] == "capture.failed"
    assert failed["data"] == {
        "job": "j1",
        "phase": "Failed",
        "failure": {"reason": "Timeout", "message": "slow"},
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", failed["timestamp"])
    succeeded = capture_event("j2", Phase.SUCCEEDED, artifact_url="/v1/captures/j2/artifact")
    assert succeeded["type"] == "capture.succeeded"
    assert succeeded["data"]["artifactUrl"] == "/v1/captures/j2/artifact"


@pytest.mark.parametrize("status", [500, 502, 503, 599, 408, 429])
def test_the_receivers_trouble_is_retried(status: int) -> None:
    assert retried(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 307, 200])
def test_other_answers_are_final(status: int) -> None:
    assert not retried(status)


def test_backoff_is_exponential_with_jitter_and_bounded() -> None:
    retries = Retries(first_delay=1, max_delay=60)
    for attempt in range(1, 12):
        step = min(60.0, 2.0 ** (attempt - 1))
        delays = {retries.delay(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered
    assert retries.delay(1, retry_after=30) == 30  # a 429's Retry-After is honoured...
    assert retries.delay(1, retry_after=3600) == 60  # ...up to the longest delay


def test_the_request_goes_to_the_host_the_guard_read() -> None:
    """Where the guard and an HTTP client would read a URL differently, the client is handed
    the guard's reading: what is judged is what is connected to."""
    cases = {
        "http://h.test\\@127.0.0.1/p?q=1": "http://h.test:80/p?q=1",
        "http://2130706433:8080/x": "http://127.0.0.1:8080/x",
        "https://[::ffff:7f00:1]/": "https://[::ffff:7f00:1]:443/",
        "http://H.Test./": "http://h.test:80/",
    }
    for url, expected in cases.items():
        assert request_url(url, parse_url(url)) == expected


def test_refusal_on_its_face_is_the_guards() -> None:
    rules = NetworkRules()
    assert refusal("https://example.com/hook", rules) is None
    assert "metadata" in (refusal("http://169.254.169.254/", rules) or "")
    assert "port" in (refusal("http://example.com:8080/", rules) or "")
    assert "scheme" in (refusal("file:///etc/passwd", rules) or "")
    assert (
        refusal("http://10.1.2.3/", NetworkRules.model_validate({"allowedCIDRs": ["10.0.0.0/8"]}))
        is None
    )


def test_a_capturejob_asking_for_a_webhook_is_accepted() -> None:
    # The operator sends CaptureJob webhooks (kubeshot.operator.notifying).
    spec = CaptureJobSpec.model_validate(
        {
            "url": "https://example.com/",
            "delivery": {
                "webhook": {"url": "https://hooks.example.com/", "secretRef": {"name": "s"}}
            },
        }
    )
    assert spec.delivery is not None and spec.delivery.webhook is not None
    assert spec.delivery.webhook.secret_ref.name == "s"
    assert "delivery" not in spec.capture_options().to_wire()


def test_the_artifact_url_is_the_results() -> None:
    result = ResultSummary(content_type="image/png", bytes=1, sha256="0" * 64, url="/v1/a")
    event = capture_event("j", Phase.SUCCEEDED, result=result)
    assert event["data"]["artifactUrl"] == "/v1/a"
    assert event["data"]["result"]["url"] == "/v1/a"
    assert message_id("j") == "msg_j"


def test_a_result_without_a_url_is_announced_with_the_gateways_artifact_path() -> None:
    # A capture pod that uploads straight to the bucket reports no URL (status.result.url).
    result = ResultSummary(content_type="image/png", bytes=1, sha256="0" * 64)
    event = capture_event("0123abcd" * 4, Phase.SUCCEEDED, result=result)
    assert event["data"]["artifactUrl"] == f"/v1/captures/{'0123abcd' * 4}/artifact"


# -- which finished CaptureJobs owe their webhook (the failover resend decision) -----------------

WEBHOOK = {"webhook": {"url": "https://hooks.test/", "secretRef": {"name": "s"}}}


def job(phase: str, delivery: object = None, outcome: str | None = None) -> JobView:
    status: dict[str, object] = {"phase": phase}
    if outcome is not None:
        status["delivery"] = {"webhook": {"outcome": outcome, "id": "msg_1"}}
    spec: dict[str, object] = {"html": "<p/>"}
    if delivery is not None:
        spec["delivery"] = delivery
    return JobView.from_body(
        {"metadata": {"name": "j", "uid": "1"}, "spec": spec, "status": status}
    )


@pytest.mark.parametrize(
    ("view", "expected"),
    [
        (job("Succeeded", WEBHOOK), True),  # finished, nothing recorded (the sender stopped)
        (job("Failed", WEBHOOK), True),
        (job("Succeeded", WEBHOOK, "Pending"), True),  # cut short mid-delivery
        (job("Succeeded", WEBHOOK, "Delivered"), False),
        (job("Failed", WEBHOOK, "Refused"), False),
        (job("Failed", WEBHOOK, "Rejected"), False),
        (job("Failed", WEBHOOK, "Failed"), False),  # retries ran out: final
        (job("Running", WEBHOOK), False),  # not finished
        (job("Queued", WEBHOOK), False),
        (job("Pending", WEBHOOK), False),
        (job("Succeeded"), False),  # asks for none
        (job("Succeeded", {}), False),
        (job("Succeeded", {"webhook": None}), False),
        (job("Succeeded", "garbage"), False),
    ],
)
def test_which_finished_jobs_owe_their_webhook(view: JobView, expected: bool) -> None:
    assert owed(view) is expected


# -- deliveries in the background ---------------------------------------------------------------


async def test_deliveries_run_one_per_key_within_the_limit_and_end_with_close() -> None:
    started: list[str] = []
    release = asyncio.Event()

    async def delivery(name: str) -> None:
        started.append(name)
        await release.wait()

    deliveries = Deliveries(limit=2)
    assert deliveries.start("a", delivery("a1"))
    assert not deliveries.start("a", delivery("a2"))  # one per key at a time
    assert deliveries.start("b", delivery("b1"))
    assert not deliveries.start("c", delivery("c1"))  # the limit: asked again later
    await asyncio.sleep(0)
    assert started == ["a1", "b1"] and len(deliveries) == 2
    release.set()
    await asyncio.sleep(0.01)
    assert len(deliveries) == 0
    assert deliveries.start("a", delivery("a3"))  # done: the key is free again
    release.clear()
    await asyncio.sleep(0)
    await deliveries.close(grace=0.01)  # still waiting: cancelled
    assert len(deliveries) == 0

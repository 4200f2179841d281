"""One wire format of "run one capture": the CaptureRequest in, the CaptureOutcome out."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureOutcome,
    CaptureReport,
    CaptureRequest,
    Failure,
    FailureReason,
    PhaseTiming,
    ProxyCredentials,
    ScreenshotPolicySpec,
    Timings,
    UploadTarget,
)
from kubeshot.api.job import CapturePhase
from kubeshot.gateway import worker

PASSWORD = "hunter2-Sup3r-s3cret"
T = 1_700_000_000 * 10**9
REPORT = CaptureReport(
    content_type="image/png",
    bytes=3,
    sha256="a" * 64,
    width=1280,
    height=720,
    final_url="https://example.com/",
    http_status=200,
    title="Example",
    format="png",
    blocked_requests=4,
    bytes_transferred=1234,
    timings=Timings(
        total_ms=12.5,
        phases=[PhaseTiming(name=CapturePhase.SETUP, start_unix_nano=T, end_unix_nano=T + 5)],
    ),
)


def request() -> CaptureRequest:
    return CaptureRequest(
        options=CaptureOptions(url="https://example.com/"),
        policy=ScreenshotPolicySpec(),
        proxy=ProxyCredentials(
            server="http://proxy:3128", username="u", password=SecretStr(PASSWORD)
        ),
        upload=UploadTarget(url="http://gw/upload", token="t" * 20),
    )


def test_a_request_round_trips_with_its_password_once_on_the_wire_and_nowhere_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = request()
    wire = sent.to_json()
    assert wire.count(PASSWORD) == 1
    assert json.loads(wire)["proxy"]["password"] == PASSWORD
    read = CaptureRequest.model_validate_json(wire)
    assert read == sent
    assert read.proxy is not None and read.proxy.password is not None
    assert read.proxy.password.get_secret_value() == PASSWORD
    # Every other rendering of the request keeps it masked.
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("request %s %r", read, read)
    for text in (repr(read), str(read), caplog.text, json.dumps(read.to_wire())):
        assert PASSWORD not in text


def test_a_worker_frame_carries_the_request_as_it_is_on_the_wire() -> None:
    sent = request()

    async def read_back() -> tuple[dict[str, Any], bytes] | None:
        frames = asyncio.StreamReader()
        frames.feed_data(worker.capture_frame(sent, {"request_id": "r1"}))
        frames.feed_eof()
        return await worker.read_frame_async(frames)

    frame = asyncio.run(read_back())
    assert frame is not None
    header, payload = frame
    assert header["op"] == "capture" and header["log"] == {"request_id": "r1"}
    assert PASSWORD not in json.dumps(header) and payload.decode() == sent.to_json()
    assert CaptureRequest.model_validate_json(payload) == sent


@pytest.mark.parametrize(
    "outcome",
    [
        CaptureOutcome(result=REPORT),
        CaptureOutcome(result=REPORT.model_copy(update={"url": "http://gw/a", "partial": True})),
        CaptureOutcome(failure=Failure(reason=FailureReason.TIMEOUT, message="too slow")),
    ],
)
def test_an_outcome_round_trips(outcome: CaptureOutcome) -> None:
    assert CaptureOutcome.model_validate(outcome.to_wire()) == outcome
    assert CaptureOutcome.model_validate_json(json.dumps(outcome.to_wire())) == outcome


@pytest.mark.parametrize("document", [{}, {"result": REPORT.to_wire(), "failure": {}}])
def test_an_outcome_is_a_result_or_a_failure(document: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CaptureOutcome.model_validate(document)


def test_a_failed_outcome_raises_its_reason() -> None:
    outcome = CaptureOutcome.failed(CaptureError(FailureReason.BLOCKED_BY_POLICY, "m" * 5000))
    with pytest.raises(CaptureError) as raised:
        outcome.report()
    assert raised.value.reason is FailureReason.BLOCKED_BY_POLICY
    assert raised.value.message == "m" * 1024
    assert CaptureOutcome(result=REPORT).report() == REPORT


def test_phases_that_could_not_be_a_captures_are_dropped_not_the_report() -> None:
    good = PhaseTiming(name=CapturePhase.SETUP, start_unix_nano=T, end_unix_nano=T + 10)
    later = good.model_copy(update={"name": CapturePhase.NAVIGATE})  # overlaps `good`
    for phases in ([good.to_wire()] * 6, [good.to_wire(), later.to_wire()], [{"name": "x"}]):
        document = {**REPORT.to_wire(), "timings": {"phases": phases}}
        assert CaptureReport.model_validate(document).timings.phases == []


def test_the_worker_answers_with_the_outcome_and_its_artifact() -> None:
    class Engine:
        async def capture(self, options: Any, policy: Any, proxy: Any) -> Any:
            assert proxy.password.get_secret_value() == PASSWORD
            if options.url.endswith("/fail"):
                raise CaptureError(FailureReason.TARGET_HTTP_ERROR, "HTTP 404")
            return type("Artifact", (), {"data": b"png", "report": REPORT})()

    sent: list[tuple[dict[str, Any], bytes]] = []

    def send(header: dict[str, Any], payload: bytes = b"") -> None:
        sent.append((header, payload))

    class Browser:
        def __init__(self, connected: bool) -> None:
            self.is_connected = lambda: connected

    ok = request()
    failing = ok.model_copy(update={"options": CaptureOptions(url="https://example.com/fail")})
    for each, browser in ((ok, Browser(True)), (failing, None), (failing, Browser(False))):
        asyncio.run(worker._capture(Engine(), each.to_json().encode(), send, browser))
    (ok_header, data), (failed_header, nothing), (lost_header, _) = sent
    assert CaptureOutcome.model_validate(ok_header["outcome"]).report() == REPORT
    assert data == b"png" and nothing == b""
    failed = CaptureOutcome.model_validate(failed_header["outcome"])
    assert failed.failure == Failure(reason=FailureReason.TARGET_HTTP_ERROR, message="HTTP 404")
    # Whatever the engine made of it, a capture whose browser exited lost its worker.
    lost = CaptureOutcome.model_validate(lost_header["outcome"]).failure
    assert lost is not None and lost.reason is FailureReason.POD_LOST


def test_a_kubernetes_job_gives_back_the_outcome_its_status_keeps() -> None:
    from kubeshot.gateway.cluster import job_outcome

    summary = REPORT.summary().to_wire()
    job: dict[str, Any] = {"spec": {"format": "png"}, "status": {"phase": "Succeeded"}}
    job["status"]["result"] = summary
    report = job_outcome(job).report()
    assert report.format == "png" and report.summary() == REPORT.summary()
    job["status"] = {"phase": "Failed", "failure": {"reason": "Timeout", "message": "slow"}}
    assert job_outcome(job).failure == Failure(reason=FailureReason.TIMEOUT, message="slow")
    for status in ({"phase": "Succeeded"}, {"phase": "Failed", "failure": {"reason": "?"}}):
        failure = job_outcome({"status": status}).failure
        assert failure is not None and failure.reason is FailureReason.INTERNAL

"""Target status and metadata, the pure parts: `failOnHttpStatus` (model, rules, CEL twin), the
TargetHttpError reason, the result fields and their bounds, the termination message that carries
them out of a pod, the operator's status, the job view and the response headers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
from pydantic import ValidationError

from kubeshot.api import (
    CaptureJobSpec,
    CaptureJobStatus,
    CaptureOptions,
    CaptureOutcome,
    Failure,
    FailureReason,
    ResultSummary,
)
from kubeshot.api.capture import http_status_matches
from kubeshot.api.crds import capturejob_crd
from kubeshot.api.job import MAX_TITLE_LENGTH, page_title
from kubeshot.gateway.app import target_headers
from kubeshot.gateway.validation import options_from_query
from kubeshot.operator.lifecycle import finished_status, pod_outcome
from kubeshot_capture.pod import MAX_TERMINATION_MESSAGE, termination_message

URL = "https://example.com/"
SHA = "a" * 64
RESULT = {"contentType": "image/png", "bytes": 3, "sha256": SHA}


def test_target_http_error_is_in_the_closed_vocabulary() -> None:
    reason = FailureReason("TargetHttpError")
    assert reason is FailureReason.TARGET_HTTP_ERROR
    assert (reason.exit_code, reason.http_status, reason.error_code) == (
        4,
        502,
        "target_http_error",
    )
    assert not reason.retriable  # the target answers the same again
    crd = capturejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    enum = crd["properties"]["status"]["properties"]["failure"]["properties"]["reason"]["enum"]
    assert "TargetHttpError" in enum


@pytest.mark.parametrize(
    ("rules", "status", "matches"),
    [
        (["4xx"], 404, True),
        (["4xx"], 499, True),
        (["4xx"], 500, False),
        (["404"], 404, True),
        (["404"], 403, False),
        (["5xx", "404"], 503, True),
        ([], 500, False),
        (["2xx"], 200, True),
        (["5xx"], 1500, False),  # no class of its own
    ],
)
def test_http_status_rules(rules: list[str], status: int, matches: bool) -> None:
    assert http_status_matches(rules, status) is matches


def test_fail_on_http_status_accepts_codes_and_classes() -> None:
    options = CaptureOptions.model_validate(
        {"url": URL, "failOnHttpStatus": ["4xx", "5xx", "404", "200"]}
    )
    assert options.fail_on_http_status == ["4xx", "5xx", "404", "200"]
    assert options.to_wire()["failOnHttpStatus"] == ["4xx", "5xx", "404", "200"]
    assert CaptureOptions(url=URL).fail_on_http_status == []


@pytest.mark.parametrize(
    "rules",
    [["4XX"], ["1xx"], ["600"], ["44"], ["4044"], [" 404"], [404], ["4xx"] * 17, ["*"]],
)
def test_fail_on_http_status_refuses_what_it_cannot_honour(rules: list[Any]) -> None:
    with pytest.raises(ValidationError, match="failOnHttpStatus"):
        CaptureOptions.model_validate({"url": URL, "failOnHttpStatus": rules})


def test_fail_on_http_status_needs_a_url() -> None:
    with pytest.raises(ValidationError, match="failOnHttpStatus applies to url input only"):
        CaptureJobSpec.model_validate({"html": "<p>x</p>", "failOnHttpStatus": ["4xx"]})
    crd = capturejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = crd["properties"]["spec"]["x-kubernetes-validations"]
    assert any("failOnHttpStatus" in rule["rule"] for rule in rules)


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("  Plain\ttitle\n ", "Plain title"),
        ("a\r\nSet-Cookie: x=1", "a Set-Cookie: x=1"),
        ("left\u202eright\u2066x\u2069", "left right x"),
        ("nul\x00del\x7fc1\x85", "nul del c1"),
        ("中文 😀 Ünïcödé", "中文 😀 Ünïcödé"),
        (" \x01 \u2028", None),
        ("", None),
        (None, None),
    ],
)
def test_page_titles_are_cleaned(raw: str | None, title: str | None) -> None:
    assert page_title(raw) == title


def test_page_titles_are_bounded() -> None:
    cleaned = page_title("x" * 10_000)
    assert cleaned is not None and len(cleaned) == MAX_TITLE_LENGTH
    # The model applies it to whatever reads a report: a pod's, or a CaptureJob's status.
    summary = ResultSummary.model_validate({**RESULT, "title": "\u202e" + "y" * 600})
    assert summary.title == "y" * MAX_TITLE_LENGTH


def test_result_fields_on_the_wire() -> None:
    summary = ResultSummary.model_validate(
        {**RESULT, "finalUrl": URL, "httpStatus": 404, "title": "Missing"}
    )
    wire = summary.to_wire()
    assert (wire["finalUrl"], wire["httpStatus"], wire["title"]) == (URL, 404, "Missing")
    assert {"finalUrl", "httpStatus", "title"}.isdisjoint(ResultSummary(**RESULT).to_wire())
    for bad in ({"httpStatus": 42}, {"httpStatus": 1000}, {"finalUrl": "h" * 2049}):
        with pytest.raises(ValidationError):
            ResultSummary.model_validate({**RESULT, **bad})


def test_headers_carry_the_target_safely() -> None:
    summary = ResultSummary.model_validate(
        {
            **RESULT,
            "finalUrl": "https://example.com/a%20b?q=é",
            "httpStatus": 404,
            "title": 'Ünïcode 100% "quoted" 中文',
        }
    )
    headers = target_headers(summary)
    assert headers["X-Kubeshot-Http-Status"] == "404"
    assert headers["X-Kubeshot-Final-Url"] == "https://example.com/a%20b?q=%C3%A9"
    assert unquote(headers["X-Kubeshot-Title"]) == 'Ünïcode 100% "quoted" 中文'
    assert all(value.isascii() and value.isprintable() for value in headers.values())
    assert target_headers(ResultSummary(**RESULT)) == {}
    partial = ResultSummary.model_validate({**RESULT, "partial": True})
    assert target_headers(partial) == {"X-Kubeshot-Partial": "true"}


def test_headers_never_carry_a_line_break() -> None:
    # Even a summary built without validation: the encoding alone keeps headers whole.
    fields = {
        **ResultSummary(**RESULT).model_dump(),
        "final_url": "https://e.com/\r\nSet-Cookie: a=b",
        "title": "t\r\nSet-Cookie: a=b\x00",
    }
    forged = ResultSummary.model_construct(**fields)
    headers = target_headers(forged)
    assert all("\r" not in v and "\n" not in v and "\0" not in v for v in headers.values())
    assert unquote(headers["X-Kubeshot-Title"]) == "t\r\nSet-Cookie: a=b\x00"


def outcome(result: dict[str, Any]) -> CaptureOutcome:
    return CaptureOutcome.model_validate({"result": result})


def test_a_long_title_gives_way_in_the_termination_message() -> None:
    t = 1_700_000_000 * 10**9
    result = {
        **RESULT,
        "url": "http://gateway/v1/captures/" + "f" * 32 + "/artifact",
        "finalUrl": "https://example.com/" + "p" * 2000,
        "httpStatus": 200,
        "title": "中😀" * 256,
        "blockedRequests": 7,
        "timings": {"phases": [{"name": "setup", "startUnixNano": t, "endUnixNano": t + 1}]},
    }
    text = termination_message(outcome(result))
    assert len(text.encode()) <= MAX_TERMINATION_MESSAGE
    report = CaptureOutcome.model_validate_json(text).report()
    assert report.sha256 == SHA and report.final_url == result["finalUrl"]
    assert report.title and result["title"].startswith(report.title)
    assert report.timings.phases == [] and report.blocked_requests == 7  # the phases gave way
    short = outcome(
        {**RESULT, "httpStatus": 404, "title": "中😀" * 10, "timings": result["timings"]}
    )
    assert CaptureOutcome.model_validate_json(termination_message(short)) == short


def test_a_long_final_url_gives_way_after_the_title() -> None:
    url = "http://gateway/" + "u" * 3000  # the download URL never gives way
    long = outcome({**RESULT, "url": url, "finalUrl": "https://e.com/" + "p" * 2000, "title": "T"})
    report = CaptureOutcome.model_validate_json(termination_message(long)).report()
    assert report.final_url is None and report.title is None and report.url == url


def test_a_long_failure_message_gives_way() -> None:
    failed = CaptureOutcome(failure=Failure(reason=FailureReason.INTERNAL, message="😀" * 1024))
    text = termination_message(failed)
    assert len(text.encode()) <= MAX_TERMINATION_MESSAGE
    assert CaptureOutcome.model_validate_json(text).failure == Failure(
        reason=FailureReason.INTERNAL, message="😀" * 1000
    )


def test_the_operator_writes_what_the_target_answered_into_status() -> None:
    reported = {**RESULT, "finalUrl": URL, "httpStatus": 404, "title": "Missing\r\nX: y"}
    pod = {
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {
                    "name": "capture",
                    "state": {
                        "terminated": {"exitCode": 0, "message": json.dumps({"result": reported})}
                    },
                }
            ],
        }
    }
    outcome = pod_outcome(pod)
    assert outcome is not None
    patch = finished_status(CaptureJobStatus(), outcome, 1, "2026-01-01T00:00:00Z").patch()
    result = patch["result"]
    assert (result["finalUrl"], result["httpStatus"], result["title"]) == (URL, 404, "Missing X: y")


def test_a_signed_url_carries_the_rules_as_json() -> None:
    options = options_from_query([("url", URL), ("failOnHttpStatus", '["4xx", "503"]')])
    assert options.fail_on_http_status == ["4xx", "503"]

"""The capture pod's entrypoint: read the request, capture, upload, report, exit.

Inputs come from the environment the operator sets:
  KUBESHOT_REQUEST           JSON CaptureRequest (mounted from the job's Secret)
  KUBESHOT_TERMINATION_LOG   where the outcome goes (default /dev/termination-log)
  KUBESHOT_OUTPUT            artifact path when the request has no upload target
The termination log holds the CaptureOutcome as JSON of at most 4 KiB (UTF-8):
  {"result": {...CaptureReport...}} or {"failure": {"reason": ..., "message": ...}}
The operator copies the result, the whole report, into the CaptureJob's `status.result` and
records its timings' phases as this pod's spans (the pod itself exports nothing: its
NetworkPolicy lets it reach no collector).

`python -m kubeshot_capture` (__main__) starts Playwright's driver before it imports this module,
and hands it to `main`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Mapping
from pathlib import Path

from playwright.async_api import Playwright
from pydantic import ValidationError

from kubeshot import logs
from kubeshot.api import (
    CaptureError,
    CaptureOutcome,
    CaptureReport,
    CaptureRequest,
    ExitCode,
    FailureReason,
    UploadTarget,
)
from kubeshot.api.reasons import redact_addresses
from kubeshot_capture import run
from kubeshot_capture.engine import CaptureEngine

log = logging.getLogger("kubeshot_capture.pod")
MAX_TERMINATION_MESSAGE = 4096
UPLOAD_ATTEMPTS = 3


def termination_message(outcome: CaptureOutcome) -> str:
    """The outcome as JSON of at most MAX_TERMINATION_MESSAGE bytes: the kubelet cuts a longer
    message, which would then not parse. What may be long gives way, never what identifies the
    artifact: a failure's message; a result's phase timings (for traces), then its page title,
    then its final URL."""
    text = _json(outcome)
    if outcome.failure is not None and not _fits(text):
        failure = outcome.failure.model_copy(update={"message": outcome.failure.message[:1000]})
        return _json(CaptureOutcome(failure=failure))
    report = outcome.result
    if report is None or _fits(text):
        return text
    report = report.model_copy(update={"timings": report.timings.model_copy(update={"phases": []})})
    text = _json(CaptureOutcome(result=report))
    if not _fits(text):
        # Every character cut saves at least a byte: one cut by the excess is enough.
        title = report.title or ""
        title = title[: max(0, len(title) - (len(text.encode()) - MAX_TERMINATION_MESSAGE))]
        report = report.model_copy(update={"title": title.rstrip() or None})
        text = _json(CaptureOutcome(result=report))
    if not _fits(text):
        text = _json(CaptureOutcome(result=report.model_copy(update={"final_url": None})))
    return text


def _json(outcome: CaptureOutcome) -> str:
    return outcome.model_dump_json(by_alias=True, exclude_none=True)


def _fits(text: str) -> bool:
    return len(text.encode()) <= MAX_TERMINATION_MESSAGE


TOO_LARGE = "upload refused: the artifact is larger than the result store accepts"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """An upload goes where the operator signed it to, and nowhere else: a 3xx (from a bucket
    endpoint a caller chose, for delivery.s3) is a refusal, never followed (urllib follows a
    302 with a GET, to any address, by default)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def upload(target: UploadTarget, data: bytes, report: CaptureReport) -> str | None:
    """Send the artifact where the operator said: a PUT to the gateway (which answers with the
    download URL, returned), or a POST of the signed form to the S3 store's bucket (None: the
    gateway names the URL)."""
    if target.fields is None:
        headers = {
            "Authorization": f"Bearer {target.token}",
            "Content-Type": report.content_type,
            "X-Kubeshot-Sha256": report.sha256,
        }
        body, method = data, "PUT"
    else:
        body, content_type = multipart_form(target.fields, data)
        headers, method = {"Content-Type": content_type}, "POST"
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by UploadTarget
        target.url, data=body, method=method, headers=headers
    )
    delay = 0.5
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            with _OPENER.open(request, timeout=30) as response:
                if target.fields is not None:
                    return None
                answer = json.loads(response.read() or b"{}")
                return str(answer.get("url", target.url))
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == UPLOAD_ATTEMPTS:
                raise _refused(exc) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            if attempt == UPLOAD_ATTEMPTS:
                raise CaptureError(FailureReason.INTERNAL, f"upload failed: {exc}") from exc
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _refused(exc: urllib.error.HTTPError) -> CaptureError:
    """The failure of a refused upload: too large (the gateway's 413, S3's EntityTooLarge), or
    the HTTP status and S3's error code; never the request's signed fields."""
    try:
        code = re.search(rb"<Code>(\w{1,64})</Code>", exc.read(4096) or b"")
    except OSError:
        code = None
    if exc.code == 413 or (code is not None and code.group(1) == b"EntityTooLarge"):
        return CaptureError(FailureReason.INTERNAL, TOO_LARGE)
    named = f" {code.group(1).decode()}" if code is not None else ""
    return CaptureError(FailureReason.INTERNAL, f"upload refused: HTTP {exc.code}{named}")


def multipart_form(fields: Mapping[str, str], data: bytes) -> tuple[bytes, str]:
    """multipart/form-data as S3's POST Object takes it: the policy's fields, then the file,
    LAST (S3 ignores what follows it); the body and its Content-Type. Hand-written: the stdlib
    has no multipart encoder (email.mime adds MIME headers and line-ending rewrites S3 does not
    want), and the capture image adds no HTTP library for these few lines."""
    boundary = secrets.token_hex(16)
    while boundary.encode() in data:  # a boundary must not occur in the file
        boundary = secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    head = "".join(parts) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="artifact"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n"
    return head.encode() + data + tail.encode(), f"multipart/form-data; boundary={boundary}"


async def main(driver: Awaitable[Playwright]) -> int:
    """Read the request, capture, deliver the artifact, report; the exit code. `driver`:
    Playwright's, starting meanwhile (__main__), and stopped before this returns."""
    # JSON lines with the job's request id, job, policy and trace id (set by the operator).
    logs.setup(logs.log_format(None, "json"), static=logs.context_from_env())
    request = await asyncio.to_thread(_read_request)
    playwright = await driver
    try:
        if isinstance(request, CaptureOutcome):  # unreadable: nothing to capture
            outcome = request
        else:
            async with CaptureEngine(spare_contexts=0, playwright=playwright) as engine:
                captured, data = await run(request, engine)
            outcome = await asyncio.to_thread(_deliver, request, captured, data)
    finally:
        await playwright.stop()
    return await asyncio.to_thread(_report, outcome)


def _read_request() -> CaptureRequest | CaptureOutcome:
    """The request, or the failure to report when it cannot be read."""
    try:
        raw = Path(os.environ.get("KUBESHOT_REQUEST", "/var/run/kubeshot/request.json")).read_text()
        return CaptureRequest.model_validate_json(raw)
    except (OSError, ValidationError) as exc:
        message = f"request unreadable: {exc}".splitlines()[0]
        return CaptureOutcome.failed(CaptureError(FailureReason.INVALID_SPEC, message))


def _deliver(request: CaptureRequest, outcome: CaptureOutcome, data: bytes) -> CaptureOutcome:
    """Upload the artifact (else write it to KUBESHOT_OUTPUT); the outcome to report."""
    try:
        report = outcome.report()
        if request.upload is None:
            Path(os.environ.get("KUBESHOT_OUTPUT", "artifact")).write_bytes(data)
            return outcome
        url = upload(request.upload, data, report)
        if request.deliver is not None:  # the caller's bucket (delivery.s3), after the store's
            try:
                upload(request.deliver, data, report)
            except CaptureError as exc:
                message = f"delivery to the caller's bucket: {exc.message}"
                raise CaptureError(exc.reason, message) from exc
        return CaptureOutcome(result=report.model_copy(update={"url": url}))
    except CaptureError as exc:
        # Whoever may read the CaptureJob (or the pod's log) learns the failure, not what our
        # resolver answered for a name: addresses the request did not name are redacted.
        message = redact_addresses(exc.message, request.options.url or "")
        return CaptureOutcome.failed(CaptureError(exc.reason, message))


def _report(outcome: CaptureOutcome) -> int:
    """Write the termination log; the exit code."""
    termination = Path(os.environ.get("KUBESHOT_TERMINATION_LOG", "/dev/termination-log"))
    termination.write_text(termination_message(outcome), encoding="utf-8")
    try:
        report = outcome.report()
    except CaptureError as exc:
        print(exc, file=sys.stderr)
        return exc.reason.exit_code
    log.info("captured %s: %d bytes sha256=%s", report.format, report.bytes, report.sha256)
    return ExitCode.OK

"""The capture pod's entrypoint: read the request, capture, upload, report, exit.

Inputs come from the environment the operator sets:
  KUBESHOT_REQUEST           JSON CaptureRequest (mounted from the job's Secret)
  KUBESHOT_TERMINATION_LOG   where the outcome goes (default /dev/termination-log)
  KUBESHOT_OUTPUT            artifact path when the request has no upload target
  KUBESHOT_OUTCOME_URL       where the outcome is POSTed as soon as it is known (with the
                             request's reportToken), ahead of the kubelet's report
The termination log holds the CaptureOutcome as JSON of at most 4 KiB (UTF-8):
  {"result": {...CaptureReport...}} or {"failure": {"reason": ..., "message": ...}}
The operator copies the result, the whole report, into the CaptureJob's `status.result` and
records its timings' phases as this pod's spans (the pod itself exports nothing: its
NetworkPolicy lets it reach no collector).

A warm pod (KUBESHOT_ASSIGNMENT_URL set instead of KUBESHOT_REQUEST) starts Chromium first, then
asks the operator for its job: GET <KUBESHOT_ASSIGNMENT_URL> with the pod's key (the file
KUBESHOT_POD_KEY) as a Bearer token; 200 is the request, 204 "not yet" (asked again at once),
401/403/404 a refusal (exit Internal), anything else is retried after a short backoff. With no job
after KUBESHOT_WARM_IDLE_SECONDS it exits 0, reporting nothing. It captures and delivers as a
cold pod does, POSTs the termination message to <KUBESHOT_ASSIGNMENT_URL>/outcome, and still
writes the termination log (the operator's fallback).

`python -m kubeshot_capture` (__main__) starts Playwright's driver before it imports this module,
and hands it to `main`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
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
POLL_TIMEOUT = 40.0  # the operator holds a poll up to 25 s
BACKOFF = (0.2, 1.0)  # the first and the longest wait before asking again after an error
REFUSED = {401, 403, 404}


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
    if assignment := os.environ.get("KUBESHOT_ASSIGNMENT_URL"):
        return await _warm(driver, assignment)
    path = Path(os.environ.get("KUBESHOT_REQUEST", "/var/run/kubeshot/request.json"))
    request = await asyncio.to_thread(_read_request, path.read_text)
    playwright = await driver
    try:
        if isinstance(request, CaptureOutcome):  # unreadable: nothing to capture
            outcome = request
        else:
            async with CaptureEngine(spare_contexts=0, playwright=playwright) as engine:
                captured, data = await run(request, engine)
                outcome = await asyncio.to_thread(_deliver, request, captured, data)
                # Told now, while Chromium closes: the kubelet reports the pod's end only at its
                # next relist (up to a second later).
                url = os.environ.get("KUBESHOT_OUTCOME_URL")
                if url and request.report_token:
                    message = termination_message(outcome)
                    # Once, briefly: it only saves time; the kubelet reports the end anyway.
                    await asyncio.to_thread(
                        _post_outcome, url, request.report_token, message, tries=1, timeout=1.0
                    )
    finally:
        await playwright.stop()
    return await asyncio.to_thread(_report, outcome)


async def _warm(driver: Awaitable[Playwright], url: str) -> int:
    """A warm pod's life (see above): Chromium, with a context waiting, before the first poll."""
    idle = float(os.environ.get("KUBESHOT_WARM_IDLE_SECONDS", "600"))
    playwright = await driver
    try:
        key = await asyncio.to_thread(_pod_key)
        engine = CaptureEngine(spare_contexts=1, playwright=playwright, replace_spares=False)
        async with engine:
            await engine.spares_opened()
            log.info("Chromium started; asking for a job at %s", url)
            assigned = await _assignment(url, key, idle)
            if assigned is None:
                log.info("no job in %g s: exiting", idle)
                return ExitCode.OK
            body, context = assigned
            logs.bind(**context)  # the job's fields on every line from here on
            log.info("assigned a job")
            request = _read_request(lambda: body)
            if isinstance(request, CaptureOutcome):  # unreadable: nothing to capture
                outcome = request
            else:
                captured, data = await run(request, engine)
                outcome = await asyncio.to_thread(_deliver, request, captured, data)
            message = termination_message(outcome)
            await asyncio.to_thread(_post_outcome, f"{url}/outcome", key, message)
    except CaptureError as exc:  # no key, or the operator refused this pod: no job ran
        return await asyncio.to_thread(_report, CaptureOutcome.failed(exc))
    finally:
        await playwright.stop()
    return await asyncio.to_thread(_report, outcome)


def _pod_key() -> str:
    try:
        return Path(os.environ.get("KUBESHOT_POD_KEY", "/var/run/kubeshot/key")).read_text().strip()
    except OSError as exc:
        raise CaptureError(FailureReason.INTERNAL, f"pod key unreadable: {exc}") from exc


async def _assignment(url: str, key: str, idle: float) -> tuple[bytes, dict[str, str]] | None:
    """The request's JSON the operator assigns to this pod and the job's log fields, or None
    when none came within `idle` seconds. No poll starts after that, but one under way is
    awaited: the operator may have given it this pod's job."""
    deadline = time.monotonic() + idle
    delay = BACKOFF[0]
    while time.monotonic() < deadline:
        # In a thread: the event loop keeps serving Playwright's driver meanwhile.
        status, body, context = await asyncio.to_thread(_poll, url, key)
        if status == 200:
            return body, context
        if status in REFUSED:
            raise CaptureError(FailureReason.INTERNAL, f"assignment refused: HTTP {status}")
        if status == 204:
            delay = BACKOFF[0]
            continue
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF[1])
    return None


def _poll(url: str, key: str) -> tuple[int, bytes, dict[str, str]]:
    """One GET of the assignment: its status, body and log fields; 0 when it got no answer."""
    request = urllib.request.Request(  # noqa: S310 - the operator's URL (^https?://)
        url, headers={"Authorization": f"Bearer {key}"}
    )
    try:
        with _OPENER.open(request, timeout=POLL_TIMEOUT) as response:
            context = logs.parse_context(response.headers.get(logs.CONTEXT_HEADER, ""))
            return int(response.status), response.read(), context
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code not in REFUSED:
            log.warning("asking for a job: HTTP %d", exc.code)
        return exc.code, b"", {}
    except (OSError, http.client.HTTPException) as exc:
        log.warning("asking for a job: %s", exc)
        return 0, b"", {}


def _post_outcome(url: str, key: str, message: str, tries: int = 2, timeout: float = 5.0) -> None:
    """Tell the operator how the job ended (`tries` at most); the termination log follows."""
    request = urllib.request.Request(  # noqa: S310 - the operator's URL (^https?://)
        url,
        data=message.encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    for attempt in range(1, tries + 1):
        try:
            with _OPENER.open(request, timeout=timeout):
                return
        except (OSError, http.client.HTTPException) as exc:
            log.warning("reporting the outcome (try %d of %d): %s", attempt, tries, exc)


def _read_request(read: Callable[[], str | bytes]) -> CaptureRequest | CaptureOutcome:
    """The request `read` returns (the mounted file's, or the warm pod's assignment), or the
    failure to report when it cannot be read."""
    try:
        return CaptureRequest.model_validate_json(read())
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

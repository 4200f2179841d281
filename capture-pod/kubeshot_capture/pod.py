"""The capture pod's entrypoint: read the request, capture, upload, report, exit.

Inputs come from the environment the operator sets:
  KUBESHOT_REQUEST           JSON CaptureRequest (mounted from the job's Secret)
  KUBESHOT_TERMINATION_LOG   where the result summary goes (default /dev/termination-log)
  KUBESHOT_OUTPUT            artifact path when the request has no upload target
The summary written to the termination log is at most 4 KiB of JSON (UTF-8):
  {"result": {...ResultSummary...}} or {"failure": {"reason": ..., "message": ...}}
A result carries the target's final URL, HTTP status and page title beside the artifact's
identity; the operator copies it into the CaptureJob's `status.result`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import ValidationError

from kubeshot import logs
from kubeshot.api import (
    CaptureError,
    CaptureReport,
    CaptureRequest,
    ExitCode,
    FailureReason,
    UploadTarget,
)
from kubeshot.api.reasons import redact_addresses

log = logging.getLogger("kubeshot_capture.pod")
MAX_TERMINATION_MESSAGE = 4096
UPLOAD_ATTEMPTS = 3


def write_summary(path: Path, summary: dict[str, object]) -> None:
    path.write_text(termination_message(summary), encoding="utf-8")


def termination_message(summary: dict[str, object]) -> str:
    """The summary as JSON of at most MAX_TERMINATION_MESSAGE bytes: the kubelet cuts a longer
    message, which would then not parse. What may be long gives way, never what identifies the
    artifact: a failure's message; a result's page title, then its final URL. The phases'
    timings (for traces) give way first."""
    text = _json(summary)
    if "phases" in summary and not _fits(text):
        summary = {k: v for k, v in summary.items() if k != "phases"}
        text = _json(summary)
    if "failure" in summary and not _fits(text):
        failure = dict(summary["failure"])  # type: ignore[call-overload]
        failure["message"] = str(failure.get("message", ""))[:1000]
        text = _json({"failure": failure})
    if "result" in summary and not _fits(text):
        result = dict(summary["result"])  # type: ignore[call-overload]
        title = str(result.pop("title", None) or "")
        # Every character cut saves at least a byte: one cut by the excess is enough.
        title = title[: max(0, len(title) - (len(text.encode()) - MAX_TERMINATION_MESSAGE))]
        if title.strip():
            result["title"] = title.rstrip()
        text = _json({"result": result})
        if not _fits(text):
            result.pop("finalUrl", None)
            text = _json({"result": result})
    return text


def _json(document: dict[str, object]) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _fits(text: str) -> bool:
    return len(text.encode()) <= MAX_TERMINATION_MESSAGE


def upload(target: UploadTarget, data: bytes, report: CaptureReport) -> str:
    """PUT the artifact to the gateway; returns the download URL it answers with."""
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked by UploadTarget
        target.url,
        data=data,
        method="PUT",
        headers={
            "Authorization": f"Bearer {target.token}",
            "Content-Type": report.content_type,
            "X-Kubeshot-Sha256": report.sha256,
        },
    )
    delay = 0.5
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                body = json.loads(response.read() or b"{}")
                return str(body.get("url", target.url))
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == UPLOAD_ATTEMPTS:
                raise CaptureError(
                    FailureReason.INTERNAL, f"upload refused: HTTP {exc.code}"
                ) from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            if attempt == UPLOAD_ATTEMPTS:
                raise CaptureError(FailureReason.INTERNAL, f"upload failed: {exc}") from exc
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


async def run(request: CaptureRequest) -> tuple[bytes, CaptureReport]:
    from kubeshot_capture.engine import CaptureEngine

    async with CaptureEngine(spare_contexts=0) as engine:
        artifact = await engine.capture(request.options, request.policy, request.proxy)
    return artifact.data, artifact.report


def main() -> int:
    # JSON lines with the job's request id, job, policy and trace id (set by the operator).
    logs.setup(logs.log_format(None, "json"), static=logs.context_from_env())
    termination = Path(os.environ.get("KUBESHOT_TERMINATION_LOG", "/dev/termination-log"))
    try:
        raw = Path(os.environ.get("KUBESHOT_REQUEST", "/var/run/kubeshot/request.json")).read_text()
        request = CaptureRequest.model_validate_json(raw)
    except (OSError, ValidationError) as exc:
        message = f"request unreadable: {exc}".splitlines()[0]
        write_summary(termination, {"failure": {"reason": "InvalidSpec", "message": message}})
        print(message, file=sys.stderr)
        return ExitCode.INVALID_INPUT
    try:
        data, report = asyncio.run(run(request))
        summary = report.summary()
        if request.upload is not None:
            summary = summary.model_copy(update={"url": upload(request.upload, data, report)})
        else:
            Path(os.environ.get("KUBESHOT_OUTPUT", "artifact")).write_bytes(data)
    except CaptureError as exc:
        # Whoever may read the CaptureJob (or the pod's log) learns the failure, not what our
        # resolver answered for a name: addresses the request did not name are redacted.
        message = redact_addresses(exc.message, request.options.url or "")
        write_summary(
            termination, {"failure": {"reason": exc.reason.value, "message": message[:1000]}}
        )
        print(f"{exc.reason.value}: {message}", file=sys.stderr)
        return exc.reason.exit_code
    # When each phase ran: the operator records them as this pod's spans in the job's trace
    # (the pod itself exports nothing: its NetworkPolicy lets it reach no collector).
    phases = [phase.to_wire() for phase in report.timings.phases]
    write_summary(termination, {"result": summary.to_wire(), "phases": phases})
    log.info("captured %s: %d bytes sha256=%s", report.format, report.bytes, report.sha256)
    return ExitCode.OK

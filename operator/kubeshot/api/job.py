"""CaptureJob, the request a capture runs on and how it ended: one wire format of each."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from kubeshot.api._base import Model
from kubeshot.api.capture import MAX_URL_LENGTH, CaptureOptions
from kubeshot.api.delivery import DeliveryStatus, JobDelivery
from kubeshot.api.names import ObjectName
from kubeshot.api.policy import Condition, ProxyCredentials, ScreenshotPolicySpec
from kubeshot.api.reasons import CaptureError, FailureReason


class CaptureJobSpec(CaptureOptions):
    """A capture to run in a short-lived, locked-down pod under a ScreenshotPolicy."""

    policy_ref: ObjectName | None = None
    """Name of the ScreenshotPolicy in this namespace; `default` when unset."""
    retries: int = Field(default=2, ge=0, le=10)
    """Further attempts after a retriable failure (pod lost, internal error)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job this long after it finished; the policy's TTL when unset."""
    delivery: JobDelivery | None = None
    """Announce the outcome: a webhook signed with a Secret of this namespace, sent by the
    operator when the job finished (at least once), under the job's ScreenshotPolicy; how it
    went is `status.delivery`."""


class Phase(StrEnum):
    """Where a CaptureJob is in its life."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        return self in {Phase.SUCCEEDED, Phase.FAILED}


MAX_TITLE_LENGTH = 512
# Control characters (C0, DEL, C1), line and paragraph separators, and the bidirectional
# embedding, override and isolate controls: a title is the page's text, shown in headers, logs
# and terminals, where these would break lines or reorder what a reader sees.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def page_title(text: object) -> str | None:
    """A page title as results carry it: unshowable characters removed, whitespace collapsed,
    at most MAX_TITLE_LENGTH characters; None when nothing is left.

    The title is written by the (hostile) page, and the capture pod that reports it runs that
    page: whoever reads a title from a report applies this again (the model does)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("a title is a string")
    cleaned = " ".join(_UNSHOWABLE.sub(" ", text[: MAX_TITLE_LENGTH * 8]).split())
    return cleaned[:MAX_TITLE_LENGTH].rstrip() or None


PageTitle = Annotated[str | None, BeforeValidator(page_title)]


def artifact_path(job_id: str) -> str:
    """Where the gateway serves a finished job's artifact (its HTTP API path)."""
    return f"/v1/captures/{job_id}/artifact"


class ResultSummary(Model):
    """The verified artifact of a capture, and what the target answered."""

    content_type: str
    """MIME type of the artifact."""
    bytes: int = Field(ge=0)
    """Size of the artifact in bytes."""
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    """SHA-256 of the artifact."""
    width: int | None = None
    """Image width in pixels (images), or first page width in points (pdf)."""
    height: int | None = None
    """Image height in pixels (images), or first page height in points (pdf)."""
    url: str | None = None
    """Where to download the artifact."""
    final_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    """The target's URL after redirects (url input only)."""
    http_status: int | None = Field(default=None, ge=100, le=999)
    """HTTP status of the target's final response, after redirects (url input only)."""
    title: PageTitle = Field(default=None, max_length=MAX_TITLE_LENGTH)
    """The page's title: at most 512 characters, control characters removed."""
    partial: bool | None = None
    """True when the capture timed out and `bestAttempt` captured what the page had rendered by
    then; absent for a complete capture."""


class Failure(Model):
    """Why a capture failed."""

    reason: FailureReason
    """One of the closed set of failure reasons."""
    message: str = Field(max_length=1024)
    """What happened, in words a user understands."""


class CapturePhase(StrEnum):
    """The phases of a capture, as traces show them."""

    SETUP = "setup"
    NAVIGATE = "navigate"
    WAIT = "wait"
    RENDER = "render"
    VERIFY = "verify"


# 2200-01-01 in Unix nanoseconds: no phase of a capture ends later.
MAX_UNIX_NANO = 7_258_118_400 * 10**9


class PhaseTiming(Model):
    """When one phase of a capture started and ended, by the clock of the process that ran it.

    Reported by capture workers and capture pods (which export no traces themselves); the
    gateway and the operator record them as spans. A pod runs hostile pages: its report is
    bounded like any input."""

    name: CapturePhase
    """The phase."""
    start_unix_nano: int = Field(ge=0, le=MAX_UNIX_NANO)
    """Start, in nanoseconds since the Unix epoch."""
    end_unix_nano: int = Field(ge=0, le=MAX_UNIX_NANO)
    """End, in nanoseconds since the Unix epoch (not before the start)."""

    @model_validator(mode="after")
    def _ordered(self) -> PhaseTiming:
        if self.end_unix_nano < self.start_unix_nano:
            raise ValueError("a phase ends before it starts")
        return self


# Bounds of a report's numbers: a capture pod runs hostile pages and its report becomes a
# CaptureJob's status, whose integers are int64 and whose JSON has no NaN or infinity (one the
# API server refused would leave the job without its outcome).
MAX_COUNT = 2**53
MAX_MS = 10.0**9


class Timings(Model):
    """Where a capture's time went, in milliseconds."""

    total_ms: float = Field(default=0, ge=0, le=MAX_MS, allow_inf_nan=False)
    """The whole capture."""
    setup_ms: float = Field(default=0, ge=0, le=MAX_MS, allow_inf_nan=False)
    """Browser context and page preparation."""
    navigation_ms: float = Field(default=0, ge=0, le=MAX_MS, allow_inf_nan=False)
    """Navigation and waits."""
    render_ms: float = Field(default=0, ge=0, le=MAX_MS, allow_inf_nan=False)
    """Rendering, encoding and verification of the artifact."""
    phases: list[PhaseTiming] = Field(default_factory=list, max_length=len(CapturePhase))
    """Start and end of each phase that ran, in order (traces are made of them)."""

    @field_validator("phases", mode="wrap")
    @classmethod
    def _only_a_captures(cls, value: object, handler: Callable[[object], Any]) -> list[PhaseTiming]:
        """Phases only feed a trace: from a pod that runs hostile pages, they are dropped whole
        when anything is off (too many, unknown, out of order), never the report with them."""
        try:
            phases: list[PhaseTiming] = handler(value)
        except ValidationError:
            return []
        if any(b.start_unix_nano < a.end_unix_nano for a, b in pairwise(phases)):
            return []
        return phases


class CaptureReport(ResultSummary):
    """What the engine reports of a successful capture (`kubeshot capture --json`)."""

    format: str | None = None
    """Output format (a report read back from a CaptureJob's status may lack it)."""
    pages: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    """Number of pages (pdf)."""
    blocked_requests: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Requests the egress guard or blockAds refused."""
    bytes_transferred: int = Field(default=0, ge=0, le=MAX_COUNT)
    """Bytes the page fetched through the egress guard."""
    timings: Timings = Field(default_factory=Timings)
    """Timings."""

    def summary(self) -> ResultSummary:
        return ResultSummary.model_validate(
            self.model_dump(include=set(ResultSummary.model_fields))
        )


class CaptureJobStatus(Model):
    """What the operator observed of a CaptureJob."""

    phase: Phase = Phase.PENDING
    """Pending, Queued, Running, Succeeded or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Conditions."""
    observed_generation: int | None = None
    """The generation last reconciled."""
    pod_name: ObjectName | None = None
    """The capture pod of the current attempt."""
    attempts: int = 0
    """Attempts started."""
    start_time: str | None = None
    """When the first attempt started (RFC 3339)."""
    completion_time: str | None = None
    """When the job finished (RFC 3339)."""
    result: CaptureReport | None = None
    """The capture pod's report of the artifact, when Succeeded: the same report a local
    capture gives (`kubeshot capture --json`), timings and blocked requests included."""
    failure: Failure | None = None
    """Why it failed, when Failed."""
    next_attempt_time: str | None = None
    """When a job waiting to retry may start its next attempt (RFC 3339): kept here, not in the
    operator's memory, so that an operator taking over waits as long as the one that decided."""
    upload_token_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    """SHA-256 of this job's upload token: the gateway accepts the artifact of this job only
    from a bearer of that token. Status is written by the operator alone."""
    delivery: DeliveryStatus | None = None
    """How the outcome was announced (`spec.delivery`): a refused or failed webhook says why."""


class UploadTarget(Model):
    """Where a capture pod sends its artifact: the gateway's upload endpoint (`token`: a PUT
    with that bearer token), or the S3 result store's bucket (`fields`: a presigned POST)."""

    url: str = Field(pattern=r"^https?://")
    """The gateway's upload URL of this job, or the bucket's POST URL."""
    token: str | None = Field(default=None, min_length=16)
    """Bearer token valid for this job's upload only."""
    fields: dict[str, str] | None = None
    """The POST policy's form fields, signed for this job's object and a bounded size; sent
    before the file. They hold a signature: the job's Secret is their one place."""

    @model_validator(mode="after")
    def _one_way(self) -> UploadTarget:
        if (self.token is None) == (self.fields is None):
            raise ValueError("an upload target has a token or form fields")
        return self


class CaptureRequest(Model):
    """What a capture pod reads from its Secret: the options and the effective policy."""

    options: CaptureOptions
    """The capture."""
    policy: ScreenshotPolicySpec = Field(default_factory=ScreenshotPolicySpec)
    """The effective ScreenshotPolicy."""
    proxy: ProxyCredentials | None = None
    """Resolved upstream proxy and credentials."""
    upload: UploadTarget | None = None
    """Where to upload the artifact; the artifact is written to a file when unset."""
    report_token: str | None = Field(default=None, min_length=16)
    """The job's token (its status names its hash): with it the pod reports its outcome to the
    operator (KUBESHOT_OUTCOME_URL) the moment it knows it, before the kubelet would."""
    deliver: UploadTarget | None = None
    """The caller's bucket (`delivery.s3`): a form signed for one key, posted after `upload`."""

    def to_json(self) -> str:
        """The request as capture pods and workers read it: the one place the proxy password
        is revealed (this text goes into a job's Secret or a worker's pipe, nowhere else)."""
        document, proxy = self.to_wire(), self.proxy
        if proxy is not None and proxy.password is not None:
            document["proxy"] = {**proxy.to_wire(), "password": proxy.password.get_secret_value()}
        return json.dumps(document, separators=(",", ":"), sort_keys=True)


class CaptureOutcome(Model):
    """How one capture ended: the engine's report of its artifact, or why it failed.

    Its wire form (`to_wire`, `model_validate`) is the one answer of every runner of a capture:
    a capture worker's to the gateway, a capture pod's termination message to the operator."""

    result: CaptureReport | None = None
    """The verified artifact, when the capture succeeded."""
    failure: Failure | None = None
    """Why it failed, otherwise."""

    @model_validator(mode="after")
    def _one(self) -> CaptureOutcome:
        if (self.result is None) == (self.failure is None):
            raise ValueError("an outcome is a result or a failure")
        return self

    @classmethod
    def failed(cls, exc: CaptureError) -> CaptureOutcome:
        return cls(failure=Failure(reason=exc.reason, message=exc.message[:1024]))

    def report(self) -> CaptureReport:
        """The result; CaptureError with the reason and message of a failure."""
        if self.failure is not None:
            raise CaptureError(self.failure.reason, self.failure.message)
        assert self.result is not None
        return self.result

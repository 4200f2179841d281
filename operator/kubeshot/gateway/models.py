"""The gateway's own response documents (the request documents are kubeshot.api's)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kubeshot.api import Failure, Phase, ResultSummary
from kubeshot.api._base import Model
from kubeshot.api.delivery import DeliveryStatus


class ErrorDetail(Model):
    """What went wrong."""

    code: str
    """Machine-readable: unauthorized, forbidden, rate_limited, invalid_request, payload_too_large,
    blocked_by_policy, resource_limit, timeout, capture_failed, target_http_error, overloaded,
    unavailable, not_found, internal, ..."""
    message: str
    """What happened, for a person."""
    details: Any = None
    """Structured details, e.g. the offending fields of an invalid request."""


class ErrorBody(Model):
    """Every error response."""

    error: ErrorDetail


class CaptureJobView(Model):
    """An asynchronous capture (POST /v1/captures)."""

    id: str = Field(pattern="^[0-9a-f]{32}$")
    """Job id."""
    phase: Phase
    """Queued, Running, Succeeded or Failed."""
    created_at: str
    """When the job was accepted (RFC 3339)."""
    completion_time: str | None = None
    """When it finished (RFC 3339)."""
    policy: str
    """The ScreenshotPolicy it runs under."""
    result: ResultSummary | None = None
    """The artifact, when Succeeded; `url` downloads it."""
    failure: Failure | None = None
    """Why it failed, when Failed."""
    delivery: DeliveryStatus | None = None
    """How its outcome was announced (`delivery.webhook` of the request: Pending until then),
    and where its artifact was put (`delivery.s3`, once Succeeded)."""


class Health(Model):
    """Liveness/readiness."""

    status: str
    """ok, or not_ready."""
    workers: int | None = None
    """Capture workers ready or busy."""
    queue_depth: int | None = None
    """Captures waiting for a worker."""

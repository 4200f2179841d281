"""Where a finished capture is announced: a signed webhook (Standard Webhooks), and how it went.

A caller of the HTTP API gives the webhook's secret in the request (`Delivery`); a CaptureJob
names a Secret of its namespace instead (`JobDelivery`), which the operator reads only when it
opts in with the label `kubeshot.dev/webhook-secret: "true"` (as proxy credentials do): whoever
may write a CaptureJob cannot make the operator sign with any other Secret of the namespace.
"""

from __future__ import annotations

import base64
import re
from enum import StrEnum

from pydantic import Field, SecretStr, field_validator

from kubeshot.api._base import Model
from kubeshot.api.capture import MAX_URL_LENGTH, CaptureOptions, normalise_url
from kubeshot.api.names import DataKey, ObjectName

WEBHOOK_SECRET_LABEL = "kubeshot.dev/webhook-secret"  # noqa: S105 - a label, not a secret
"""The label (value "true") by which a Secret lets the operator sign a CaptureJob's webhooks."""
SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix
# Standard Webhooks: a secret is 24 to 64 random bytes in base64, optionally prefixed "whsec_".
# The pattern says exactly that (3 bytes per 4 characters, the last group padded), so that the
# OpenAPI document states the rule a client must follow.
_B64 = "[A-Za-z0-9+/]"
SECRET_PATTERN = (
    rf"^(whsec_)?((?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    rf"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)


def webhook_key(secret: str) -> bytes:
    """The signing key a Standard Webhooks secret (`whsec_` + base64) stands for; ValueError
    when it is no such secret (not base64 of 24 to 64 bytes)."""
    if re.fullmatch(SECRET_PATTERN, secret) is None:
        raise ValueError("a webhook secret is whsec_ and base64 of 24 to 64 random bytes")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


class _WebhookUrl(Model):
    url: str = Field(max_length=MAX_URL_LENGTH)
    """Where the event is POSTed (http or https). It is reached like a capture's target, under
    the capture's ScreenshotPolicy: a private or metadata address is refused unless the policy
    opens it. Redirects are not followed."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        return normalise_url(url)


class Webhook(_WebhookUrl):
    """A webhook of an HTTP request: its URL and the secret the events are signed with."""

    secret: SecretStr = Field(json_schema_extra={"pattern": SECRET_PATTERN})
    """Standard Webhooks secret: `whsec_` and base64 of 24 to 64 random bytes."""

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: SecretStr) -> SecretStr:
        webhook_key(secret.get_secret_value())
        return secret


class WebhookSecretRef(Model):
    """A Secret in the job's namespace holding the webhook secret.

    The operator reads it only when it carries the label `kubeshot.dev/webhook-secret: "true"`.
    """

    name: ObjectName
    """Name of the Secret; it must be labelled `kubeshot.dev/webhook-secret: "true"`."""
    key: DataKey = "secret"
    """Key of the Standard Webhooks secret (`whsec_...`) in the Secret."""


class JobWebhook(_WebhookUrl):
    """A webhook of a CaptureJob: its URL and the Secret its events are signed with."""

    secret_ref: WebhookSecretRef
    """The Secret with the signing secret (never the secret itself: a spec is readable)."""


class Delivery(Model):
    """How the outcome of an asynchronous capture is announced."""

    webhook: Webhook | None = None
    """A signed event POSTed when the capture finished."""


class JobDelivery(Model):
    """How the outcome of a CaptureJob is announced."""

    webhook: JobWebhook | None = None
    """A signed event POSTed when the job finished."""


class CaptureRequestBody(CaptureOptions):
    """POST /v1/captures: the capture options, and how its outcome is announced."""

    delivery: Delivery | None = None
    """Announce the outcome (a signed webhook) besides keeping it for GET /v1/captures/{id}."""


class DeliveryOutcome(StrEnum):
    """How a webhook delivery ended."""

    PENDING = "Pending"
    """Not finished: the job runs, or the event is being sent (or retried)."""
    DELIVERED = "Delivered"
    """The receiver answered 2xx."""
    REFUSED = "Refused"
    """The policy refuses the URL (a private, metadata or otherwise closed address): never sent."""
    REJECTED = "Rejected"
    """The receiver answered with a status that is not retried (4xx but 408/429, or 3xx)."""
    FAILED = "Failed"
    """Every attempt failed (5xx, 408, 429, timeout, connection error) within the bounds."""


class WebhookStatus(Model):
    """How the webhook of a job went."""

    outcome: DeliveryOutcome
    """Pending, Delivered, Refused, Rejected or Failed."""
    id: str = Field(max_length=64)
    """The event's `webhook-id` (the same on every attempt: receivers deduplicate by it)."""
    attempts: int = Field(default=0, ge=0)
    """Requests made to the receiver."""
    http_status: int | None = Field(default=None, ge=100, le=999)
    """The receiver's last answer."""
    message: str | None = Field(default=None, max_length=1024)
    """Why it was refused or failed."""


class DeliveryStatus(Model):
    """How the outcome of a job was announced."""

    webhook: WebhookStatus | None = None
    """The webhook's delivery, when the job has one."""

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
S3_CREDENTIALS_LABEL = "kubeshot.dev/s3-credentials"
"""The label (value "true") by which a Secret lets the operator sign uploads to a caller's bucket
with its keys (`delivery.s3`)."""
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


class S3CredentialsSecretRef(Model):
    """A Secret in the job's namespace with the keys of the caller's bucket.

    The operator reads it only when it carries the label `kubeshot.dev/s3-credentials: "true"`.
    """

    name: ObjectName
    """Name of the Secret; it must be labelled `kubeshot.dev/s3-credentials: "true"`."""
    access_key_id_key: DataKey = "accessKeyId"
    """Key of the access key id in the Secret."""
    secret_access_key_key: DataKey = "secretAccessKey"  # noqa: S105 - a key's name
    """Key of the secret access key in the Secret."""


_PREFIX_SEGMENT = r"[A-Za-z0-9!_.*'()-]+"


class S3Delivery(Model):
    """The artifact put into the caller's bucket, as `<prefix>/<job id>.<format>`, by the
    capture pod with a form the operator signs for that key alone (size-bounded, short-lived)."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    """The bucket's name."""
    prefix: str = Field(
        default="", max_length=512, pattern=rf"^({_PREFIX_SEGMENT}(/{_PREFIX_SEGMENT})*)?$"
    )
    """Key prefix: segments of letters, digits and `!_.*'()-` joined by `/` (no `.` or `..`
    segment); the object is `<prefix>/<job id>.<format>`."""
    region: str = Field(default="us-east-1", pattern=r"^[a-z0-9-]{1,32}$")
    """The bucket's region."""
    endpoint: str | None = Field(default=None, max_length=256, pattern=r"^https?://[^/?#@]+/?$")
    """An S3-compatible server (scheme, host and port only); AWS S3 when unset. The capture pod
    reaches it under the job's ScreenshotPolicy: a private or metadata address is refused unless
    the policy opens it."""
    credentials_secret_ref: S3CredentialsSecretRef
    """The Secret with the bucket's keys (never the keys themselves)."""

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if any(segment in {".", ".."} for segment in prefix.split("/")):
            raise ValueError("a prefix has no . or .. segment")
        return prefix

    def key(self, job_id: str, extension: str) -> str:
        """The object of this job: `<prefix>/<job id>.<extension>`."""
        name = f"{job_id}.{extension}"
        return f"{self.prefix}/{name}" if self.prefix else name


class Delivery(Model):
    """How the outcome of an asynchronous capture is announced."""

    webhook: Webhook | None = None
    """A signed event POSTed when the capture finished."""
    s3: S3Delivery | None = None
    """The artifact put into the caller's bucket as well (kubernetes backend only: the keys are
    read from a Secret of the caller's namespace)."""


class JobDelivery(Model):
    """How the outcome of a CaptureJob is announced."""

    webhook: JobWebhook | None = None
    """A signed event POSTed when the job finished."""
    s3: S3Delivery | None = None
    """The artifact put into the caller's bucket as well, by the capture pod."""


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
    """Never sent: the policy refuses the URL (a private, metadata or otherwise closed address),
    or a CaptureJob's Secret or policy is missing (the message says which)."""
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


class S3DeliveryStatus(Model):
    """Where the artifact was put in the caller's bucket."""

    bucket: str = Field(max_length=63)
    """The bucket."""
    key: str = Field(max_length=1024)
    """The object's key."""


class DeliveryStatus(Model):
    """How the outcome of a job was announced."""

    webhook: WebhookStatus | None = None
    """The webhook's delivery, when the job has one."""
    s3: S3DeliveryStatus | None = None
    """The object put into the caller's bucket, when the job succeeded with `delivery.s3`."""

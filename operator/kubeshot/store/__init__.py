"""The result store: where an asynchronous capture's artifact waits for its download.

Two implementations of one interface: `FileStore` (a directory, the embedded default) and
`S3Store` (an S3-compatible bucket, for gateways that run as replicas). Both keep one object per
job id, refuse an artifact that does not match its reported sha256, never serve one that no
longer does, and delete what is older than their TTL. Neither imports the gateway or the
operator: the gateway reads and writes artifacts, and the operator may mint upload URLs.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Protocol

from kubeshot.api import CaptureError, FailureReason

_ID = re.compile(r"^[0-9a-f]{32}$")


class ResultStore(Protocol):
    """What the gateway needs of a result store."""

    ttl_seconds: int

    async def open(self) -> None:
        """Ready the store (a directory made, a client connected and its bucket found)."""

    async def close(self) -> None:
        """Release what `open` took (a temporary directory is removed)."""

    async def put(self, job_id: str, data: bytes, sha256: str) -> None:
        """Store an artifact if it matches its reported sha256, else CaptureError."""

    async def get(self, job_id: str, sha256: str) -> bytes | None:
        """The artifact, None when absent; CaptureError when it no longer matches its sha256."""

    async def delete(self, job_id: str) -> None:
        """Delete an artifact (absent is fine)."""

    async def expire(self, now: float | None = None) -> int:
        """Delete the artifacts older than the TTL; how many went."""

    async def download_url(
        self, job_id: str, content_type: str, content_disposition: str | None
    ) -> str | None:
        """A URL the caller downloads the artifact from directly (a presigned GET), or None:
        the gateway serves it."""


def check_id(job_id: str) -> str:
    """The job id, if it is one (32 hex digits): it names a file or an object key."""
    if not _ID.match(job_id):
        raise ValueError("invalid job id")
    return job_id


class Mismatch(CaptureError):
    """An artifact that does not hash to its sha256: refused on the way in, never served."""

    def __init__(self, problem: str) -> None:
        super().__init__(FailureReason.INTERNAL, problem)


def check_sha256(data: bytes, sha256: str, problem: str) -> None:
    """Mismatch(problem) unless `data` hashes to `sha256`."""
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha256):
        raise Mismatch(problem)


MISMATCH = "the artifact does not match the sha256 of its report"
CORRUPTED = "the stored artifact is corrupted"

"""The S3 result store: artifacts as objects of an S3-compatible bucket, through aiobotocore.

One object per job id, `<prefix><job id>`. A put carries the artifact's sha256
(`x-amz-checksum-sha256`), so the server refuses a body that changed on the way; a get checks it
again, so a corrupted object is never served. Expiry is the gateway's sweeper over the listed
objects (`expire`), not a bucket lifecycle rule: lifecycle rules count in whole days, the TTL in
seconds, and not every S3-compatible server runs them. Downloads go through the gateway, or, when
configured, straight from the bucket with a presigned GET. Capture pods upload straight to the
bucket with a presigned POST the operator signs (`UploadSigner`): one key, a size range the server
enforces.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import botocore.session
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kubeshot.api import CaptureError, FailureReason
from kubeshot.store import CORRUPTED, MISMATCH, Mismatch, check_id, check_sha256

log = logging.getLogger("kubeshot.store.s3")
PRESIGNED_SECONDS = 300
"""How long a presigned download URL is valid."""
_MISSING = {"NoSuchKey", "404", "NotFound"}
_KEY = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class S3Config:
    """Where the store's objects live. Without keys, the AWS default chain (environment, web
    identity, instance profile) supplies credentials."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    presigned_downloads: bool = False


@dataclass(frozen=True)
class PresignedUpload:
    """A browser-style form upload: POST `url` as multipart/form-data with `fields`, then the
    artifact as the form's `file`. Valid for one key and a body of at most the given size."""

    url: str
    fields: dict[str, str]


class StoreUnavailable(CaptureError):
    """The bucket could not be reached or refused the request (details in the log only)."""

    def __init__(self) -> None:
        super().__init__(FailureReason.INTERNAL, "the result store is unavailable")


class S3Store:
    """The result store in an S3-compatible bucket (see the module's docstring)."""

    def __init__(self, config: S3Config, ttl_seconds: int) -> None:
        self.config = config
        self.ttl_seconds = ttl_seconds
        self._prefix = key_prefix(config)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    def key(self, job_id: str) -> str:
        return self._prefix + check_id(job_id)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("the result store is not open")
        return self._client

    async def open(self) -> None:
        c = self.config
        config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": _addressing(c)},
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            # The sha256 is sent explicitly; no CRC trailers some S3-compatible servers lack.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=c.endpoint,
                region_name=c.region,
                aws_access_key_id=c.access_key_id,
                aws_secret_access_key=c.secret_access_key,
                config=config,
            )
        )
        try:
            await self._client.head_bucket(Bucket=c.bucket)
        except (BotoCoreError, ClientError) as exc:
            await self.close()
            raise RuntimeError(
                f"the result store's bucket {c.bucket!r} is not usable: {exc}"
            ) from None

    async def close(self) -> None:
        self._client = None
        await self._stack.aclose()

    async def put(self, job_id: str, data: bytes, sha256: str) -> None:
        check_sha256(data, sha256, MISMATCH)
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        try:
            await self.client.put_object(
                Bucket=self.config.bucket, Key=self.key(job_id), Body=data, ChecksumSHA256=checksum
            )
        except ClientError as exc:
            if _code(exc) in {"BadDigest", "XAmzContentSHA256Mismatch"}:
                raise Mismatch(MISMATCH) from None
            raise _unavailable("put", exc) from None
        except BotoCoreError as exc:
            raise _unavailable("put", exc) from None

    async def get(self, job_id: str, sha256: str) -> bytes | None:
        try:
            answer = await self.client.get_object(Bucket=self.config.bucket, Key=self.key(job_id))
            async with answer["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _unavailable("get", exc) from None
        except BotoCoreError as exc:
            raise _unavailable("get", exc) from None
        check_sha256(data, sha256, CORRUPTED)
        return data

    async def delete(self, job_id: str) -> None:
        try:
            await self.client.delete_object(Bucket=self.config.bucket, Key=self.key(job_id))
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("delete", exc) from None

    async def expire(self, now: float | None = None) -> int:
        """Objects under the prefix named like a job id and older than the TTL go; nothing else
        in the bucket is touched."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        bucket = self.config.bucket
        removed = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=self._prefix
            )
            async for page in pages:
                old = [
                    {"Key": o["Key"]}
                    for o in page.get("Contents", [])
                    if _KEY.fullmatch(o["Key"][len(self._prefix) :])
                    and o["LastModified"].timestamp() < cutoff
                ]
                if old:
                    answer = await self.client.delete_objects(
                        Bucket=bucket, Delete={"Objects": old, "Quiet": True}
                    )
                    removed += len(old) - len(answer.get("Errors", []))
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("expire", exc) from None
        return removed

    async def download_url(
        self, job_id: str, content_type: str, content_disposition: str | None
    ) -> str | None:
        """A presigned GET when so configured (the bucket's answer carries the job's content
        type and disposition), else None; None too when the object is gone, so that the caller
        gets the gateway's 404 rather than the bucket's."""
        if not self.config.presigned_downloads:
            return None
        params = {"Bucket": self.config.bucket, "Key": self.key(job_id)}
        try:
            await self.client.head_object(**params)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise _unavailable("head", exc) from None
        except BotoCoreError as exc:
            raise _unavailable("head", exc) from None
        params["ResponseContentType"] = content_type
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        url: str = await self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=PRESIGNED_SECONDS
        )
        return url


class UploadSigner:
    """Signs capture pods' uploads to the bucket: a POST policy per job (`presigned_upload`).

    A presigned PUT cannot bound the body's size (the signature covers no Content-Length a
    client must keep to); a POST policy can: the server refuses a body outside its
    `content-length-range`. Signing is computation alone, so this is plain botocore, with no
    connection (the operator, which signs, never talks to the bucket).
    """

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self._client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            aws_access_key_id=config.access_key_id,
            aws_secret_access_key=config.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": _addressing(config)}),
        )

    def presigned_upload(self, job_id: str, max_bytes: int, expires_in: int) -> PresignedUpload:
        """A POST policy for this job's key only, with a body of 1 to `max_bytes` bytes (the
        server checks `content-length-range`), valid `expires_in` seconds. Blocking only while
        the AWS default chain fetches credentials (call it in a thread)."""
        return self.presigned_post(object_key(self.config, job_id), max_bytes, expires_in)

    def presigned_post(self, key: str, max_bytes: int, expires_in: int) -> PresignedUpload:
        """A POST policy for `key` of the bucket (see presigned_upload)."""
        post = self._client.generate_presigned_post(
            Bucket=self.config.bucket,
            Key=key,
            Conditions=[["content-length-range", 1, max_bytes]],
            ExpiresIn=expires_in,
        )
        return PresignedUpload(url=str(post["url"]), fields=dict(post["fields"]))


def key_prefix(config: S3Config) -> str:
    """What every object key of the store starts with: `<prefix>/`, or nothing."""
    prefix = config.prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def object_key(config: S3Config, job_id: str) -> str:
    """The job's object: `<prefix>/<job id>`."""
    return key_prefix(config) + check_id(job_id)


def _addressing(config: S3Config) -> str:
    # An endpoint of its own (MinIO, versitygw, Ceph...) is addressed by path.
    return "path" if config.endpoint else "auto"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(doing: str, exc: Exception) -> StoreUnavailable:
    """The bucket's own words go to the log (redacted like every record), never to a caller."""
    log.warning("result store %s failed: %s", doing, exc)
    return StoreUnavailable()

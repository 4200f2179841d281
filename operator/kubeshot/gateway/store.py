"""The result store: artifacts on disk, written atomically, checked by sha256, expired by TTL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from kubeshot.api import CaptureError, FailureReason

log = logging.getLogger("kubeshot.gateway.store")
_ID = re.compile(r"^[0-9a-f]{32}$")


class ResultStore:
    """One file per job id under `root`; nothing outside it is ever touched.

    Without a root, `open()` makes a temporary directory and `close()` removes it: the store
    can be handed to a backend before the gateway starts.
    """

    def __init__(self, root: Path | None, ttl_seconds: int) -> None:
        self._root = root
        self._temporary = False
        self.ttl_seconds = ttl_seconds

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the result store is not open")
        return self._root

    def open(self) -> None:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="kubeshot-results-"))
            self._temporary = True
        else:
            self._root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def close(self) -> None:
        if self._temporary and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._temporary = False

    def _path(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise ValueError("invalid job id")
        return self.root / f"{job_id}.bin"

    def put(self, job_id: str, data: bytes, sha256: str) -> None:
        """Store an artifact if it matches its reported sha256 (temp file, fsync, rename)."""
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CaptureError(
                FailureReason.INTERNAL, "the artifact does not match the sha256 of its report"
            )
        target = self._path(job_id)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, job_id: str, sha256: str) -> bytes | None:
        """The artifact, None when absent; CaptureError when it no longer matches its sha256."""
        try:
            data = self._path(job_id).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise CaptureError(FailureReason.INTERNAL, "the stored artifact is corrupted")
        return data

    def delete(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def expire(self, now: float | None = None) -> int:
        """Delete artifacts (and stray temp files) older than the TTL; how many went."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        removed = 0
        for path in self.root.iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


@contextlib.asynccontextmanager
async def expiring(expire: Callable[[], object], ttl_seconds: int) -> AsyncIterator[None]:
    """While the block runs, `expire` is called periodically (expire_periodically)."""
    task = asyncio.create_task(expire_periodically(expire, ttl_seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def expire_periodically(expire: Callable[[], object], ttl_seconds: int) -> None:
    """Call `expire` every quarter of the TTL (1 s to 60 s) until cancelled."""
    interval = max(1.0, min(60.0, ttl_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            expire()
        except OSError:
            log.exception("result store expiry failed")

"""The filesystem result store: artifacts on disk, written atomically, expired by mtime."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from kubeshot.store import CORRUPTED, MISMATCH, check_id, check_sha256


class FileStore:
    """One file per job id under `root`; nothing outside it is ever touched.

    Without a root, `open()` makes a temporary directory and `close()` removes it: the store
    can be handed to a backend before the gateway starts. Disk work runs in a thread.
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

    async def open(self) -> None:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="kubeshot-results-"))
            self._temporary = True
        else:
            self._root.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def close(self) -> None:
        if self._temporary and self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, ignore_errors=True)
            self._root = None
            self._temporary = False

    def _path(self, job_id: str) -> Path:
        return self.root / f"{check_id(job_id)}.bin"

    async def put(self, job_id: str, data: bytes, sha256: str) -> None:
        await asyncio.to_thread(self._put, job_id, data, sha256)

    def _put(self, job_id: str, data: bytes, sha256: str) -> None:
        """Temp file, fsync, rename: a reader sees the whole artifact or none."""
        check_sha256(data, sha256, MISMATCH)
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

    async def get(self, job_id: str, sha256: str) -> bytes | None:
        return await asyncio.to_thread(self._get, job_id, sha256)

    def _get(self, job_id: str, sha256: str) -> bytes | None:
        try:
            data = self._path(job_id).read_bytes()
        except FileNotFoundError:
            return None
        check_sha256(data, sha256, CORRUPTED)
        return data

    async def delete(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    async def expire(self, now: float | None = None) -> int:
        """Artifacts (and stray temp files) older than the TTL go."""
        return await asyncio.to_thread(self._expire, now)

    def _expire(self, now: float | None) -> int:
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        removed = 0
        for path in self.root.iterdir():
            try:
                # Files only: the gateway's job database has a directory of its own here.
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    async def download_url(
        self, job_id: str, content_type: str, content_disposition: str | None
    ) -> None:
        """Files are served by the gateway."""
        return None

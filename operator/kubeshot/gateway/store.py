"""The gateway's result store (kubeshot.store) as its settings name it, and its expiry loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from kubeshot.gateway.redaction import install as redact_logs
from kubeshot.gateway.settings import Settings
from kubeshot.store import ResultStore
from kubeshot.store.files import FileStore

__all__ = ["ResultStore", "expiring", "result_store"]
log = logging.getLogger("kubeshot.gateway.store")


def result_store(settings: Settings) -> ResultStore:
    """KUBESHOT_STORE's store; the S3 credentials files are read here and masked in every log
    line from now on."""
    if settings.store == "filesystem":
        return FileStore(settings.result_dir, settings.result_ttl_seconds)
    from kubeshot.store.s3 import S3Store  # aiobotocore: loaded only when used

    config = settings.s3_config()
    redact_logs(k for k in (config.access_key_id, config.secret_access_key) if k)
    return S3Store(config, settings.result_ttl_seconds)


@contextlib.asynccontextmanager
async def expiring(
    expire: Callable[[], Awaitable[object]], ttl_seconds: int
) -> AsyncIterator[None]:
    """While the block runs, `expire` is awaited every quarter of the TTL (1 s to 60 s); a failed
    round is logged and the next one tried (a bucket may be unreachable for a while)."""

    async def periodically() -> None:
        interval = max(1.0, min(60.0, ttl_seconds / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                await expire()
            except Exception:
                log.exception("result store expiry failed")

    task = asyncio.create_task(periodically())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Asynchronous captures run by the gateway itself, for a backend without jobs of its own.

Accepted with 202, run in the background on the backend's synchronous captures, their artifacts
kept in the result store; job and artifact are forgotten `ttl_seconds` after the job finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    Failure,
    FailureReason,
    Phase,
    ResultSummary,
    ScreenshotPolicy,
)
from kubeshot.api.reasons import redact_addresses
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend
from kubeshot.gateway.errors import ApiError, overloaded
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.store import ResultStore, expiring

log = logging.getLogger("kubeshot.gateway.jobs")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Job:
    id: str
    owner: str
    policy: str
    phase: Phase = Phase.QUEUED
    created_at: str = field(default_factory=_now)
    completion_time: str | None = None
    finished_at: float | None = None
    result: ResultSummary | None = None
    failure: Failure | None = None

    def view(self) -> CaptureJobView:
        return CaptureJobView(
            id=self.id,
            phase=self.phase,
            created_at=self.created_at,
            completion_time=self.completion_time,
            policy=self.policy,
            result=self.result,
            failure=self.failure,
        )


class JobRegistry:
    """The `Jobs` of a backend without its own: jobs by id, visible to their owner (the
    caller's rate key) only, forgotten with their artifact after the TTL."""

    def __init__(
        self, backend: Backend, store: ResultStore, ttl_seconds: int, metrics: Metrics
    ) -> None:
        self.backend = backend
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureJobView:
        if not self.backend.can_accept():
            self.metrics.overloaded.inc()
            raise overloaded("the capture queue is full")
        job = Job(id=uuid.uuid4().hex, owner=caller.rate_key, policy=policy.name)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, caller, policy, options))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job.view()

    def find(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        job = self._jobs.get(job_id)
        return job.view() if job is not None and job.owner == caller.rate_key else None

    async def _run(
        self, job: Job, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> None:
        job.phase = Phase.RUNNING
        try:
            result = await self.backend.capture(caller, policy, options)
            await asyncio.to_thread(self.store.put, job.id, result.data, result.report.sha256)
            summary = result.report.summary().model_dump()
            summary["url"] = f"/v1/captures/{job.id}/artifact"
            job.result = ResultSummary.model_validate(summary)
            job.phase = Phase.SUCCEEDED
        except CaptureError as exc:
            message = redact_addresses(exc.message, options.url or "")
            job.failure = Failure(reason=exc.reason, message=message[:1024])
            job.phase = Phase.FAILED
        except ApiError as exc:
            job.failure = Failure(reason=FailureReason.POD_LOST, message=exc.message[:1024])
            job.phase = Phase.FAILED
        except asyncio.CancelledError:
            job.failure = Failure(
                reason=FailureReason.POD_LOST, message="the gateway shut down during the capture"
            )
            job.phase = Phase.FAILED
            raise
        except Exception:
            log.exception("async capture %s failed", job.id)
            job.failure = Failure(reason=FailureReason.INTERNAL, message="internal error")
            job.phase = Phase.FAILED
        finally:
            job.completion_time = _now()
            job.finished_at = time.time()

    def expire(self, now: float | None = None) -> int:
        """Forget the jobs finished longer than the TTL ago, and delete their artifacts."""
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        gone = [j for j in self._jobs.values() if j.finished_at and j.finished_at < cutoff]
        for job in gone:
            del self._jobs[job.id]
            self.store.delete(job.id)
        return len(gone)

    async def running(self, grace: float) -> AsyncIterator[None]:
        """The registry's lifetime (an aiohttp cleanup context): expiry while the gateway runs;
        at the end, running jobs get `grace` seconds before they are failed."""
        try:
            async with expiring(self.expire, self.ttl_seconds):
                yield
        finally:
            await self.close(grace)

    async def close(self, grace: float) -> None:
        """Let running jobs finish for `grace` seconds, then fail them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)

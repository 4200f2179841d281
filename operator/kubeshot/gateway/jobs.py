"""Asynchronous captures: accepted with 202, run in the background, their artifacts stored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    Failure,
    FailureReason,
    Phase,
    ProxyCredentials,
    ResultSummary,
    ScreenshotPolicySpec,
)
from kubeshot.gateway.backend import Backend
from kubeshot.gateway.errors import ApiError, redact_addresses
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.store import ResultStore

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
    """Jobs by id, visible to their owner only, forgotten (with their artifact) after the TTL."""

    def __init__(self, backend: Backend, store: ResultStore, ttl_seconds: int) -> None:
        self.backend = backend
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(
        self,
        owner: str,
        policy_name: str,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        proxy: ProxyCredentials | None,
    ) -> Job:
        job = Job(id=uuid.uuid4().hex, owner=owner, policy=policy_name)
        self._jobs[job.id] = job
        task = asyncio.create_task(self._run(job, options, policy, proxy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, owner: str, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def _run(
        self,
        job: Job,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        proxy: ProxyCredentials | None,
    ) -> None:
        job.phase = Phase.RUNNING
        try:
            result = await self.backend.capture(options, policy, proxy)
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
        cutoff = (time.time() if now is None else now) - self.ttl_seconds
        gone = [j for j in self._jobs.values() if j.finished_at and j.finished_at < cutoff]
        for job in gone:
            del self._jobs[job.id]
            self.store.delete(job.id)
        self.store.expire(now)
        return len(gone)

    async def close(self, grace: float) -> None:
        """Let running jobs finish for `grace` seconds, then fail them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)

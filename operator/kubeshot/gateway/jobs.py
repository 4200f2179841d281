"""Asynchronous captures run by the gateway itself, for a backend without jobs of its own.

Accepted with 202, kept in a job store (jobstore.py: SQLite, or Redis shared by replicas), run in
the background on the backend's synchronous captures, their artifacts kept in the result store;
job and artifact are deleted `ttl_seconds` after the job finished. A job whose gateway was killed
is taken over once its lease runs out: run again when its deadline still allows, else failed
(PodLost) — never forgotten.

A job's webhook (`delivery.webhook`) is kept with it and sent by the gateway that finished it
(kubeshot.webhooks: signed, through the egress guard's checks under the job's policy, retried);
the job keeps its lease until how it went is saved, so that a delivery cut short (its gateway
killed or stopped) is sent again, with the same `webhook-id`, by the gateway that takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    Failure,
    FailureReason,
    Phase,
    ResultSummary,
    ScreenshotPolicy,
    artifact_path,
)
from kubeshot.api.delivery import (
    DeliveryOutcome,
    DeliveryStatus,
    S3Delivery,
    Webhook,
    WebhookStatus,
)
from kubeshot.api.reasons import redact_addresses
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend
from kubeshot.gateway.errors import ApiError, invalid, overloaded
from kubeshot.gateway.jobstore import LEASE_SECONDS, Job, JobStore
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.store import ResultStore
from kubeshot.webhooks import WebhookSender, capture_event, message_id

log = logging.getLogger("kubeshot.gateway.jobs")
_ID = re.compile(r"^[0-9a-f]{32}$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class JobRegistry:
    """The `Jobs` of a backend without its own: jobs by id, visible to their owner (the
    caller's rate key) only, deleted with their artifact after the TTL."""

    def __init__(
        self,
        backend: Backend,
        store: ResultStore,
        jobs: JobStore,
        ttl_seconds: int,
        metrics: Metrics,
        start_within: float = 30.0,
        sender: WebhookSender | None = None,
    ) -> None:
        self.backend = backend
        self.store = store
        self.jobs = jobs
        self.ttl_seconds = ttl_seconds
        self.metrics = metrics
        self.start_within = start_within
        """Seconds a job may wait to start beyond its capture's time limit (the queue's)."""
        self.sender = sender or WebhookSender()
        self.on_finish: list[Callable[[str], Awaitable[None]]] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(
        self,
        caller: Identity,
        policy: ScreenshotPolicy,
        options: CaptureOptions,
        webhook: Webhook | None = None,
        s3: S3Delivery | None = None,
    ) -> CaptureJobView:
        if s3 is not None:  # refused, never accepted and ignored
            raise invalid(
                "delivery.s3 needs the kubernetes backend: its credentials are read from a Secret"
            )
        if not self.backend.can_accept():
            self.metrics.overloaded.inc()
            raise overloaded("the capture queue is full")
        timeout = options.timeout_seconds or policy.spec.limits.timeout_seconds
        job_id = uuid.uuid4().hex
        pending = WebhookStatus(outcome=DeliveryOutcome.PENDING, id=message_id(job_id))
        view = CaptureJobView(
            id=job_id,
            phase=Phase.QUEUED,
            created_at=_now(),
            policy=policy.name,
            delivery=DeliveryStatus(webhook=pending) if webhook else None,
        )
        job = Job(
            view=view,
            caller=caller,
            options=options,
            webhook=webhook,
            deadline=time.time() + self.start_within + timeout,
        )
        await self.jobs.save(job)
        self._start(job, policy)
        return view

    async def find(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        job = await self.jobs.load(job_id) if _ID.match(job_id) else None
        return job.view if job is not None and job.caller.rate_key == caller.rate_key else None

    def _start(self, job: Job, policy: ScreenshotPolicy | None) -> None:
        self._background(job.view.id, self._run(job, policy))

    def _background(self, job_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` for a job (its lease renewed meanwhile by `maintain`)."""
        task = asyncio.create_task(work)
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def _run(self, job: Job, policy: ScreenshotPolicy | None) -> None:
        """Run the job (`policy` None: one taken over, whose policy is looked up again), save
        how it ended, announce it; a job cancelled by shutdown is failed, never left unfinished
        (and its webhook left to the gateway that takes it over)."""
        view, options = job.view, job.options
        try:
            await self._save(job, view.model_copy(update={"phase": Phase.RUNNING}))
            if policy is None:
                policy = await self.backend.policy(job.caller, view.policy)
            result = await self.backend.capture(job.caller, policy, options)
            await self.store.put(view.id, result.data, result.report.sha256)
            summary = result.report.summary().model_dump()
            summary["url"] = artifact_path(view.id)
            outcome: ResultSummary | Failure = ResultSummary.model_validate(summary)
        except CaptureError as exc:
            message = redact_addresses(exc.message, options.url or "")
            outcome = Failure(reason=exc.reason, message=message[:1024])
        except ApiError as exc:
            outcome = Failure(reason=FailureReason.POD_LOST, message=exc.message[:1024])
        except asyncio.CancelledError:
            message = "the gateway shut down during the capture"
            await self._finish(job, Failure(reason=FailureReason.POD_LOST, message=message))
            raise
        except Exception:
            log.exception("async capture %s failed", view.id)
            outcome = Failure(reason=FailureReason.INTERNAL, message="internal error")
        job = await self._finish(job, outcome)
        if job.owes_webhook:
            await self._announce(job, policy)

    async def _save(self, job: Job, view: CaptureJobView, finished_at: float | None = None) -> Job:
        job = job.model_copy(update={"view": view, "finished_at": finished_at})
        await self.jobs.save(job)
        return job

    async def _finish(self, job: Job, outcome: ResultSummary | Failure) -> Job:
        done = isinstance(outcome, ResultSummary)
        view = job.view.model_copy(
            update={
                "phase": Phase.SUCCEEDED if done else Phase.FAILED,
                "completion_time": _now(),
                "result": outcome if done else None,
                "failure": None if done else outcome,
            }
        )
        try:
            return await self._save(job, view, finished_at=time.time())
        finally:
            for callback in self.on_finish:
                await callback(view.id)

    async def _announce(self, job: Job, policy: ScreenshotPolicy | None) -> None:
        """Send the finished job's webhook (`policy` None: looked up again) and save how it
        went. A job store that fails leaves it owed: whoever claims it next sends it again."""
        view, webhook = job.view, job.webhook
        assert webhook is not None and view.delivery is not None and view.delivery.webhook
        pending = view.delivery.webhook
        try:
            if policy is None:
                policy = await self.backend.policy(job.caller, view.policy)
            event = capture_event(view.id, view.phase, result=view.result, failure=view.failure)
            secret, rules = webhook.secret.get_secret_value(), policy.spec.network
            status = await self.sender.deliver(
                webhook.url, secret, event, rules, webhook_id=pending.id
            )
        except CaptureError as exc:  # its policy is gone: no rules to send it under
            why = f"no ScreenshotPolicy to send it under: {exc.message}"
            status = pending.model_copy(update={"outcome": DeliveryOutcome.REFUSED, "message": why})
        except Exception:
            log.exception("webhook %s failed", pending.id)
            why = "internal error"
            status = pending.model_copy(update={"outcome": DeliveryOutcome.FAILED, "message": why})
        self.metrics.webhooks.labels(outcome=status.outcome.value).inc()
        delivered = view.model_copy(update={"delivery": DeliveryStatus(webhook=status)})
        try:
            await self._save(job, delivered, finished_at=job.finished_at)
        except Exception:
            log.exception("webhook %s: how it went was not saved; it is sent again", pending.id)

    async def take_over(self) -> int:
        """Claim the jobs whose gateway stopped (their lease ran out): each is run again when
        its deadline allows, else failed; a finished one owing its webhook is announced. How
        many were claimed."""
        claimed = await self.jobs.claim()
        for job in claimed:
            if job.view.id in self._tasks:
                continue  # ours, and running: its lease had lapsed while the loop was busy
            if job.finished_at is not None:  # finished, its webhook owed
                log.warning("async capture %s: its gateway stopped; announcing it", job.view.id)
                self._background(job.view.id, self._announce(job, None))
            elif time.time() < job.deadline:
                log.warning("async capture %s: its gateway stopped; running it again", job.view.id)
                self._start(job, None)
            else:
                message = "the gateway running the capture stopped, and its deadline has passed"
                await self._finish(job, Failure(reason=FailureReason.POD_LOST, message=message))
        return len(claimed)

    async def expire(self, now: float | None = None) -> int:
        """Delete the jobs finished longer than the TTL ago, and their artifacts."""
        gone = await self.jobs.expire((time.time() if now is None else now) - self.ttl_seconds)
        for job_id in gone:
            await self.store.delete(job_id)
        return len(gone)

    async def maintain(self) -> None:
        """Every LEASE_SECONDS / 3: renew the leases of the jobs running here, take over the
        ones whose gateway stopped, delete the expired ones. Runs until cancelled."""
        while True:
            try:
                await self.jobs.renew(list(self._tasks))
                await self.take_over()
                await self.expire()
            except Exception:
                log.exception("job store maintenance failed")
            await asyncio.sleep(LEASE_SECONDS / 3)

    async def running(self, grace: float) -> AsyncIterator[None]:
        """The registry's lifetime (an aiohttp cleanup context): the job store open, its
        maintenance while the gateway runs; at the end, running jobs get `grace` seconds before
        they are failed."""
        await self.jobs.open()
        task = asyncio.create_task(self.maintain())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.close(grace)
            await self.jobs.close()

    async def close(self, grace: float) -> None:
        """Let running jobs finish for `grace` seconds, then fail them."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks.values()), timeout=grace)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)

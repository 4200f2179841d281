"""The webhooks of the gateway's asynchronous captures (`delivery.webhook` of POST /v1/captures),
for both backends: each job is followed until it finished, then its event is delivered
(kubeshot.webhooks: signed, through the egress guard's checks under the job's policy, retried).
How it went is the job's `delivery.webhook` in GET /v1/captures/{id}, a metric and a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from kubeshot.api import ScreenshotPolicy
from kubeshot.api.delivery import DeliveryOutcome, DeliveryStatus, Webhook, WebhookStatus
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Jobs
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView
from kubeshot.webhooks import WebhookSender, capture_event, refusal

log = logging.getLogger("kubeshot.gateway.webhooks")
FAILED = DeliveryOutcome.FAILED

FOLLOW_SECONDS = 86400.0
"""A job that has not finished a day after it was accepted is not announced (Failed)."""
RECHECK_SECONDS = 1.0
"""How often a followed job is looked at when nothing wakes its follower (`notify`): a job of
the kubernetes backend, or one another gateway replica took over."""


class Webhooks:
    """The webhooks of the jobs of `jobs`, and how each went (kept `ttl_seconds`)."""

    def __init__(
        self, jobs: Jobs, metrics: Metrics, ttl_seconds: int, sender: WebhookSender | None = None
    ) -> None:
        self.jobs = jobs
        self.metrics = metrics
        self.ttl_seconds = ttl_seconds
        self.sender = sender or WebhookSender()
        self._status: dict[str, WebhookStatus] = {}
        self._ended: deque[tuple[float, str]] = deque()  # in the order the deliveries ended
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: dict[str, asyncio.Event] = {}

    @staticmethod
    def admit(webhook: Webhook, policy: ScreenshotPolicy) -> None:
        """403 at once for a webhook URL the policy refuses on its face (scheme, port, domain,
        literal address); its name's addresses are judged when it is sent."""
        reason = refusal(webhook.url, policy.spec.network)
        if reason is not None:
            raise ApiError(
                403,
                "blocked_by_policy",
                f"the webhook URL is refused: {reason}",
                {"reason": "BlockedByPolicy", "field": "delivery.webhook.url"},
            )

    def follow(
        self, caller: Identity, view: CaptureJobView, policy: ScreenshotPolicy, webhook: Webhook
    ) -> CaptureJobView:
        """Deliver the job's event once it finished; the view with its delivery Pending."""
        pending = WebhookStatus(outcome=DeliveryOutcome.PENDING, id=f"msg_{view.id}")
        self._status[view.id] = pending
        task = asyncio.create_task(self._deliver(caller, view.id, policy, webhook))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self.with_status(view)

    def with_status(self, view: CaptureJobView) -> CaptureJobView:
        """The view with its webhook's delivery, when it has one."""
        known = self._status.get(view.id)
        if known is None:
            return view
        return view.model_copy(update={"delivery": DeliveryStatus(webhook=known)})

    async def notify(self, job_id: str) -> None:
        """The job finished (JobRegistry.on_finish): wake its follower at once."""
        event = self._wake.get(job_id)
        if event is not None:
            event.set()

    async def _finished(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        """The job once it succeeded or failed; None when it is gone first."""
        wake = self._wake[job_id] = asyncio.Event()
        try:
            async with asyncio.timeout(FOLLOW_SECONDS):
                while True:
                    view = await self.jobs.find(caller, job_id)
                    if view is None or view.phase.finished:
                        return view
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(RECHECK_SECONDS):
                            await wake.wait()
                    wake.clear()
        except TimeoutError:
            return None
        finally:
            del self._wake[job_id]

    async def _deliver(
        self, caller: Identity, job_id: str, policy: ScreenshotPolicy, webhook: Webhook
    ) -> None:
        pending = self._status[job_id]
        try:
            view = await self._finished(caller, job_id)
            if view is None:
                why = "the job never finished"
                status = pending.model_copy(update={"outcome": FAILED, "message": why})
            else:
                result = view.result
                event = capture_event(
                    view.id,
                    view.phase,
                    result=result,
                    failure=view.failure,
                    artifact_url=result.url if result is not None else None,
                )
                status = await self.sender.deliver(
                    webhook.url,
                    webhook.secret.get_secret_value(),
                    event,
                    policy.spec.network,
                    webhook_id=pending.id,
                )
        except Exception:  # a job store that failed: the job goes unannounced, and says so
            log.exception("webhook %s failed", pending.id)
            status = pending.model_copy(update={"outcome": FAILED, "message": "internal error"})
        self._status[job_id] = status
        self.metrics.webhooks.labels(outcome=status.outcome.value).inc()
        now = time.time()
        self._ended.append((now, job_id))
        self.expire(now)

    def expire(self, now: float) -> None:
        """Forget the deliveries that ended longer than the TTL ago (as their jobs are)."""
        while self._ended and self._ended[0][0] < now - self.ttl_seconds:
            self._status.pop(self._ended.popleft()[1], None)

    async def running(self, grace: float) -> AsyncIterator[None]:
        """The lifetime of the deliveries (an aiohttp cleanup context): at the end, those in
        progress get `grace` seconds, then are cancelled (logged: their jobs go unannounced)."""
        try:
            yield
        finally:
            if self._tasks:
                _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
                for task in pending:
                    task.cancel()
                if pending:
                    log.warning("%d webhook(s) not delivered: the gateway stopped", len(pending))
                with contextlib.suppress(Exception):
                    await asyncio.gather(*pending, return_exceptions=True)

"""The webhooks of finished CaptureJobs (`spec.delivery.webhook`): the event signed with the
Secret the job names and sent under its ScreenshotPolicy by kubeshot.webhooks (the gateway's
sender, through the egress guard's checks), in the background, never in a handler; how it went
is written to the job's `status.delivery.webhook`.

At least once: a finished job that asks for a webhook and has no delivery recorded, or a Pending
one, owes it (`owed`). The Reconciler announces a job when it finishes and again at every sweep
while it owes one, so that a delivery cut short (the leader stopped, the status write failed) is
sent again, by whichever replica leads, with the same `webhook-id`: receivers deduplicate by it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from kubeshot import logs
from kubeshot.api import CaptureJobStatus, ScreenshotPolicySpec, describe_validation_error
from kubeshot.api.delivery import (
    WEBHOOK_SECRET_LABEL,
    DeliveryOutcome,
    DeliveryStatus,
    JobDelivery,
    JobWebhook,
    WebhookStatus,
    webhook_key,
)
from kubeshot.kube import ApiError, KubeClient, NotFound, resource_path
from kubeshot.kube.names import jobs_path, store_id
from kubeshot.operator import metrics
from kubeshot.operator.policies import Policies
from kubeshot.operator.views import JobView
from kubeshot.webhooks import Deliveries, WebhookSender, capture_event, message_id, secret_of

log = logging.getLogger(__name__)
FAILED = DeliveryOutcome.FAILED

MAX_DELIVERIES = 256
"""Deliveries under way at once; a job finished beyond them is announced at a later sweep."""
SHUTDOWN_GRACE_SECONDS = 5.0
"""How long deliveries under way may finish when the operator stops (the next leader resends
those cut short)."""


def owed(view: JobView) -> bool:
    """Whether a job owes its webhook: finished, asking for one, and no delivery of it ended
    (none recorded, or Pending: whoever sent it stopped before recording how it went)."""
    delivery = view.spec.get("delivery")
    if not view.phase.finished or not isinstance(delivery, Mapping) or not delivery.get("webhook"):
        return False
    recorded = view.status.delivery.webhook if view.status.delivery is not None else None
    return recorded is None or recorded.outcome is DeliveryOutcome.PENDING


class Notifier:
    """The webhooks of the jobs the operator finishes (one per process, the Reconciler's)."""

    def __init__(
        self, client: KubeClient, policies: Policies, sender: WebhookSender | None = None
    ) -> None:
        self.client = client
        self.policies = policies
        self.sender = sender or WebhookSender()
        self.deliveries = Deliveries(MAX_DELIVERIES)

    def announce(self, view: JobView) -> None:
        """Send the job's webhook in the background if it owes one and none is under way."""
        if owed(view):
            self.deliveries.start(view.uid, self._deliver(view))

    async def close(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        await self.deliveries.close(grace)

    async def _deliver(self, view: JobView) -> None:
        """Read the job afresh (it may have been announced or replaced since `view`), send its
        event, record how it went. An API error leaves it owed: the next sweep tries again."""
        path = jobs_path(view.namespace, view.name)
        with logs.bound(job=f"{view.namespace}/{view.name}", policy=view.policy):
            try:
                body = await self.client.get(path)
                job = JobView.from_body(body)
                if job.uid != view.uid or not owed(job):
                    return
                status = await self._send(job, body)
                metrics.WEBHOOKS.labels(status.outcome.value).inc()
                recorded = CaptureJobStatus(delivery=DeliveryStatus(webhook=status))
                patch = {"metadata": {"uid": job.uid}, "status": recorded.patch()}
                await self.client.merge_patch(path + "/status", patch)
            except NotFound:
                return
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("webhook of %s/%s left for a sweep: %s", view.namespace, view.name, exc)

    async def _send(self, job: JobView, body: Mapping[str, Any]) -> WebhookStatus:
        """The event of the finished job delivered, or why it was not sent."""
        job_id = store_id(body)
        msg_id = message_id(job_id)

        def refused(why: str) -> WebhookStatus:
            log.warning("webhook %s refused: %s", msg_id, why)
            return WebhookStatus(outcome=DeliveryOutcome.REFUSED, id=msg_id, message=why[:1024])

        try:
            webhook = JobDelivery.model_validate(job.spec.get("delivery")).webhook
        except ValidationError as exc:
            return refused(describe_validation_error(exc, "spec.delivery"))
        assert webhook is not None  # owed
        policy = await self.policies.parsed(job.namespace, job.policy)
        if not isinstance(policy, ScreenshotPolicySpec):
            why = policy.message if policy is not None else "not found"
            return refused(f"no ScreenshotPolicy {job.policy!r} to send it under: {why}")
        secret = await self._secret(job.namespace, webhook)
        if secret is None:
            ref = webhook.secret_ref
            return refused(
                f'Secret {ref.name!r} not found, not labelled {WEBHOOK_SECRET_LABEL}: "true",'
                f" or without a Standard Webhooks secret (whsec_...) under key {ref.key!r}"
            )
        result = job.status.result
        event = capture_event(
            job_id,
            job.phase,
            result=result.summary() if result is not None else None,
            failure=job.status.failure,
        )
        try:
            return await self.sender.deliver(
                webhook.url, secret, event, policy.network, webhook_id=msg_id
            )
        except Exception:  # recorded, so that no sweep sends it again and again
            log.exception("webhook %s failed", msg_id)
            return WebhookStatus(outcome=FAILED, id=msg_id, message="internal error")

    async def _secret(self, namespace: str, webhook: JobWebhook) -> str | None:
        """The signing secret of the job's Secret; None when it is missing, has not opted in,
        or holds no Standard Webhooks secret (alike: the answer tells nothing about the
        namespace's other Secrets, and never the secret)."""
        ref = webhook.secret_ref
        try:
            secret = await self.client.get(resource_path("v1", "secrets", namespace, ref.name))
            value = secret_of(secret, ref.key)
            if value is not None:
                webhook_key(value)
        except (NotFound, ValueError):
            return None
        return value

"""The webhooks of the gateway's asynchronous captures (`delivery.webhook` of POST /v1/captures):
admitted here, then kept with their job and sent when it finished, by whoever finishes it: the
gateway replica running it (jobs.JobRegistry, the local backend) or the operator (the kubernetes
backend: the CaptureJob's own `spec.delivery.webhook`, cluster.py). How it went is the job's
`delivery.webhook` in GET /v1/captures/{id}, whichever replica answers.
"""

from __future__ import annotations

from kubeshot.api import ScreenshotPolicy
from kubeshot.api.delivery import Webhook
from kubeshot.gateway.errors import ApiError
from kubeshot.webhooks import refusal


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

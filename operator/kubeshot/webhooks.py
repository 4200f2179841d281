"""Signed webhooks: a finished capture announced to its caller's receiver, through the egress
guard's checks. The gateway sends them for its asynchronous captures, the operator for
CaptureJobs with `spec.delivery.webhook`.

Signing is Standard Webhooks' by its reference implementation (`standardwebhooks`): headers
`webhook-id` (the same on every attempt: delivery is at least once, receivers deduplicate),
`webhook-timestamp` and `webhook-signature`, signed anew per attempt so that a retry is within
the receiver's timestamp tolerance.

The receiver is reached exactly as a capture's navigation is: the guard's `CompiledRules` judge
the URL (`url_refusal`: scheme, spelling, port, domains, literal address), then every address
its name resolves to (`resolve`), under the capture's NetworkRules. The request goes to the
addresses judged, never to the name again (no DNS-rebinding window): aiohttp's connector gets a
resolver that answers with those addresses and nothing else, and the URL it is given carries the
guard's reading of the host (no parser differential). Redirects are not followed; the answer's
body is never read. 5xx, 408, 429, timeouts and connection errors are retried with exponential
backoff and jitter, within a number of attempts and a total time; other answers are final.

Deliveries run in the background of the daemon that sends them (`Deliveries`), one per job at a
time, and end with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

from kubeshot.api import Failure, NetworkRules, Phase, ResultSummary, artifact_path
from kubeshot.api.delivery import WEBHOOK_SECRET_LABEL, DeliveryOutcome, WebhookStatus
from kubeshot.api.reasons import redact_addresses
from kubeshot.kube.names import opted_in, secret_text
from kubeshot_capture.guard import IPAddress, Resolver, Target, parse_url, system_resolver
from kubeshot_capture.guard.rules import CompiledRules

log = logging.getLogger("kubeshot.webhooks")

USER_AGENT = "kubeshot-webhooks/1"


@dataclass(frozen=True)
class Retries:
    """How hard a delivery tries: at most `attempts` requests of `timeout` seconds each, within
    `total_seconds`; between them an exponential delay with jitter."""

    attempts: int = 6
    total_seconds: float = 300.0
    timeout: float = 10.0
    first_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): the exponential step
        halved plus a random half of it ("equal jitter": receivers are not hit in lockstep),
        at least a 429/503's Retry-After, at most `max_delay`."""
        step = min(self.max_delay, self.first_delay * 2.0 ** (attempt - 1))
        wait = step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not a secret
        return min(self.max_delay, max(wait, retry_after or 0.0))


def retried(status: int) -> bool:
    """Whether an answer is worth another attempt: the receiver's trouble, not a refusal."""
    return status >= 500 or status in (408, 429)


def capture_event(
    job: str,
    phase: Phase,
    *,
    result: ResultSummary | None = None,
    failure: Failure | None = None,
    artifact_url: str | None = None,
) -> dict[str, Any]:
    """The event of a finished job, in Standard Webhooks' payload shape (type, timestamp, data):
    `capture.succeeded` with the result and where to download the artifact (the result's URL,
    or the gateway's path of the job's artifact, unless `artifact_url` says otherwise), or
    `capture.failed` with the failure."""
    data: dict[str, Any] = {"job": job, "phase": phase.value}
    if result is not None:
        data["result"] = result.to_wire()
        artifact_url = artifact_url or result.url or artifact_path(job)
    if failure is not None:
        data["failure"] = failure.to_wire()
    if artifact_url is not None:
        data["artifactUrl"] = artifact_url
    kind = "succeeded" if phase is Phase.SUCCEEDED else "failed"
    return {
        "type": f"capture.{kind}",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": data,
    }


def secret_of(secret: Mapping[str, Any], key: str) -> str | None:
    """The webhook secret under `key` of a Secret (as the API server answers it), or None when
    the Secret does not opt in (label `kubeshot.dev/webhook-secret: "true"`) or lacks the key.
    The operator refuses a missing Secret and one that has not opted in alike. ValueError when
    the value is not base64 of UTF-8 text."""
    return secret_text(secret, key) if opted_in(secret, WEBHOOK_SECRET_LABEL) else None


def refusal(url: str, rules: NetworkRules) -> str | None:
    """Why the rules refuse a webhook URL on its face (scheme, spelling, port, domain, literal
    address), before any DNS lookup: the guard's verdict on a navigation to it."""
    return CompiledRules(rules).url_refusal(url)


def message_id(job: str) -> str:
    """A job's `webhook-id`: the same on every attempt, by every sender (receivers deduplicate)."""
    return f"msg_{job}"


class Deliveries:
    """Deliveries running in the background of a daemon, one per key (a job) at a time, at most
    `limit` at once (None: no limit). `close` ends them with the daemon."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, key: str, delivery: Coroutine[Any, Any, None]) -> bool:
        """Run `delivery` unless one of `key` runs or the limit is reached (then it is closed
        unstarted: whoever asked asks again later)."""
        if key in self._tasks or (self.limit is not None and len(self._tasks) >= self.limit):
            delivery.close()
            return False
        task = asyncio.create_task(delivery)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))
        return True

    async def close(self, grace: float) -> None:
        """Those in progress get `grace` seconds, then are cancelled (logged: their jobs go
        unannounced by this process)."""
        tasks = set(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d webhook(s) not delivered: stopped", len(pending))
        await asyncio.gather(*pending, return_exceptions=True)


class _Pinned(AbstractResolver):
    """Answers for the judged host with the judged addresses, and for nothing else."""

    def __init__(self, host: str, addresses: Sequence[IPAddress]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"{host} was not judged by the egress guard")
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


def request_url(url: str, target: Target) -> str:
    """The URL with the guard's reading of its host: what is connected to is what was judged."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{target.scheme}://{target.authority}{parts.path or '/'}{query}"


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class WebhookSender:
    """Delivers signed events under a capture's NetworkRules. `resolver` is the guard's (the
    system resolver unless a test injects a zone); `tls` verifies receivers' certificates."""

    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        retries: Retries | None = None,
        tls: ssl.SSLContext | bool = True,
    ) -> None:
        self.resolver = resolver
        self.retries = retries or Retries()
        self.tls = tls

    async def deliver(
        self,
        url: str,
        secret: str,
        event: Mapping[str, Any],
        rules: NetworkRules,
        *,
        webhook_id: str | None = None,
    ) -> WebhookStatus:
        """Send `event` until the receiver takes it, refuses it, or the retries run out; the
        status says which (a refusal by the policy is never sent, and is logged)."""
        msg_id = webhook_id or message_id(uuid.uuid4().hex)
        body = json.dumps(event, separators=(",", ":"), sort_keys=True)
        signer = Webhook(secret)
        judge = CompiledRules(rules)
        retries = self.retries
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retries.total_seconds
        attempts, status, message = 0, None, ""

        def done(outcome: DeliveryOutcome, why: str = "") -> WebhookStatus:
            if outcome is DeliveryOutcome.DELIVERED:
                log.info("webhook %s delivered after %d attempt(s)", msg_id, attempts)
            else:
                log.warning("webhook %s to %s %s: %s", msg_id, url, outcome.value.lower(), why)
            return WebhookStatus(
                outcome=outcome,
                id=msg_id,
                attempts=attempts,
                http_status=status,
                message=redact_addresses(why, url)[:1024] or None,
            )

        reason = judge.url_refusal(url)
        if reason is not None:
            return done(DeliveryOutcome.REFUSED, reason)
        target = parse_url(url)
        while True:
            retry_after = None
            try:
                addresses, reason = await judge.resolve(target, self.resolver)
                if reason is not None:
                    return done(DeliveryOutcome.REFUSED, reason)
                if any(judge.in_allowed_networks(a) for a in addresses):
                    log.info("webhook %s: %s is opened by the policy's allowedCIDRs", msg_id, url)
                attempts += 1
                now = datetime.now(UTC).replace(microsecond=0)
                headers = {
                    "content-type": "application/json",
                    "user-agent": USER_AGENT,
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signer.sign(msg_id, now, body),
                }
                status, retry_after = await self._post(target, addresses, url, headers, body)
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                status, message = None, f"cannot reach the receiver: {exc or type(exc).__name__}"
            else:
                if 200 <= status < 300:
                    return done(DeliveryOutcome.DELIVERED)
                message = f"the receiver answered {status}"
                if not retried(status):
                    return done(DeliveryOutcome.REJECTED, message)
            delay = retries.delay(max(attempts, 1), retry_after)
            if attempts >= retries.attempts or loop.time() + delay > deadline:
                return done(DeliveryOutcome.FAILED, f"{message} (gave up after {attempts})")
            log.info("webhook %s: %s; retrying in %.1fs", msg_id, message, delay)
            await asyncio.sleep(delay)

    async def _post(
        self,
        target: Target,
        addresses: Sequence[IPAddress],
        url: str,
        headers: dict[str, str],
        body: str,
    ) -> tuple[int, float | None]:
        """One attempt, to the judged addresses only; the answer's status and Retry-After."""
        connector = aiohttp.TCPConnector(
            resolver=_Pinned(target.host, addresses),
            use_dns_cache=False,
            force_close=True,
            ssl=self.tls,
        )
        timeout = aiohttp.ClientTimeout(total=self.retries.timeout)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http,
            http.post(
                request_url(url, target),
                data=body.encode(),
                headers=headers,
                allow_redirects=False,
            ) as response,
        ):
            # The body is never read: a receiver cannot make us hold more than its headers.
            return response.status, _retry_after(response.headers.get("Retry-After"))

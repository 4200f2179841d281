"""Prometheus metrics of one gateway, served on their own port (KUBESHOT_METRICS_PORT).

Each app has its own registry, so that several gateways can live in one process (the tests run
a few); the registry still carries what Prometheus expects of any Python daemon: the process
(`process_*`), platform (`python_info`) and garbage-collector (`python_gc_*`) collectors, plus
`kubeshot_build_info`.

/metrics is not served on the callers' port: a scrape endpoint has no business behind the
Ingress, where anyone on the internet could read the gateway's load and failure counts.
`metrics_app` is the whole of what the metrics port serves.

Label values are bounded: `outcome` is `Succeeded`, a FailureReason, `Overloaded` or
`Cancelled`; `format` a Format; the other labels are fixed strings in the code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from kubeshot.api import CaptureError, FailureReason, Format
from kubeshot.buildinfo import register_build_info
from kubeshot.gateway.errors import ApiError

__all__ = ["CONTENT_TYPE_LATEST", "OUTCOMES", "CaptureClock", "Metrics", "metrics_app"]

SUCCEEDED = "Succeeded"
OVERLOADED = "Overloaded"
CANCELLED = "Cancelled"
OUTCOMES = (SUCCEEDED, *(r.value for r in FailureReason), OVERLOADED, CANCELLED)
"""Every value the `outcome` label takes."""

# Seconds; captures run from a fraction of a second to the policy's timeout (300 s at most).
CAPTURE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Waiting for a worker: none at all when one is idle, up to KUBESHOT_QUEUE_TIMEOUT.
WAIT_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


def outcome_of(exc: BaseException) -> str:
    """The `outcome` label of a capture that ended with `exc`."""
    if isinstance(exc, CaptureError):
        return exc.reason.value
    if isinstance(exc, ApiError) and exc.status == 503:
        return OVERLOADED
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    return FailureReason.INTERNAL.value


class CaptureClock:
    """The two phases of one capture: waiting in the queue, then running on a worker."""

    def __init__(self) -> None:
        self.queued = time.monotonic()
        self.running: float | None = None

    def start(self) -> None:
        """The capture left the queue: from here on it is capture time."""
        self.running = time.monotonic()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        register_build_info(r)
        self.requests = Counter(
            "kubeshot_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.auth_failures = Counter(
            "kubeshot_auth_failures", "Refused authentications by reason", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "kubeshot_rate_limited", "Requests refused by a rate limit", ["category"], registry=r
        )
        self.admission_rejections = Counter(
            "kubeshot_admission_rejections", "Captures refused by policy", ["reason"], registry=r
        )
        self.validation_failures = Counter(
            "kubeshot_validation_failures", "Requests refused as invalid", registry=r
        )
        self.captures = Counter(
            "kubeshot_captures", "Finished captures by outcome", ["outcome"], registry=r
        )
        self.queue_wait = Histogram(
            "kubeshot_queue_wait_seconds",
            "Time a capture waited for a worker (local backend), by outcome and format",
            ["outcome", "format"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.capture_duration = Histogram(
            "kubeshot_capture_duration_seconds",
            "Time a capture ran on a worker, queue wait excluded (local backend), by outcome "
            "and format",
            ["outcome", "format"],
            buckets=CAPTURE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubeshot_queue_depth", "Captures waiting for a worker", registry=r
        )
        self.queue_capacity = Gauge(
            "kubeshot_queue_capacity",
            "Captures that may wait for a worker before the next is refused (KUBESHOT_QUEUE_SIZE)",
            registry=r,
        )
        self.workers = Gauge("kubeshot_workers", "Capture workers by state", ["state"], registry=r)
        self.worker_restarts = Counter(
            "kubeshot_worker_restarts",
            "Capture workers replaced, by reason",
            ["reason"],
            registry=r,
        )
        self.overloaded = Counter(
            "kubeshot_overloaded", "Captures refused because the queue was full", registry=r
        )

        self.connections_refused = Counter(
            "kubeshot_connections_refused",
            "Connections refused before a request was read, by reason",
            ["reason"],
            registry=r,
        )
        self.webhooks = Counter(
            "kubeshot_webhooks",
            "Webhook deliveries of asynchronous captures, by outcome (Delivered, Refused by the "
            "policy, Rejected by the receiver, Failed after retries)",
            ["outcome"],
            registry=r,
        )
        self.watch_connections = Counter(
            "kubeshot_watch_connections",
            "CaptureJob watch connections opened (kubernetes backend)",
            registry=r,
        )

    @contextlib.contextmanager
    def timing(self, fmt: Format) -> Iterator[CaptureClock]:
        """Observe one capture's queue wait and (once `clock.start()` was called) its capture
        time, labelled with how it ended. A capture that never left the queue (refused after
        waiting, cancelled) observes its wait only."""
        clock = CaptureClock()
        outcome = SUCCEEDED
        try:
            yield clock
        except BaseException as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            ended = time.monotonic()
            left_queue = clock.running if clock.running is not None else ended
            self.queue_wait.labels(outcome, fmt.value).observe(left_queue - clock.queued)
            if clock.running is not None:
                self.capture_duration.labels(outcome, fmt.value).observe(ended - clock.running)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def _scrape(request: web.Request) -> web.StreamResponse:
    body = request.app[METRICS_KEY].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS_KEY = web.AppKey("metrics", Metrics)


def metrics_app(metrics: Metrics) -> web.Application:
    """What the metrics port serves: GET /metrics, nothing else (404)."""
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", _scrape, name="metrics")
    return app

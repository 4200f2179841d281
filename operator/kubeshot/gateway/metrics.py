"""Prometheus metrics of one gateway (its own registry, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.capture_duration = Histogram(
            "kubeshot_capture_duration_seconds",
            "Capture duration (queue wait included)",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.queue_depth = Gauge(
            "kubeshot_queue_depth", "Captures waiting for a worker", registry=r
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
        self.watch_connections = Counter(
            "kubeshot_watch_connections",
            "CaptureJob watch connections opened (kubernetes backend)",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of the operator (served on /metrics next to /healthz)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Gauge("kubeshot_operator_jobs", "CaptureJobs known to the operator, by phase", ["phase"])
JOBS_FINISHED = Counter(
    "kubeshot_operator_jobs_finished_total",
    "CaptureJobs finished, by phase and failure reason (empty when Succeeded)",
    ["phase", "reason"],
)
QUEUE_DEPTH = Gauge(
    "kubeshot_operator_queue_depth",
    "CaptureJobs waiting for a slot, by policy",
    ["namespace", "policy"],
)
RECONCILE_SECONDS = Histogram(
    "kubeshot_operator_reconcile_seconds",
    "Time to handle one watch event, by kind",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PODS_CREATED = Counter("kubeshot_operator_pods_created_total", "Capture pods created")
RETRIES = Counter(
    "kubeshot_operator_retries_total", "Attempts retried after a retriable failure", ["reason"]
)
LEADER = Gauge("kubeshot_operator_leader", "1 while this replica holds the leader Lease")

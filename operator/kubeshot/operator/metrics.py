"""Prometheus metrics of the operator (served on /metrics next to /healthz).

The operator has one process per replica, so its metrics live in prometheus_client's default
registry, which already carries the process (`process_*`), platform (`python_info`) and
garbage-collector (`python_gc_*`) collectors; `kubeshot_build_info` is added here.

Names follow controller-runtime's, so that dashboards and alerts written for Go controllers
read these too: a *controller* is one watched kind (CaptureJob, ScreenshotPolicy, Pod), a
*reconcile* the handling of one watch event (or of a retry's wake-up). The *work queue* is the
CaptureJobs admitted but not yet running: each waits for a slot under its policy's
maxConcurrentJobs (or for its NetworkPolicy, or for a retry's backoff); it leaves the queue when
its capture pod is created.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from kubeshot.buildinfo import register_build_info

CONTROLLERS = ("CaptureJob", "ScreenshotPolicy", "Pod")
"""Every value the `controller` label takes."""
SUCCESS, ERROR, REQUEUE = "success", "error", "requeue"
"""Every value the `result` label takes."""

BUILD_INFO = register_build_info(REGISTRY)
JOBS = Gauge("kubeshot_operator_jobs", "CaptureJobs known to the operator, by phase", ["phase"])
JOBS_FINISHED = Counter(
    "kubeshot_operator_jobs_finished_total",
    "CaptureJobs finished, by phase and failure reason (empty when Succeeded)",
    ["phase", "reason"],
)
WORKQUEUE_DEPTH = Gauge(
    "kubeshot_operator_workqueue_depth",
    "CaptureJobs admitted and waiting for a slot under their policy, by namespace and policy",
    ["namespace", "policy"],
)
WORKQUEUE_QUEUE_DURATION = Histogram(
    "kubeshot_operator_workqueue_queue_duration_seconds",
    "Time from a CaptureJob's creation to its first capture pod (whole seconds: the API "
    "server's timestamps)",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
RECONCILE_TOTAL = Counter(
    "kubeshot_operator_reconcile_total",
    "Watch events handled, by controller and result (success, error, requeue)",
    ["controller", "result"],
)
RECONCILE_ERRORS = Counter(
    "kubeshot_operator_reconcile_errors_total",
    "Watch events whose handling failed (left to the sweeper), by controller",
    ["controller"],
)
RECONCILE_TIME = Histogram(
    "kubeshot_operator_reconcile_time_seconds",
    "Time to handle one watch event, by controller",
    ["controller"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PODS_CREATED = Counter("kubeshot_operator_pods_created_total", "Capture pods created")
WARM_PODS_ASKING = Gauge(
    "kubeshot_operator_warm_pods_asking", "Warm capture pods asking for a job now (claimable)"
)
WARM_PODS_CLAIMED = Counter(
    "kubeshot_operator_warm_pods_claimed_total", "Attempts that started in a warm capture pod"
)
RETRIES = Counter(
    "kubeshot_operator_retries_total", "Attempts retried after a retriable failure", ["reason"]
)
LEADER = Gauge("kubeshot_operator_leader", "1 while this replica holds the leader Lease")
WEBHOOKS = Counter(
    "kubeshot_operator_webhooks_total", "CaptureJob webhooks, by how they ended", ["outcome"]
)

for _controller in CONTROLLERS:  # every series exists from the start: rate() needs a zero
    RECONCILE_ERRORS.labels(_controller)
    for _result in (SUCCESS, ERROR, REQUEUE):
        RECONCILE_TOTAL.labels(_controller, _result)

_requeued: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "kubeshot_operator_requeued", default=None
)


def requeued() -> None:
    """The reconcile under way scheduled another pass (a retry after backoff): its result is
    `requeue`. Outside a reconcile (a sweep) nothing is counted."""
    flag = _requeued.get()
    if flag is not None:
        flag[0] = True


@contextlib.contextmanager
def reconciling(controller: str) -> Iterator[None]:
    """Time and count one watch event of `controller`; an exception is an `error` (and is
    re-raised: the handler decides what happens to it)."""
    flag = [False]
    token = _requeued.set(flag)
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        RECONCILE_TOTAL.labels(controller, ERROR).inc()
        RECONCILE_ERRORS.labels(controller).inc()
        raise
    else:
        RECONCILE_TOTAL.labels(controller, REQUEUE if flag[0] else SUCCESS).inc()
    finally:
        RECONCILE_TIME.labels(controller).observe(time.perf_counter() - started)
        _requeued.reset(token)


def left_queue(created: str, now: datetime | None = None) -> None:
    """A CaptureJob created at `created` (RFC 3339) got its first capture pod."""
    try:
        since = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return  # no creationTimestamp (a test double): nothing to measure
    waited = ((now or datetime.now(UTC)) - since).total_seconds()
    WORKQUEUE_QUEUE_DURATION.observe(max(0.0, waited))

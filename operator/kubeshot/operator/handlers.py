"""Kopf handlers: thin. Each hands the event to the process's Reconciler (Kopf's memo).

Only watching handlers and indexes are used: no finalizers and no Kopf progress annotations on
user objects, so deleting a CaptureJob never waits for the operator.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import kopf

from kubeshot.api.crds import GROUP, VERSION
from kubeshot.kube import ApiError, names
from kubeshot.operator import metrics
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import JobView
from kubeshot.operator.warming import WarmPod

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _unfinished_is_swept(kind: str) -> Iterator[None]:
    """An API error leaves an event half-handled; Kopf does not retry watch handlers, the
    sweeper finds what is left (a Pending job, an unrecorded pod end) and finishes it."""
    try:
        yield
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("%s event left for the sweeper: %s", kind, exc)


def _reconciler(memo: Any, kwargs: dict[str, Any]) -> Reconciler:
    """The process's Reconciler, bound to Kopf's indexes (passed by the index functions' names)."""
    reconciler: Reconciler = memo["reconciler"]
    reconciler.bind(kwargs["capturejob_index"], kwargs["screenshotpolicy_index"])
    reconciler.pool.bind(kwargs["warmpod_index"])
    return reconciler


class _NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff-base serves change-detecting handlers (on.create, on.update, on.field); there
    are none here, and building it deep-copies every object at every event (a tenth of a burst's
    CPU): it is left empty."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours: OperatorSettings = memo["settings"]
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.posting.enabled = False  # Events are posted by the Reconciler, one per transition
    settings.batching.batch_window = ours.batch_window_seconds
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


# The indexes are coroutines so that Kopf runs them in its loop, not in a thread of its executor.
@kopf.index(GROUP, VERSION, "capturejobs")
async def capturejob_index(body: kopf.Body, **_: Any) -> dict[Any, JobView]:
    view = JobView.from_body(body)
    return {view.key: view}


@kopf.index(GROUP, VERSION, "screenshotpolicies")
async def screenshotpolicy_index(body: kopf.Body, **_: Any) -> dict[Any, dict[str, Any]]:
    key = (body.metadata.namespace, body.metadata.name)
    document = {"metadata": dict(body.metadata), "spec": dict(body.spec)}
    return {key: {**document, "status": dict(body.status)}}


@kopf.index("", "v1", "pods", labels={**names.CAPTURE_PODS, names.WARM: "true"})
async def warmpod_index(body: kopf.Body, **_: Any) -> dict[Any, WarmPod]:
    pod = WarmPod.from_body(body)
    return {(pod.namespace, body.metadata.labels.get(names.POLICY, "")): pod}


@kopf.on.event(GROUP, VERSION, "capturejobs")
async def capturejob_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    memo: Any,
    **kwargs: Any,
) -> None:
    reconciler = _reconciler(memo, kwargs)
    with _unfinished_is_swept("CaptureJob"), metrics.reconciling("CaptureJob"):
        await reconciler.job_event(event["type"], body)


@kopf.on.event(GROUP, VERSION, "screenshotpolicies")
async def screenshotpolicy_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    memo: Any,
    **kwargs: Any,
) -> None:
    reconciler = _reconciler(memo, kwargs)
    with _unfinished_is_swept("ScreenshotPolicy"), metrics.reconciling("ScreenshotPolicy"):
        await reconciler.policy_event(event["type"], body)


@kopf.on.event("", "v1", "pods", labels=names.CAPTURE_PODS)
async def pod_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    memo: Any,
    **kwargs: Any,
) -> None:
    reconciler = _reconciler(memo, kwargs)
    with _unfinished_is_swept("Pod"), metrics.reconciling("Pod"):
        await reconciler.pod_event(event["type"], body)

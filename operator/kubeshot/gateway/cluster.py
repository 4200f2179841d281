"""The `kubernetes` backend: admitted requests become CaptureJobs, run by the operator's pods.

A capture pod uploads its artifact to the gateway's internal endpoint (`uploads.py`), which puts
it in the result store under the job's uid; the job's status (followed by one shared watch) says
when it is done and with which sha256. The backend runs asynchronous captures itself (it is a
`Jobs` too): a CaptureJob is one, and its uid is the job id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from pydantic import ValidationError

from kubeshot import logs, tracing
from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureOutcome,
    FailureReason,
    Phase,
    ScreenshotPolicy,
)
from kubeshot.api.admission import effective_timeout
from kubeshot.api.crds import API_VERSION
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, CaptureResult
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.kube import CaptureJobWatch, KubeClient, KubeError, Manifest
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.store import ResultStore
from kubeshot.kube.names import (
    CALLER,
    DEFAULT_POLICY,
    GATEWAY,
    MANAGED_BY,
    caller_label,
    job_format,
    job_phase,
    job_policy,
    jobs_path,
    policies_path,
    store_id,
)

log = logging.getLogger("kubeshot.gateway.cluster")


def trace_annotations() -> dict[str, str]:
    """The active span's traceparent and the request's id, for the CaptureJob (none when off)."""
    annotations = {}
    traceparent = tracing.traceparent()
    if traceparent is not None:
        annotations[tracing.TRACEPARENT_ANNOTATION] = traceparent
    request_id = logs.context().get("request_id")
    if request_id is not None:
        annotations[tracing.REQUEST_ID_ANNOTATION] = request_id
    return annotations


class KubernetesBackend(Backend):
    """CaptureJobs in the caller's namespace, followed by one shared watch; a `Jobs` too.

    `store` is the gateway's result store, where the upload endpoint puts the artifacts.
    """

    def __init__(
        self,
        namespaces: list[str],
        *,
        store: ResultStore,
        wait_grace: float,
        client: KubeClient | None = None,
        on_watch_connect: Any = None,
    ) -> None:
        self.client = client or KubeClient(user_agent="kubeshot-gateway")
        self.store = store
        self.wait_grace = wait_grace
        self.watch = CaptureJobWatch(
            self.client, namespaces, on_connect=on_watch_connect or (lambda: None)
        )
        self._closing = False

    async def start(self) -> None:
        self.watch.start()

    async def close(self) -> None:
        self._closing = True
        await self.watch.close()
        await self.client.close()

    def begin_shutdown(self) -> None:
        self._closing = True

    @property
    def ready(self) -> bool:
        return self.watch.established and not self._closing

    # --- admission ------------------------------------------------------------------------

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        """The ScreenshotPolicy of the caller's namespace; CaptureError(PolicyNotFound) when
        missing."""
        namespace = caller.namespace
        name = name or DEFAULT_POLICY
        try:
            document = await self.client.request("GET", policies_path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                raise CaptureError(
                    FailureReason.POLICY_NOT_FOUND,
                    f"no ScreenshotPolicy named {name!r} in namespace {namespace!r}",
                ) from None
            raise _unavailable(exc, f"reading ScreenshotPolicy {namespace}/{name}") from None
        try:
            return ScreenshotPolicy.model_validate(
                {"metadata": {"name": name}, "spec": document.get("spec") or {}}
            )
        except ValidationError as exc:
            log.warning("ScreenshotPolicy %s/%s is invalid: %s", namespace, name, exc)
            raise CaptureError(
                FailureReason.INVALID_SPEC, f"the ScreenshotPolicy {name!r} is invalid"
            ) from None

    # --- captures ---------------------------------------------------------------------------

    async def _create_job(
        self, caller: Identity, policy_name: str, options: CaptureOptions
    ) -> Manifest:
        if self._closing:
            raise ApiError(
                503, "overloaded", "the gateway is shutting down", headers={"Retry-After": "5"}
            )
        name = f"capture-{uuid.uuid4().hex[:16]}"
        logs.bind(job=f"{caller.namespace}/{name}")
        with tracing.span("create CaptureJob", {"kubeshot.job": f"{caller.namespace}/{name}"}):
            body = {
                "apiVersion": API_VERSION,
                "kind": "CaptureJob",
                "metadata": {
                    "name": name,
                    "namespace": caller.namespace,
                    "labels": {MANAGED_BY: GATEWAY, CALLER: caller_label(caller.name)},
                    # The operator continues this trace, and logs with this request id.
                    "annotations": trace_annotations(),
                },
                "spec": {**options.to_wire(), "policyRef": policy_name},
            }
            try:
                created = await self.client.request("POST", jobs_path(caller.namespace), body)
            except KubeError as exc:
                raise _unavailable(exc, f"creating a CaptureJob in {caller.namespace}") from None
        self.watch.observe(created, initial=True)
        return created

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        """A synchronous capture: create the job, wait for it, read its artifact."""
        created = await self._create_job(caller, policy.name, options)
        meta = created["metadata"]
        timeout = effective_timeout(options, policy.spec) + self.wait_grace
        try:
            job = await self.watch.wait_finished((meta["namespace"], meta["name"]), timeout)
        except TimeoutError:
            raise CaptureError(
                FailureReason.TIMEOUT, f"the capture did not finish within {timeout:g}s"
            ) from None
        if job is None:
            raise CaptureError(FailureReason.POD_LOST, "the CaptureJob was deleted")
        report = job_outcome(job).report()  # CaptureError when the job failed
        data = await self.store.get(store_id(job), report.sha256)
        if data is None:
            raise CaptureError(FailureReason.INTERNAL, "the artifact was not uploaded")
        return CaptureResult(data=data, report=report)

    # --- asynchronous captures (Jobs) ------------------------------------------------------

    async def submit(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureJobView:
        """A CaptureJob, created and not waited for."""
        return self.view(await self._create_job(caller, policy.name, options))

    async def find(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        """The job with this id (its uid's hex), if the caller may see it."""
        key = self.watch.by_uid.get(job_id)
        if key is None or key[0] != caller.namespace:
            return None
        job = self.watch.jobs.get(key)
        if job is None:
            return None
        owner = (job["metadata"].get("labels") or {}).get(CALLER)
        # Jobs applied with kubectl (no caller) belong to every token of their namespace.
        return self.view(job) if owner in {None, caller_label(caller.name)} else None

    def view(self, job: Manifest) -> CaptureJobView:
        status = job.get("status") or {}
        phase = job_phase(job)
        outcome = job_outcome(job) if phase is Phase.SUCCEEDED else None
        result = None
        if outcome is not None and outcome.result is not None:
            result = outcome.result.summary().model_copy(
                update={"url": f"/v1/captures/{store_id(job)}/artifact"}
            )
        return CaptureJobView(
            id=store_id(job),
            phase=phase,
            created_at=str(job["metadata"].get("creationTimestamp", "")),
            completion_time=status.get("completionTime"),
            policy=job_policy(job),
            result=result,
            failure=job_outcome(job).failure if phase is Phase.FAILED else None,
        )

    async def job(self, namespace: str, name: str) -> Manifest | None:
        """A job as the watch knows it, else as the API server does."""
        known = self.watch.jobs.get((namespace, name))
        if known is not None:
            return known
        try:
            return await self.client.request("GET", jobs_path(namespace, name))
        except KubeError as exc:
            if exc.status in {403, 404}:
                return None
            raise _unavailable(exc, f"reading CaptureJob {namespace}/{name}") from None


def job_outcome(job: Manifest) -> CaptureOutcome:
    """The pod's CaptureOutcome as a finished job's status keeps it (its report, in the job's
    format, else the failure; Internal when the status holds neither)."""
    status = job.get("status") or {}
    fmt = job_format(job)
    try:
        if status.get("phase") == Phase.SUCCEEDED.value and fmt is not None:
            # The job's format names the artifact, never what its pod (a hostile page) said.
            result = {**status["result"], "format": fmt.value, "contentType": fmt.content_type}
            return CaptureOutcome.model_validate({"result": result})
        return CaptureOutcome.model_validate({"failure": status.get("failure")})
    except (ValidationError, KeyError, TypeError):
        return CaptureOutcome.failed(CaptureError(FailureReason.INTERNAL, "the capture failed"))


def _unavailable(exc: KubeError, doing: str) -> ApiError:
    """The answer to a refusal of the Kubernetes API: its text (names of quotas, namespaces,
    service accounts, webhooks) goes to the log, never to the caller."""
    log.warning("the Kubernetes API refused %s: %s", doing, exc)
    return ApiError(
        503,
        "unavailable",
        "the capture backend is unavailable; try again later",
        headers={"Retry-After": "5"},
    )

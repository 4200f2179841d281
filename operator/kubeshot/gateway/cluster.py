"""The `kubernetes` backend: admitted requests become CaptureJobs, run by the operator's pods.

A capture pod uploads its artifact to the gateway's internal endpoint (`uploads.py`), which checks
it and puts it in the result store under the job's uid, or (KUBESHOT_STORE=s3) straight to the
bucket, unchecked: `CheckedStore` checks it then, at its first read. The job's status (followed by
one shared watch) says when it is done and with which sha256. The backend runs asynchronous
captures itself (it is a `Jobs` too): a CaptureJob is one, and its uid is the job id.

A webhook becomes the CaptureJob's own `spec.delivery.webhook`, sent by the operator and recorded
in the job's status: the gateway keeps nothing of it. Its secret goes into a Secret made first
(the operator may finish a job at admission, and must find it), then the job, then the job's
ownerReference on the Secret; a gateway killed in between leaves the Secret unowned.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

from pydantic import ValidationError

from kubeshot import logs, tracing
from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureOutcome,
    FailureReason,
    Format,
    Phase,
    ScreenshotPolicy,
    artifact_path,
)
from kubeshot.api.admission import effective_timeout
from kubeshot.api.crds import API_VERSION
from kubeshot.api.delivery import (
    WEBHOOK_SECRET_LABEL,
    DeliveryOutcome,
    DeliveryStatus,
    JobDelivery,
    JobWebhook,
    S3Delivery,
    Webhook,
    WebhookSecretRef,
    WebhookStatus,
)
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, CaptureResult
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.kube import CaptureJobWatch, KubeClient, KubeError, Manifest
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.store import ResultStore
from kubeshot.kube import resource_path
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
from kubeshot.store import Mismatch
from kubeshot.store.files import FileStore
from kubeshot.webhooks import message_id
from kubeshot_capture.artifacts import verify

log = logging.getLogger("kubeshot.gateway.cluster")
CHECKED_KEPT = 65536
"""Job ids whose artifact CheckedStore remembers as checked (the oldest are forgotten first)."""


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


def decodes_as(fmt: Format, data: bytes) -> str | None:
    """Why `data` is not a whole file of format `fmt` (decoded, every pixel), None when it is."""
    try:
        verify(data, fmt)
    except CaptureError as exc:
        return exc.message
    except Exception as exc:  # a decoder's own refusal (Pillow's decompression-bomb check, ...)
        return f"{type(exc).__name__}: {exc}"
    return None


class CheckedStore:
    """The result store of artifacts capture pods put there themselves (KUBESHOT_STORE=s3): a
    pod runs hostile pages, and its bytes passed no upload endpoint, so none is served (nor
    handed out by a presigned GET) before it matched its job's sha256 (the operator's
    `status.result`, from the pod's report) and decoded as the job's format, once, at the first
    read. A refused artifact is deleted. Every read checks the sha256 again (the store's `get`):
    an object changed later is refused too.

    `job_of`: the CaptureJob of a job id, as the watch knows it (None: unknown, refused).
    """

    def __init__(self, store: ResultStore, job_of: Callable[[str], Manifest | None]) -> None:
        self.store = store
        self.ttl_seconds = store.ttl_seconds
        self._job_of = job_of
        self._checked: dict[str, None] = {}  # insertion-ordered: the oldest go first

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def put(self, job_id: str, data: bytes, sha256: str) -> None:
        await self.store.put(job_id, data, sha256)

    async def delete(self, job_id: str) -> None:
        self._checked.pop(job_id, None)
        await self.store.delete(job_id)

    async def expire(self, now: float | None = None) -> int:
        return await self.store.expire(now)

    async def get(self, job_id: str, sha256: str) -> bytes | None:
        try:
            data = await self.store.get(job_id, sha256)
        except Mismatch:
            await self._refuse(job_id, "it does not match the sha256 of its report")
        if data is not None and job_id not in self._checked:
            job = self._job_of(job_id)
            fmt = job_format(job) if job is not None else None
            if fmt is None:
                raise CaptureError(FailureReason.INTERNAL, "the artifact's job is unknown")
            problem = await asyncio.to_thread(decodes_as, fmt, data)
            if problem is not None:
                log.warning("artifact of job %s refused: %s", job_id, problem)
                await self._refuse(job_id, f"it is not a {fmt.value} file")
            self._checked[job_id] = None
            if len(self._checked) > CHECKED_KEPT:
                del self._checked[next(iter(self._checked))]
        return data

    async def download_url(
        self, job_id: str, content_type: str, content_disposition: str | None
    ) -> str | None:
        """A presigned GET only for an artifact checked already (checked now if need be)."""
        if job_id not in self._checked:
            job = self._job_of(job_id)
            if job is None:
                return None
            if await self.get(job_id, job_outcome(job).report().sha256) is None:
                return None
        return await self.store.download_url(job_id, content_type, content_disposition)

    async def _refuse(self, job_id: str, why: str) -> NoReturn:
        await self.store.delete(job_id)
        self._checked.pop(job_id, None)
        raise CaptureError(
            FailureReason.INTERNAL, f"the uploaded artifact was refused and deleted: {why}"
        )


class KubernetesBackend(Backend):
    """CaptureJobs in the caller's namespace, followed by one shared watch; a `Jobs` too.

    `store` is the gateway's result store: the upload endpoint puts the artifacts into a
    FileStore, having checked them; into any other, capture pods put them, and the backend
    reads it through a `CheckedStore`.
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
        self.store = store if isinstance(store, FileStore) else CheckedStore(store, self._job_of)
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
        self,
        caller: Identity,
        policy_name: str,
        options: CaptureOptions,
        webhook: Webhook | None = None,
        s3: S3Delivery | None = None,
    ) -> Manifest:
        if self._closing:
            raise ApiError(
                503, "overloaded", "the gateway is shutting down", headers={"Retry-After": "5"}
            )
        name = f"capture-{uuid.uuid4().hex[:16]}"
        logs.bind(job=f"{caller.namespace}/{name}")
        labels = {MANAGED_BY: GATEWAY, CALLER: caller_label(caller.name)}
        spec = {**options.to_wire(), "policyRef": policy_name}
        secret, job_webhook = None, None
        if webhook is not None:
            ref = WebhookSecretRef(name=f"{name}-webhook")
            secret = await self._webhook_secret(caller.namespace, ref, labels, webhook)
            job_webhook = JobWebhook(url=webhook.url, secret_ref=ref)
        if webhook is not None or s3 is not None:
            spec["delivery"] = JobDelivery(webhook=job_webhook, s3=s3).to_wire()
        with tracing.span("create CaptureJob", {"kubeshot.job": f"{caller.namespace}/{name}"}):
            body = {
                "apiVersion": API_VERSION,
                "kind": "CaptureJob",
                "metadata": {
                    "name": name,
                    "namespace": caller.namespace,
                    "labels": labels,
                    # The operator continues this trace, and logs with this request id.
                    "annotations": trace_annotations(),
                },
                "spec": spec,
            }
            try:
                created = await self.client.request("POST", jobs_path(caller.namespace), body)
            except KubeError as exc:
                if secret is not None:
                    await self._forget_secret(secret)
                raise _unavailable(exc, f"creating a CaptureJob in {caller.namespace}") from None
        self.watch.observe(created, initial=True)
        if secret is not None:
            await self._owned_by(secret, created)
        return created

    async def _webhook_secret(
        self, namespace: str, ref: WebhookSecretRef, labels: dict[str, str], webhook: Webhook
    ) -> Manifest:
        """The Secret with the webhook's signing secret, opted in for the operator."""
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": ref.name, "labels": {**labels, WEBHOOK_SECRET_LABEL: "true"}},
            "stringData": {ref.key: webhook.secret.get_secret_value()},
        }
        try:
            return await self.client.request("POST", _secrets_path(namespace), body)
        except KubeError as exc:
            raise _unavailable(exc, f"creating a Secret in {namespace}") from None

    async def _owned_by(self, secret: Manifest, job: Manifest) -> None:
        """The job's ownerReference on its webhook's Secret, by an update of the version created
        (a patch would answer with any Secret). When it fails the Secret outlives the job."""
        meta = job["metadata"]
        owner = {"apiVersion": API_VERSION, "kind": "CaptureJob"} | {
            key: meta[key] for key in ("name", "uid")
        }
        secret["metadata"]["ownerReferences"] = [owner]
        path = _secrets_path(meta["namespace"], secret["metadata"]["name"])
        try:
            await self.client.request("PUT", path, secret)
        except KubeError as exc:
            log.warning("the webhook Secret of %s stays when it is deleted: %s", meta["name"], exc)

    async def _forget_secret(self, secret: Manifest) -> None:
        """Delete the Secret of a job that was not created."""
        meta = secret["metadata"]
        try:
            await self.client.delete(
                _secrets_path(meta["namespace"], meta["name"]), uid=meta["uid"]
            )
        except KubeError as exc:
            log.warning("the webhook Secret %s of no job stays: %s", meta["name"], exc)

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
        self,
        caller: Identity,
        policy: ScreenshotPolicy,
        options: CaptureOptions,
        webhook: Webhook | None = None,
        s3: S3Delivery | None = None,
    ) -> CaptureJobView:
        """A CaptureJob, created and not waited for (its webhook its own, sent by the operator;
        `s3` its `spec.delivery.s3`: a Secret of the caller's namespace the gateway never reads)."""
        return self.view(await self._create_job(caller, policy.name, options, webhook, s3))

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
                update={"url": artifact_path(store_id(job))}
            )
        return CaptureJobView(
            id=store_id(job),
            phase=phase,
            created_at=str(job["metadata"].get("creationTimestamp", "")),
            completion_time=status.get("completionTime"),
            policy=job_policy(job),
            result=result,
            failure=job_outcome(job).failure if phase is Phase.FAILED else None,
            delivery=job_delivery(job),
        )

    def _job_of(self, job_id: str) -> Manifest | None:
        key = self.watch.by_uid.get(job_id)
        return None if key is None else self.watch.jobs.get(key)

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


def job_delivery(job: Manifest) -> DeliveryStatus | None:
    """How the job's webhook went, as the operator recorded it in its status; Pending until
    then (with the `webhook-id` the operator sends, `msg_<job id>`); and the object put into the
    caller's bucket (`delivery.s3`, once Succeeded); None when the job asks for neither."""
    asked = (job.get("spec") or {}).get("delivery") or {}
    if not asked.get("webhook") and not asked.get("s3"):
        return None
    try:
        recorded = DeliveryStatus.model_validate((job.get("status") or {}).get("delivery") or {})
    except ValidationError:
        recorded = DeliveryStatus()
    pending = WebhookStatus(outcome=DeliveryOutcome.PENDING, id=message_id(store_id(job)))
    webhook = (recorded.webhook or pending) if asked.get("webhook") else None
    return DeliveryStatus(webhook=webhook, s3=recorded.s3)


def _secrets_path(namespace: str, name: str | None = None) -> str:
    return resource_path("v1", "secrets", namespace, name)


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

"""What the handlers do: the CaptureJob lifecycle and ScreenshotPolicy → NetworkPolicy.

One `Reconciler` per operator process (it is Kopf's memo). Decisions come from the pure modules
(`building`, `lifecycle`, `queueing`); this module reads and writes the API server.
Order matters for restarts: a job's status says Running before its pod is created, so an
operator that dies in between never creates a second pod for the same attempt; the pod's
result is recorded before the pod is deleted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from kubeshot import logs, tracing
from kubeshot.api import (
    PROXY_CREDENTIALS_LABEL,
    CaptureError,
    CaptureJobSpec,
    CaptureJobStatus,
    CaptureOptions,
    Failure,
    FailureReason,
    Phase,
    ProxyCredentials,
    Runtime,
    ScreenshotPolicySpec,
    ScreenshotPolicyStatus,
    describe_validation_error,
    is_object_name,
)
from kubeshot.api.admission import admit
from kubeshot.api.crds import API_VERSION
from kubeshot.kube import (
    ApiError,
    Conflict,
    KubeClient,
    NotFound,
    NotOwned,
    controller_uid,
    names,
    resource_path,
)
from kubeshot.kube.names import jobs_path, network_policies_path, policies_path
from kubeshot.operator import building, lifecycle, metrics
from kubeshot.operator.events import EventPoster
from kubeshot.operator.lifecycle import Outcome
from kubeshot.operator.queueing import JobQueue, JobView, PolicyKey
from kubeshot.operator.settings import OperatorSettings

log = logging.getLogger(__name__)
Manifest = dict[str, Any]
JOB = "CaptureJob"
# A job still Pending this long after its creation had its admission interrupted: redo it.
STUCK_ADMISSION = timedelta(seconds=10)
POLICY = "ScreenshotPolicy"
# The Started condition's reason while a job waits for its policy's NetworkPolicy.
NETWORK_POLICY_PENDING = "NetworkPolicyPending"


class Index(Protocol):
    """The part of a Kopf index used here: key → the values of the objects under that key."""

    def __getitem__(self, key: Any) -> Iterable[Any]: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Any: ...


def not_ours(kind: str, name: str) -> Failure:
    """A job whose Secret or Pod name is taken by an object the job does not own."""
    message = (
        f"a {kind} named {name} exists already and does not belong to this CaptureJob"
        " (its ownerReference is not this job): delete it, or create the CaptureJob under"
        " another name"
    )
    return Failure(reason=FailureReason.INVALID_SPEC, message=message)


def upload_token(secret: Mapping[str, Any]) -> str:
    """The upload token in a request Secret; empty when it holds none."""
    try:
        raw = base64.b64decode((secret.get("data") or {}).get(building.REQUEST_KEY, ""))
        token = (json.loads(raw).get("upload") or {}).get("token", "")
    except (ValueError, AttributeError):
        return ""
    return token if isinstance(token, str) else ""


class Reconciler:
    """The operator's state and actions (one per process)."""

    def __init__(self, client: KubeClient, settings: OperatorSettings) -> None:
        self.client = client
        self.settings = settings
        self.queue = JobQueue()
        self.events = EventPoster(client)
        self.jobs: Index | None = None
        self.policies: Index | None = None
        self._locks: defaultdict[PolicyKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._active_jobs: dict[PolicyKey, int] = {}
        self._policies: dict[PolicyKey, tuple[object, ScreenshotPolicySpec | Failure]] = {}
        self._specs: dict[str, tuple[CaptureJobSpec, CaptureOptions] | Failure] = {}
        self._admitting: set[str] = set()
        self._starting: set[str] = set()  # status says Running, the pod may not exist yet
        self._job_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def bind(self, jobs: Index, policies: Index) -> None:
        """Kopf's indexes of CaptureJobs (by policy) and ScreenshotPolicies (by name)."""
        self.jobs, self.policies = jobs, policies

    # ----------------------------------------------------------------------------- lookups

    def jobs_of(self, key: PolicyKey) -> list[JobView]:
        if self.jobs is None or key not in self.jobs:
            return []
        return list(self.jobs[key])

    async def policy_body(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ScreenshotPolicy: from the index, else (just created?) from the API server.

        A name no object can have (".", "..", "a/b" from a job stored before the CRD checked
        names) names no policy: it is never put into a URL, where it would address another one.
        """
        if not is_object_name(name):
            return None
        if self.policies is not None and (namespace, name) in self.policies:
            for body in self.policies[(namespace, name)]:
                return dict(body)
        try:
            return await self.client.get(policies_path(namespace, name))
        except NotFound:
            return None

    async def parsed_policy(
        self, namespace: str, name: str
    ) -> ScreenshotPolicySpec | Failure | None:
        """The policy's spec, parsed once per version; a Failure when invalid; None if absent."""
        body = await self.policy_body(namespace, name)
        if body is None:
            return None
        meta = body.get("metadata") or {}
        version = (meta.get("uid"), meta.get("generation"), meta.get("resourceVersion"))
        cached = self._policies.get((namespace, name))
        if cached is not None and cached[0] == version:
            return cached[1]
        parsed: ScreenshotPolicySpec | Failure
        try:
            parsed = ScreenshotPolicySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            problems = describe_validation_error(exc, "spec")
            message = f"ScreenshotPolicy {name!r} is invalid: {problems}"
            parsed = Failure(reason=FailureReason.INVALID_SPEC, message=message[:1024])
        self._policies[(namespace, name)] = (version, parsed)
        return parsed

    def parsed_spec(self, view: JobView) -> tuple[CaptureJobSpec, CaptureOptions] | Failure:
        """The job's spec and its capture options, validated once per job (a CaptureJob's spec
        is immutable); a Failure when invalid."""
        parsed = self._specs.get(view.uid)
        if parsed is None:
            try:
                spec = CaptureJobSpec.model_validate(dict(view.spec))
                parsed = (spec, spec.capture_options())
            except ValidationError as exc:
                problems = describe_validation_error(exc, "spec")
                parsed = Failure(reason=FailureReason.INVALID_SPEC, message=problems[:1024])
            self._specs[view.uid] = parsed
        return parsed

    async def effective(
        self, view: JobView
    ) -> tuple[CaptureOptions, ScreenshotPolicySpec] | Failure:
        """The job's options and its policy as it is now, admitted; or why the job can never
        run (admission and every start check the job against its policy's current version)."""
        parsed = self.parsed_spec(view)
        if isinstance(parsed, Failure):
            return parsed
        options = parsed[1]
        policy = await self.parsed_policy(view.namespace, view.policy)
        if policy is None:
            message = f"ScreenshotPolicy {view.policy!r} not found in namespace {view.namespace}"
            return Failure(reason=FailureReason.POLICY_NOT_FOUND, message=message)
        if isinstance(policy, Failure):
            return policy
        try:
            admit(options, policy)
        except CaptureError as exc:
            return Failure(reason=exc.reason, message=exc.message[:1024])
        return options, policy

    # ---------------------------------------------------------------------------- CaptureJob

    async def job_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        view = JobView.from_body(body)
        if event_type == "DELETED":
            self.queue.forget(view.uid)
            self._specs.pop(view.uid, None)
            self._job_locks.pop((view.namespace, view.name), None)
            await self.dispatch(view.key)
            return
        self.queue.observe(view)
        if view.phase is Phase.PENDING:
            await self.admit(view, body)
            return
        if view.phase is Phase.RUNNING and event_type is None:
            # Listed at start-up: the pod may have gone while no operator was watching.
            await self.check_pods([view])
        await self.dispatch(view.key)

    async def admit(self, view: JobView, body: Mapping[str, Any]) -> None:
        """Validate a new job; start it, or queue it, or fail it for good. Once per job."""
        if self.queue.known(view.uid) or view.uid in self._admitting:
            return
        self._admitting.add(view.uid)
        try:
            with _job_scope(view), _traced("admit CaptureJob", view):
                await self._admit(view, body)
        finally:
            self._admitting.discard(view.uid)

    async def _admit(self, view: JobView, body: Mapping[str, Any]) -> None:
        checked = await self.effective(view)
        at = lifecycle.now()
        if isinstance(checked, Failure):
            patch = lifecycle.rejected_status(view.status, checked, view.generation, at)
            await self.patch_status(view, patch)
            self.queue.settle(view.uid)
            metrics.JOBS_FINISHED.labels(Phase.FAILED.value, checked.reason.value).inc()
            self.events.post(JOB, body, "Warning", checked.reason.value, checked.message)
            await self.dispatch(view.key)  # it no longer holds back younger jobs
            return
        status = lifecycle.queued_status(view.status, view.generation, at)
        admitted = replace(view, status=view.status.merged(status))
        # Straight to Running when a slot is free (one status write less). Queued when the
        # policy's slots are taken, written under the policy's lock so that no start can race
        # it. A job waiting only for older jobs' admission stays as it is for that moment.
        async with self._locks[view.key]:
            self.queue.admit(admitted)
            chosen = await self._plan(view.key)
            limit = await self.limit(view.key)
            waits = all(c.uid != view.uid for c in chosen) and not self.queue.started(view.uid)
            if waits and self.queue.full(self.jobs_of(view.key), admitted, limit):
                await self.patch_status(view, status)
                self.events.post(
                    JOB, body, "Normal", "Queued", f"waiting under policy {view.policy}"
                )
        if chosen:
            await asyncio.gather(*(self.start(c) for c in chosen))

    async def patch_status(self, view: JobView, status: CaptureJobStatus) -> Manifest:
        return await self.client.merge_patch(
            jobs_path(view.namespace, view.name) + "/status", {"status": status.patch()}
        )

    async def dispatch(self, key: PolicyKey) -> None:
        """Start as many queued jobs of the policy as its concurrency limit allows, FIFO."""
        async with self._locks[key]:
            chosen = await self._plan(key)
        if chosen:
            await asyncio.gather(*(self.start(view) for view in chosen))

    async def mark_queued(self, key: PolicyKey) -> None:
        """Admitted jobs that wait for a slot but still say Pending: say Queued."""
        async with self._locks[key]:
            jobs, limit = self.jobs_of(key), await self.limit(key)
            pending = {j.uid for j in jobs if j.phase is Phase.PENDING}
            for job in self.queue.admitted(key):
                if job.uid not in pending:
                    continue
                if self.queue.full(jobs, job, limit):
                    await self.patch_status(job, job.status)
                    message = f"waiting under policy {job.policy}"
                    self.events.post(JOB, _body(job), "Normal", "Queued", message)

    async def limit(self, key: PolicyKey) -> int:
        """The policy's maxConcurrentJobs. A missing or broken policy: 1, so that its jobs start
        one by one, to fail with a reason."""
        policy = await self.parsed_policy(*key)
        return policy.limits.max_concurrent_jobs if isinstance(policy, ScreenshotPolicySpec) else 1

    async def _plan(self, key: PolicyKey) -> list[JobView]:
        """The jobs of the policy to start now (call with the policy's lock held)."""
        jobs = self.jobs_of(key)
        chosen = self.queue.plan(jobs, await self.limit(key), time.time())
        metrics.WORKQUEUE_DEPTH.labels(*key).set(len(self.queue.waiting(jobs)))
        return chosen

    async def start(self, view: JobView) -> None:
        """Secret (kept across attempts), status Running, then the attempt's pod."""
        self._starting.add(view.uid)
        try:
            with _job_scope(view), _traced("start capture pod", view):
                await self._start(view)
        finally:
            self._starting.discard(view.uid)

    async def _start(self, view: JobView) -> None:
        checked = await self.effective(view)
        if isinstance(checked, Failure):
            at = lifecycle.now()
            await self.patch_status(
                view, lifecycle.rejected_status(view.status, checked, view.generation, at)
            )
            self.queue.settle(view.uid)
            self.events.post(JOB, _body(view), "Warning", checked.reason.value, checked.message)
            return
        options, policy = checked
        job = building.JobRef(view.name, view.namespace, view.uid)
        attempt = view.status.attempts + 1
        pod = building.build_pod(
            job, attempt, view.policy, policy, options, self.settings, log_context=logs.context()
        )
        pod_name = pod["metadata"]["name"]
        # No capture pod without the NetworkPolicy of its ScreenshotPolicy around it: until that
        # exists as built and selects the pod, the job waits (Queued, reason NetworkPolicyPending).
        problem = await self.confinement_problem(view, policy, pod["metadata"]["labels"])
        if problem is not None:
            await self.wait_for_confinement(view, problem)
            return
        proposed = secrets.token_urlsafe(32)

        def running_status(token: str) -> CaptureJobStatus:
            digest = hashlib.sha256(token.encode()).hexdigest()
            at = lifecycle.now()
            return lifecycle.running_status(
                view.status, pod_name, attempt, digest, view.generation, at
            )

        # The status must say Running before the pod exists (a restarted operator then never
        # makes a second pod); the Secret may come in parallel on a first attempt, when it
        # almost never exists yet. Later attempts reuse the Secret, so it is read first.
        kept = view.status.upload_token_sha256 if attempt > 1 else None
        secret = self.ensure_secret(job, view.policy, options, policy, proposed, kept)
        if attempt == 1:
            status = running_status(proposed)
            token, patched = await asyncio.gather(
                secret, self.patch_status(view, status), return_exceptions=True
            )
        else:
            try:
                token = await secret
            except (CaptureError, ApiError) as exc:
                token = exc
            status = running_status(token if isinstance(token, str) else proposed)
            try:
                patched = await self.patch_status(view, status)
            except ApiError as exc:
                patched = exc
        if isinstance(patched, NotFound):  # deleted meanwhile; the GC takes the Secret
            self.queue.forget(view.uid)
            return
        if isinstance(patched, BaseException):
            raise patched
        running = replace(view, status=view.status.merged(status))
        if isinstance(token, CaptureError):
            failure = Failure(reason=token.reason, message=token.message)
            await self.conclude(running, Outcome(failure=failure), None)
            return
        if isinstance(token, ApiError):
            message = f"request Secret not created: {token.message}"
            await self.conclude(running, Outcome.failed(FailureReason.INTERNAL, message), None)
            return
        if isinstance(token, BaseException):
            raise token
        try:
            await self.client.create_or_adopt(resource_path("v1", "pods", view.namespace), pod)
        except NotOwned:  # someone made a pod of that name first: never taken for the attempt's
            await self.conclude(running, Outcome(failure=not_ours("Pod", pod_name)), None)
            return
        except ApiError as exc:
            outcome = Outcome.failed(
                FailureReason.INTERNAL, f"capture pod not created: {exc.message}"
            )
            await self.conclude(running, outcome, None)
            return
        metrics.PODS_CREATED.inc()
        if attempt == 1:
            metrics.left_queue(view.created)
        log.info("%s/%s: attempt %d in pod %s", view.namespace, view.name, attempt, pod_name)
        self.events.post(
            JOB, _body(view), "Normal", "Started", f"attempt {attempt}: pod {pod_name}"
        )

    async def ensure_secret(
        self,
        job: building.JobRef,
        policy_name: str,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        token: str,
        kept_sha256: str | None,
    ) -> str:
        """The job's request Secret; returns the job's upload token.

        Later attempts reuse the Secret of the first (`kept_sha256`: its token's hash, as the
        job's status says, which only the operator writes), so that the token and the proxy
        credentials stay the job's own. An existing Secret is used only when the job owns it (its
        controller ownerReference) and its token is the one the status names; one the job owns
        but cannot vouch for (left by a start interrupted before its status was written) is
        replaced; one it does not own fails the job (CaptureError), and is left alone.
        """
        path = resource_path("v1", "secrets", job.namespace)
        name = building.secret_name(job)
        if kept_sha256 is not None:
            with contextlib.suppress(NotFound):
                existing = await self.client.get(f"{path}/{name}")
                kept = self._vouched_token(existing, job, kept_sha256)
                if kept:
                    return kept
                await self._delete_owned(f"{path}/{name}", existing)
        proxy = await self.proxy_credentials(job.namespace, policy)
        request = building.build_request(
            options,
            policy,
            upload_url=self.settings.upload_url_for(job.namespace, job.name),
            upload_token=token,
            proxy=proxy,
        )
        manifest = building.build_secret(job, policy_name, request)
        for _ in range(2):
            try:
                existing, fresh = await self.client.create_or_adopt(path, manifest)
            except NotOwned:
                failure = not_ours("Secret", name)
                raise CaptureError(failure.reason, failure.message) from None
            if fresh:
                return token
            kept = self._vouched_token(existing, job, kept_sha256)
            if kept:
                return kept
            await self._delete_owned(f"{path}/{name}", existing)
        raise Conflict(409, "Conflict", f"the request Secret {name} was made again meanwhile")

    @staticmethod
    def _vouched_token(secret: Manifest, job: building.JobRef, sha256: str | None) -> str:
        """The Secret's upload token if the job owns the Secret and its status names the token;
        CaptureError when the job does not own it; empty when it cannot vouch for the token."""
        if controller_uid(secret) != job.uid:
            failure = not_ours("Secret", building.secret_name(job))
            raise CaptureError(failure.reason, failure.message)
        token = upload_token(secret)
        if token and sha256 is not None and hashlib.sha256(token.encode()).hexdigest() == sha256:
            return token
        return ""

    async def _delete_owned(self, path: str, existing: Manifest) -> None:
        """Delete that very object (its uid), not one made under its name meanwhile."""
        uid = (existing.get("metadata") or {}).get("uid")
        with contextlib.suppress(Conflict):
            await self.client.delete(path, uid=str(uid) if uid else None)

    async def proxy_credentials(
        self, namespace: str, policy: ScreenshotPolicySpec
    ) -> ProxyCredentials | None:
        """The policy's upstream proxy with the credentials of its Secret.

        Only a Secret that opts in (label `kubeshot.dev/proxy-credentials: "true"`) is read:
        a policy's author must not be able to send any other Secret of the namespace (a service
        account token, a registry password) to a proxy of their choosing. A missing Secret and
        one that has not opted in are refused alike, so that the answer tells nothing about the
        namespace's other Secrets.
        """
        proxy = policy.network.proxy
        if proxy is None:
            return None
        if proxy.credentials_secret_ref is None:
            return ProxyCredentials(server=proxy.server)
        ref = proxy.credentials_secret_ref
        refused = CaptureError(
            FailureReason.INVALID_SPEC,
            f"proxy credentials Secret {ref.name!r} not found, or not labelled"
            f' {PROXY_CREDENTIALS_LABEL}: "true"',
        )
        try:
            secret = await self.client.get(resource_path("v1", "secrets", namespace, ref.name))
        except NotFound:
            raise refused from None
        if ((secret.get("metadata") or {}).get("labels") or {}).get(
            PROXY_CREDENTIALS_LABEL
        ) != "true":
            raise refused
        data = secret.get("data") or {}

        def value(key: str) -> str | None:
            return base64.b64decode(data[key]).decode() if key in data else None

        return ProxyCredentials.model_validate(
            {
                "server": proxy.server,
                "username": value(ref.username_key),
                "password": value(ref.password_key),
            }
        )

    async def confinement_problem(
        self, view: JobView, policy: ScreenshotPolicySpec, pod_labels: Mapping[str, str]
    ) -> str | None:
        """Why the job's capture pod would not be confined by its policy's NetworkPolicy yet;
        None when that exists as built and selects the pod.

        Missing or different (the policy's own reconciliation has not run yet, or failed, or
        someone changed the NetworkPolicy), it is applied again, from the ScreenshotPolicy as the
        API server has it now, and looked at once more.
        """
        body = await self.policy_body(view.namespace, view.policy)
        if body is None:
            return f"ScreenshotPolicy {view.policy} not found"
        wanted = self._network_policy(view.namespace, view.policy, body, policy)
        path = network_policies_path(view.namespace, wanted["metadata"]["name"])
        try:
            live: Manifest | None = await self.client.get(path)
        except NotFound:
            live = None
        problem = building.confinement_problem(live, wanted, pod_labels)
        if problem is None:
            return None
        try:
            fresh = await self.client.get(policies_path(view.namespace, view.policy))
            current = ScreenshotPolicySpec.model_validate(dict(fresh.get("spec") or {}))
        except NotFound:
            return f"ScreenshotPolicy {view.policy} not found"
        except ValidationError as exc:
            problems = describe_validation_error(exc, "spec")
            return f"ScreenshotPolicy {view.policy} is invalid: {problems}"
        wanted = self._network_policy(view.namespace, view.policy, fresh, current)
        try:
            live = await self.client.apply(path, wanted, names.MANAGER)
        except ApiError as exc:
            return f"{problem}, and applying it failed: {exc.message}"
        return building.confinement_problem(live, wanted, pod_labels)

    def _network_policy(
        self, namespace: str, name: str, body: Mapping[str, Any], spec: ScreenshotPolicySpec
    ) -> Manifest:
        uid = str((body.get("metadata") or {}).get("uid", ""))
        ref = building.PolicyRef(name, namespace, uid)
        return building.build_network_policy(ref, spec, self.settings)

    async def wait_for_confinement(self, view: JobView, problem: str) -> None:
        """The job waits, Queued, until its NetworkPolicy confines its pod: the policy's
        reconciliation and every sweep try to start it again."""
        self.queue.release(view.uid)
        message = f"waiting for the NetworkPolicy of ScreenshotPolicy {view.policy}: {problem}"
        message = message[:1024]
        started = [c for c in view.status.conditions if c.type == lifecycle.STARTED]
        if [(c.reason, c.message) for c in started] == [(NETWORK_POLICY_PENDING, message)]:
            return
        at = lifecycle.now()
        status = lifecycle.queued_status(
            view.status, view.generation, at, message, reason=NETWORK_POLICY_PENDING
        )
        with contextlib.suppress(NotFound):
            await self.patch_status(view, status)
            self.events.post(JOB, _body(view), "Warning", NETWORK_POLICY_PENDING, message)

    async def pod_event(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        """A capture pod ended or vanished: record the attempt's outcome on its job.

        A pod is a job's only by its controller ownerReference: labels and annotations are
        anyone's to write, and a pod someone made under a job's pod name is never its attempt.
        """
        meta = pod.get("metadata", {})
        namespace, pod_name = meta.get("namespace", ""), meta.get("name", "")
        owner = building.owning_job(pod)
        if owner is None:
            return
        job_name, job_uid = owner
        if event_type == "DELETED":
            outcome: Outcome | None = Outcome.failed(
                FailureReason.POD_LOST, f"the capture pod {pod_name} was deleted before it finished"
            )
        else:
            outcome = lifecycle.with_container_times(lifecycle.pod_outcome(dict(pod)), dict(pod))
        if outcome is None:
            return
        pod_uid = None if event_type == "DELETED" else str(meta.get("uid") or "") or None
        await self.record(namespace, job_name, job_uid, pod_name, outcome, pod_uid)

    async def record(
        self,
        namespace: str,
        job_name: str,
        job_uid: str,
        pod_name: str,
        outcome: Outcome,
        pod_uid: str | None,
    ) -> None:
        """Record the outcome of the attempt in pod_name, once, if it is the job's current one.

        pod_uid: the pod, when it still exists (it is removed once its outcome is recorded).

        The pod watch and the sweeper can both notice an attempt's end: a per-job lock and a
        fresh read of the job make the first one record it and the second one see that.
        """
        async with self._job_locks[(namespace, job_name)]:
            try:
                body = await self.client.get(jobs_path(namespace, job_name))
            except NotFound:
                body = None
            view = JobView.from_body(body) if body is not None else None
            ours = view is not None and view.uid == job_uid
            current = (
                view is not None
                and ours
                and view.phase is Phase.RUNNING
                and view.status.pod_name == pod_name
            )
            if view is None or not current:
                if ours and pod_uid is not None:  # a leftover of an attempt already recorded
                    await self.delete_pod(namespace, pod_name, pod_uid)
                if view is None:
                    self._job_locks.pop((namespace, job_name), None)
                return
            with _job_scope(view), _traced("record capture pod", view):
                _record_pod_span(view, pod_name, outcome)
                await self.conclude(view, outcome, pod_name, pod_uid=pod_uid)

    async def conclude(
        self,
        view: JobView,
        outcome: Outcome,
        pod_name: str | None,
        attempted: int | None = None,
        *,
        pod_uid: str | None = None,
    ) -> None:
        """Record an attempt's outcome: finished, or queued again for a retry; then clean up
        (the pod pod_uid, when it still exists; the job's request Secret when it finished)."""
        at = lifecycle.now()
        attempts = attempted if attempted is not None else max(view.status.attempts, 1)
        parsed = self.parsed_spec(view)
        retries = parsed[0].retries if not isinstance(parsed, Failure) else 0
        failure = outcome.failure
        if failure is not None and lifecycle.may_retry(failure, attempts, retries):
            delay = lifecycle.backoff_seconds(
                attempts,
                self.settings.retry_backoff_seconds,
                self.settings.retry_backoff_max_seconds,
            )
            status = lifecycle.retry_status(view.status, failure, delay, view.generation, at)
            await self.patch_status(view, _attempts(status, attempted))
            self.queue.release(view.uid)
            metrics.RETRIES.labels(failure.reason.value).inc()
            self.events.post(JOB, _body(view), "Warning", "Retrying", status.conditions[-1].message)
            assert status.next_attempt_time is not None
            self._later(
                lifecycle.parse_time(status.next_attempt_time).timestamp() - time.time(), view.key
            )
        else:
            status = lifecycle.finished_status(view.status, outcome, view.generation, at)
            await self.patch_status(view, _attempts(status, attempted))
            self.queue.settle(view.uid)
            reason = failure.reason.value if failure is not None else ""
            metrics.JOBS_FINISHED.labels(status.phase.value, reason).inc()
            if failure is None:
                self.events.post(JOB, _body(view), "Normal", "Succeeded", "the capture succeeded")
            else:
                self.events.post(JOB, _body(view), "Warning", failure.reason.value, failure.message)
            await self.delete_secret(building.JobRef(view.name, view.namespace, view.uid))
        if pod_name is not None and pod_uid is not None:  # only now that its outcome is recorded
            await self.delete_pod(view.namespace, pod_name, pod_uid)
        await self.dispatch(view.key)

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete that very pod (a precondition on its uid), never one made under its name."""
        with contextlib.suppress(Conflict):
            await self.client.delete(resource_path("v1", "pods", namespace, name), uid=uid)

    async def delete_secret(self, job: building.JobRef) -> None:
        """Delete the job's request Secret if the job owns it; a stranger's is left alone."""
        path = resource_path("v1", "secrets", job.namespace, building.secret_name(job))
        try:
            secret = await self.client.get(path)
        except NotFound:
            return
        if controller_uid(secret) == job.uid:
            await self._delete_owned(path, secret)

    def _later(self, delay: float, key: PolicyKey) -> None:
        metrics.requeued()

        async def wake() -> None:
            await asyncio.sleep(delay + 0.01)
            await self.dispatch(key)

        task = asyncio.get_running_loop().create_task(wake())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def check_pods(self, views: list[JobView]) -> None:
        """Running jobs whose pod is gone: the pod was lost."""
        for view in views:
            pod = view.status.pod_name
            if pod is None or view.uid in self._starting:
                continue
            try:
                await self.client.get(resource_path("v1", "pods", view.namespace, pod))
                continue
            except NotFound:
                pass
            outcome = Outcome.failed(FailureReason.POD_LOST, f"the capture pod {pod} disappeared")
            await self.record(view.namespace, view.name, view.uid, pod, outcome, None)

    # ------------------------------------------------------------------------- housekeeping

    def all_jobs(self) -> list[JobView]:
        if self.jobs is None:
            return []
        return [view for key in list(self.jobs) for view in self.jobs[key]]

    async def sweep(self) -> None:
        """Lost pods, due retries, expired finished jobs, policy activeJobs, gauges."""
        views = self.all_jobs()
        running = [v for v in views if v.phase is Phase.RUNNING and not self.queue.started(v.uid)]
        listed: set[tuple[str, str]] = set()
        selector = ",".join(f"{key}={value}" for key, value in names.CAPTURE_PODS.items())
        for namespace in sorted({v.namespace for v in running}):
            pods = await self.client.get(
                resource_path("v1", "pods", namespace), params={"labelSelector": selector}
            )
            for pod in pods.get("items", []):
                listed.add((namespace, pod["metadata"]["name"]))
                if lifecycle.pod_outcome(pod) is not None:  # an end the watch did not deliver
                    await self.pod_event("MODIFIED", pod)
        lost = [v for v in running if (v.namespace, v.status.pod_name) not in listed]
        await self.check_pods(lost)
        now = datetime.now(UTC)
        for view in views:
            if view.phase.finished and await self.expired(view, now):
                await self.client.delete(jobs_path(view.namespace, view.name))
                log.info(
                    "deleted %s/%s: its TTL after finishing has passed", view.namespace, view.name
                )
        by_phase: dict[str, int] = {p.value: 0 for p in Phase}
        active: dict[PolicyKey, int] = defaultdict(int)
        for view in views:
            by_phase[view.phase.value] += 1
            if view.phase is Phase.RUNNING:
                active[view.key] += 1
        for phase, count in by_phase.items():
            metrics.JOBS.labels(phase).set(count)
        for view in self.queue.undecided(views):  # an admission that failed half-way
            if view.created and now - lifecycle.parse_time(view.created) > STUCK_ADMISSION:
                await self.admit(view, _body(view))
        for key in {v.key for v in views if not v.phase.finished}:
            await self.dispatch(key)
            await self.mark_queued(key)
        await self.update_active_jobs(active)
        await self.resync_policies()

    async def resync_policies(self) -> None:
        """Policies whose NetworkPolicy could not be applied at their last change: again."""
        if self.policies is None:
            return
        for key in list(self.policies):
            for body in self.policies[key]:
                generation = (body.get("metadata") or {}).get("generation")
                if (body.get("status") or {}).get("observedGeneration") != generation:
                    await self.policy_event(None, body)

    async def expired(self, view: JobView, now: datetime) -> bool:
        """Whether the job finished longer ago than its TTL (else its policy's) says."""
        if not view.status.completion_time:
            return False
        spec = self.parsed_spec(view)
        ttl = None if isinstance(spec, Failure) else spec[0].ttl_seconds_after_finished
        if ttl is None:
            policy = await self.parsed_policy(view.namespace, view.policy)
            runtime = policy.runtime if isinstance(policy, ScreenshotPolicySpec) else Runtime()
            ttl = runtime.ttl_seconds_after_finished
        finished = lifecycle.parse_time(view.status.completion_time)
        return now >= finished + timedelta(seconds=ttl)

    async def update_active_jobs(self, active: Mapping[PolicyKey, int]) -> None:
        if self.policies is None:
            return
        for key in list(self.policies):
            count = active.get(key, 0)
            if self._active_jobs.get(key) == count:
                continue
            try:
                patch = ScreenshotPolicyStatus(active_jobs=count).patch()
                await self.client.merge_patch(policies_path(*key) + "/status", {"status": patch})
                self._active_jobs[key] = count
            except NotFound:
                self._active_jobs.pop(key, None)

    # ---------------------------------------------------------------------- ScreenshotPolicy

    async def policy_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if event_type == "DELETED":  # its NetworkPolicy goes with it (ownerReference)
            self._active_jobs.pop((namespace, name), None)
            await self.dispatch((namespace, name))
            return
        generation = meta.get("generation")
        try:
            status = ScreenshotPolicyStatus.model_validate(body.get("status") or {})
        except ValidationError:  # never as the operator wrote it: written anew
            status = ScreenshotPolicyStatus()
        if status.observed_generation == generation and event_type is not None:
            return  # our own status write coming back, or nothing that changes the spec
        at = lifecycle.now()

        async def ready(ok: bool, reason: str, message: str, **fields: Any) -> None:
            conditions = lifecycle.set_condition(
                status.conditions, lifecycle.READY, ok, reason, message, generation, at
            )
            patch = ScreenshotPolicyStatus(conditions=conditions, **fields)
            await self.client.merge_patch(
                policies_path(namespace, name) + "/status", {"status": patch.patch()}
            )

        try:
            spec = ScreenshotPolicySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            message = describe_validation_error(exc, "spec")
            await ready(False, "InvalidSpec", message, observed_generation=generation)
            self.events.post(POLICY, body, "Warning", "InvalidSpec", message)
            return
        manifest = self._network_policy(namespace, name, body, spec)
        np_name = manifest["metadata"]["name"]
        path = network_policies_path(namespace, np_name)
        try:
            await self.client.apply(path, manifest, names.MANAGER)
        except ApiError as exc:
            await ready(False, "NetworkPolicyFailed", exc.message)
            self.events.post(POLICY, body, "Warning", "NetworkPolicyFailed", exc.message)
            raise
        active = sum(1 for v in self.jobs_of((namespace, name)) if v.phase is Phase.RUNNING)
        await ready(
            True,
            "NetworkPolicyApplied",
            f"NetworkPolicy {np_name} confines the capture pods",
            observed_generation=generation,
            network_policy_name=np_name,
            active_jobs=active,
        )
        self._active_jobs[(namespace, name)] = active
        self.events.post(POLICY, body, "Normal", "NetworkPolicyApplied", f"NetworkPolicy {np_name}")
        await self.dispatch((namespace, name))


def _job_scope(view: JobView) -> contextlib.AbstractContextManager[None]:
    """The job's fields on the log lines inside (the request id only as the gateway makes them:
    an annotation is anyone's to write)."""
    request_id = tracing.request_id(view.annotations.get(tracing.REQUEST_ID_ANNOTATION))
    return logs.bound(
        job=f"{view.namespace}/{view.name}", policy=view.policy, request_id=request_id
    )


def _traced(name: str, view: JobView) -> contextlib.AbstractContextManager[object]:
    """A span of the job's trace: a child of the gateway's span its traceparent annotation names
    (validated), else the root of a trace of its own."""
    parent = tracing.remote_parent(view.annotations.get(tracing.TRACEPARENT_ANNOTATION))
    attributes = {"kubeshot.job": f"{view.namespace}/{view.name}", "kubeshot.policy": view.policy}
    return tracing.span(name, attributes, parent=parent)


def _record_pod_span(view: JobView, pod_name: str, outcome: Outcome) -> None:
    """The capture pod's span and its phases, with the times the pod reported (it exports no
    spans itself), beside the operator's own in the job's trace."""
    times = outcome.pod_span()
    if times is None:
        return
    parent = tracing.remote_parent(view.annotations.get(tracing.TRACEPARENT_ANNOTATION))
    pod = tracing.record_span(
        "capture pod",
        *times,
        parent,
        {"kubeshot.job": f"{view.namespace}/{view.name}", "kubeshot.pod": pod_name},
        error=outcome.failure.reason.value if outcome.failure is not None else None,
    )
    tracing.record_phases(outcome.phases, parent=pod)


def _body(view: JobView) -> Manifest:
    """Enough of a job's body to name it (in Events) and to rebuild a view from it."""
    return {
        "apiVersion": API_VERSION,
        "kind": JOB,
        "metadata": {
            "name": view.name,
            "namespace": view.namespace,
            "uid": view.uid,
            "creationTimestamp": view.created,
            "generation": view.generation,
            "annotations": dict(view.annotations),
        },
        "spec": dict(view.spec),
        "status": view.status.to_wire(),
    }


def _attempts(status: CaptureJobStatus, attempted: int | None) -> CaptureJobStatus:
    """status, saying `attempted` attempts when given."""
    return status if attempted is None else status.merged(CaptureJobStatus(attempts=attempted))

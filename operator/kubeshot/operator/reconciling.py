"""What the handlers do with CaptureJobs: admit, queue, start attempts, record how they ended.

One `Reconciler` per operator process (it is Kopf's memo). Decisions come from the pure modules
(`building`, `lifecycle`, `queueing`); a job's Secrets are `credentials`', its pod's NetworkPolicy
`confinement`'s, ScreenshotPolicies `policies`'. Order matters for restarts: a job's status says
Running before its pod is created, so an operator that dies in between never creates a second
pod for the same attempt; the pod's result is recorded before the pod is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubeshot import logs, tracing
from kubeshot.api import (
    CaptureError,
    CaptureJobSpec,
    CaptureJobStatus,
    CaptureOptions,
    Failure,
    FailureReason,
    Phase,
    Runtime,
    ScreenshotPolicySpec,
    describe_validation_error,
)
from kubeshot.api.admission import admit
from kubeshot.api.delivery import DeliveryStatus, S3Delivery
from kubeshot.kube import ApiError, Conflict, KubeClient, NotFound, NotOwned, names, resource_path
from kubeshot.kube.names import jobs_path
from kubeshot.operator import building, credentials, lifecycle, metrics
from kubeshot.operator.confinement import NETWORK_POLICY_PENDING, Confinement
from kubeshot.operator.events import EventPoster, build_event
from kubeshot.operator.lifecycle import Outcome
from kubeshot.operator.notifying import Notifier
from kubeshot.operator.policies import Index, Policies
from kubeshot.operator.queueing import Expect, JobQueue, plan, waits_for_slot
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import JobView, PolicyKey
from kubeshot.operator.warming import WarmPool

log = logging.getLogger(__name__)
JOB = "CaptureJob"
# A job still Pending this long after its creation had its admission interrupted: redo it.
STUCK_ADMISSION = timedelta(seconds=10)


class Reconciler:
    """The operator's actions on CaptureJobs (one per process).

    The truth is in Kopf's indexes (`jobs`, `policies.index`). Kept beside them:
    - `queue`: decisions the watch has not shown yet, one per job (see `queueing`);
    - `confinement`: the reads of NetworkPolicies under way, shared by starts (see there);
    - `_specs`: each job's spec as validated, by uid (a CaptureJob's spec is immutable);
    - `_locks`, one per policy: held while deciding which of its jobs start or say Queued;
    - `_rounds`: each policy's next round of those decisions, which dispatches join;
    - `_saying`: the Queued writes under way, by job uid (a start of the job waits for its own);
    - `_job_locks`, one per job whose attempt is being recorded: the pod watch and the sweeper
      can both see an attempt end, and the first records it;
    - `_wakeups`: a retrying job's policy is dispatched at its nextAttemptTime (the references
      keep the tasks alive).
    """

    def __init__(self, client: KubeClient, settings: OperatorSettings) -> None:
        self.client = client
        self.settings = settings
        self.queue = JobQueue()
        self.events = EventPoster(client)
        self.policies = Policies(client, settings, self.events)
        self.confinement = Confinement(client, settings)
        self.notifier = Notifier(client, self.policies)
        self.pool = WarmPool(client, settings, self.policies, self.confinement)
        self.jobs: Index | None = None
        self._specs: dict[str, tuple[CaptureJobSpec, CaptureOptions] | Failure] = {}
        self._locks: defaultdict[PolicyKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._rounds: dict[PolicyKey, asyncio.Task[list[asyncio.Task[None]]]] = {}
        self._saying: dict[str, asyncio.Task[None]] = {}
        self._job_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._wakeups: set[asyncio.Task[None]] = set()

    def bind(self, jobs: Index, policies: Index) -> None:
        """Kopf's indexes of CaptureJobs (by policy) and ScreenshotPolicies (by name)."""
        self.jobs, self.policies.index = jobs, policies

    # ----------------------------------------------------------------------------- lookups

    def jobs_of(self, key: PolicyKey) -> list[JobView]:
        if self.jobs is None or key not in self.jobs:
            return []
        return list(self.jobs[key])

    def all_jobs(self) -> list[JobView]:
        return [view for key in list(self.jobs or ()) for view in (self.jobs or {})[key]]

    def parsed_spec(self, view: JobView) -> tuple[CaptureJobSpec, CaptureOptions] | Failure:
        """The job's spec and its capture options, validated once per job; a Failure when
        invalid."""
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

    def s3_delivery(self, view: JobView) -> S3Delivery | None:
        """The job's `delivery.s3`, if its spec is valid and asks for one."""
        parsed = self.parsed_spec(view)
        if isinstance(parsed, Failure) or parsed[0].delivery is None:
            return None
        return parsed[0].delivery.s3

    async def effective(
        self, view: JobView
    ) -> tuple[CaptureOptions, ScreenshotPolicySpec] | Failure:
        """The job's options and its policy as it is now, admitted; or why the job can never
        run (admission and every start check the job against its policy's current version)."""
        parsed = self.parsed_spec(view)
        if isinstance(parsed, Failure):
            return parsed
        policy = await self.policies.parsed(view.namespace, view.policy)
        if policy is None:
            message = f"ScreenshotPolicy {view.policy!r} not found in namespace {view.namespace}"
            return Failure(reason=FailureReason.POLICY_NOT_FOUND, message=message)
        if isinstance(policy, Failure):
            return policy
        try:
            admit(parsed[1], policy)
        except CaptureError as exc:
            return Failure(reason=exc.reason, message=exc.message[:1024])
        return parsed[1], policy

    # ---------------------------------------------------------------------------- CaptureJob

    async def job_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        view = JobView.from_body(body)
        if event_type == "DELETED":
            self.queue.forget(view.uid)
            self._specs.pop(view.uid, None)
            await self.dispatch(view.key)
            return
        ours = self.queue.observe(view)
        if view.phase is Phase.PENDING:
            await self.admit(view)
            return
        if view.phase is Phase.RUNNING and event_type is None:
            # Listed at start-up: the pod may have gone while no operator was watching.
            await self.check_pods([view])
        if not ours:  # a decision of ours was dispatched when made; its status changes nothing
            await self.dispatch(view.key)

    async def admit(self, view: JobView) -> None:
        """Validate a new job; start it, or queue it, or fail it for good. Once per job."""
        if view.uid in self.queue.expected:
            return
        self.queue.expect(view.uid, Expect.ADMITTING)
        try:
            with _job_scope(view), _traced("admit CaptureJob", view):
                checked = await self.effective(view)
                if isinstance(checked, Failure):
                    await self.reject(view, checked)
                    return
                status = lifecycle.queued_status(view.status, view.generation, lifecycle.now())
                await self.dispatch(view.key, replace(view, status=view.status.merged(status)))
        finally:  # an admission that failed half-way is the sweeper's to redo
            self.queue.forget(view.uid, Expect.ADMITTING)

    async def reject(self, view: JobView, failure: Failure) -> None:
        """The job can never run: Failed for good; the others of its policy go on."""
        at = lifecycle.now()
        status = lifecycle.rejected_status(view.status, failure, view.generation, at)
        await self.patch_status(view, status)
        self.queue.expect(view.uid, Expect.FINISHED)
        self.notifier.announce(replace(view, status=view.status.merged(status)))
        metrics.JOBS_FINISHED.labels(Phase.FAILED.value, failure.reason.value).inc()
        self.events.post(JOB, view.body(), "Warning", failure.reason.value, failure.message)
        await self.dispatch(view.key)  # it holds no slot and no younger job back any more

    async def patch_status(self, view: JobView, status: CaptureJobStatus) -> dict[str, Any]:
        return await self.client.merge_patch(
            jobs_path(view.namespace, view.name) + "/status", {"status": status.patch()}
        )

    async def dispatch(self, key: PolicyKey, admitted: JobView | None = None) -> None:
        """Start as many queued jobs of the policy as its maxConcurrentJobs allows, first come
        first served (`admitted`: a job just admitted, Queued by its status to come); return
        once the writes decided for the policy are done.

        An admitted job that waits for a slot is said Queued at once; one that waits only for
        older jobs' admission is not yet (it may start in a moment: one status write less).
        Dispatches of a policy coalesce into rounds: one made while a round is pending joins it
        (a burst's admissions pay one pass over the policy's jobs per round, not one each).
        """
        if admitted is not None:
            self.queue.expect(admitted.uid, Expect.ADMITTED, admitted)
        pending = self._rounds.get(key)
        if pending is None or pending.done():  # done: cancelled before it began
            pending = self._rounds[key] = asyncio.create_task(self._decide(key))
        writes = await asyncio.shield(pending)
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result

    async def _decide(self, key: PolicyKey) -> list[asyncio.Task[None]]:
        """One round of `dispatch`: the decisions, made under the policy's lock; the writes go
        on after it (a start of a job waits for its Queued write, so that this never lands
        last)."""
        writes: list[asyncio.Task[None]] = []
        async with self._locks[key]:
            self._rounds.pop(key, None)  # from now on, a dispatch waits for the next round
            jobs = self.queue.believed(self.jobs_of(key))
            limit = await self.policies.limit(key)
            for job in plan(jobs, limit, time.time()):
                self.queue.expect(job.uid, Expect.STARTING, job)
                writes.append(asyncio.create_task(self.start(job)))
            waiting = [
                j
                for p, j in jobs
                if p is Phase.QUEUED and not self.queue.expects(j.uid, Expect.STARTING)
            ]
            metrics.WORKQUEUE_DEPTH.labels(*key).set(len(waiting))
            for job in waiting:
                if self.queue.expects(job.uid, Expect.ADMITTED) and waits_for_slot(
                    jobs, job, limit
                ):
                    self.queue.expect(job.uid, Expect.QUEUED, job)
                    self._saying[job.uid] = asyncio.create_task(self.say_queued(job))
                    writes.append(self._saying[job.uid])
        return writes

    async def say_queued(self, job: JobView) -> None:
        try:
            await self.patch_status(job, job.status)
        except NotFound:  # deleted meanwhile
            return
        except BaseException:  # said again at the next dispatch
            if self.queue.expects(job.uid, Expect.QUEUED):
                self.queue.expect(job.uid, Expect.ADMITTED, job)
            raise
        finally:
            del self._saying[job.uid]
        self.events.post(JOB, job.body(), "Normal", "Queued", f"waiting under policy {job.policy}")

    async def start(self, view: JobView) -> None:
        """Status Running, the Secret (kept across attempts), then the attempt's pod; or a
        warm pod claimed first, then the status and the Secret (see `warming`)."""
        saying = self._saying.get(view.uid)
        try:
            if saying is not None:
                await asyncio.wait([saying])
            with _job_scope(view), _traced("start capture pod", view):
                await self._start(view)
        except BaseException:  # planned again: its status says whether it runs already
            self.queue.forget(view.uid, Expect.STARTING)
            raise
        if self.queue.expects(view.uid, Expect.STARTING):  # its pod exists
            self.queue.expect(view.uid, Expect.STARTED, view)
            for seen in self.jobs_of(view.key):  # its Running status may have come meanwhile
                if seen.uid == view.uid:
                    self.queue.observe(seen)

    async def _start(self, view: JobView) -> None:
        checked = await self.effective(view)
        if isinstance(checked, Failure):
            await self.reject(view, checked)
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
        body = await self.policies.body(view.namespace, view.policy)
        problem = (
            f"ScreenshotPolicy {view.policy} not found"
            if body is None
            else await self.confinement.problem(body, policy, pod["metadata"]["labels"])
        )
        if problem is not None:
            await self.wait_for_confinement(view, problem)
            return
        # A warm pod of the policy, if one asks for a job now: claimed before the status names
        # it (docs/operator.md "Warm capture pods"); else the attempt's cold pod.
        warm = self.pool.take(view.namespace, view.policy, policy)
        deadline = building.pod_deadline(options, policy, self.settings)
        if warm is not None and not await self.pool.claim(warm, job, attempt, deadline):
            warm = None
        pod_name = warm.name if warm is not None else pod_name
        made = (pod_name, warm.uid) if warm is not None else (None, None)
        proposed = secrets.token_urlsafe(32)

        # The status must say Running before the pod exists (a restarted operator then never
        # makes a second pod). A first attempt's Secret is written once that compare-and-swap
        # is won: a start that loses it (a stale view) would replace the winner's Secret and
        # token. Later attempts reuse the Secret, so it is read first, its token in the status.
        s3 = self.s3_delivery(view)

        async def secret(kept: str | None) -> str:
            return await credentials.ensure_secret(
                self.client, self.settings, job, view.policy, options, policy, proposed, kept, s3
            )

        token: str | BaseException = proposed
        if attempt > 1:
            try:
                token = await secret(view.status.upload_token_sha256)
            except (CaptureError, ApiError) as exc:
                token = exc
        status = running_status(
            view, pod_name, attempt, token if isinstance(token, str) else proposed
        )
        try:
            await self.claim(view, status)
        except (NotFound, Conflict) as exc:
            if warm is not None:  # claimed for an attempt that is not ours: it never runs one
                await self.pool.discard(warm)
            if isinstance(exc, NotFound):  # deleted meanwhile; the GC takes the Secret
                self.queue.forget(view.uid)
                return
            # The attempt is another's: no pod; the watch tells.
            log.info("%s/%s: attempt %d not ours: %s", view.namespace, view.name, attempt, exc)
            self.queue.forget(view.uid, Expect.STARTING)
            return
        if attempt == 1:
            try:
                token = await secret(None)
            except (CaptureError, ApiError) as exc:
                token = exc
        running = replace(view, status=view.status.merged(status))
        if isinstance(token, CaptureError):
            failure = Failure(reason=token.reason, message=token.message)
            await self.conclude(running, Outcome(failure=failure), made[0], pod_uid=made[1])
            return
        if isinstance(token, ApiError):
            message = f"request Secret not created: {token.message}"
            outcome = Outcome.failed(FailureReason.INTERNAL, message)
            await self.conclude(running, outcome, made[0], pod_uid=made[1])
            return
        if warm is not None:  # its request exists: the pod's question is answered
            self.pool.assigned(warm.namespace, warm.name, view.name, view.uid)
        try:
            if warm is None:
                await self.client.create_or_adopt(resource_path("v1", "pods", view.namespace), pod)
        except NotOwned:  # someone made a pod of that name first: never taken for the attempt's
            failure = credentials.not_ours("Pod", pod_name)
            await self.conclude(running, Outcome(failure=failure), None)
            return
        except ApiError as exc:
            outcome = Outcome.failed(
                FailureReason.INTERNAL, f"capture pod not created: {exc.message}"
            )
            await self.conclude(running, outcome, None)
            return
        (metrics.PODS_CREATED if warm is None else metrics.WARM_PODS_CLAIMED).inc()
        if attempt == 1:
            metrics.left_queue(view.created)
        log.info("%s/%s: attempt %d in pod %s", view.namespace, view.name, attempt, pod_name)
        self.events.send(started_event(view, attempt, pod_name))

    async def claim(self, view: JobView, status: CaptureJobStatus) -> dict[str, Any]:
        """Write an attempt's Running status as a compare-and-swap (Conflict when it loses), so
        that one start, of one replica, gets each attempt, and only it creates the pod: never
        when the job moved on since `view` (an attempt started or recorded meanwhile), and the
        job's resourceVersion a precondition of the write (the API server refuses the write
        when anyone wrote the job between this read and it, whatever the writers believe).
        The read is the view itself first; refused, the job is read afresh and checked again."""
        path = jobs_path(view.namespace, view.name)
        now = view  # first as seen (no read: a burst's jobs are written by no one else meanwhile)
        for read in (not view.version, True):
            if read:
                now = JobView.from_body(await self.client.get(path))
            if now.uid != view.uid:
                raise NotFound(404, "NotFound", f"{path}: replaced by another job of that name")
            moved = now.phase is Phase.RUNNING or now.phase.finished
            if moved or now.status.attempts != view.status.attempts:
                message = f"attempt {now.status.attempts}, {now.phase.value}, since it was seen"
                raise Conflict(409, "Conflict", message)
            try:
                return await self.client.merge_patch(path + "/status", claim_patch(status, now))
            except Conflict:
                if read:
                    raise
        raise AssertionError("unreachable")

    async def wait_for_confinement(self, view: JobView, problem: str) -> None:
        """The job waits, Queued, until its NetworkPolicy confines its pod: the policy's
        reconciliation and every sweep try to start it again."""
        self.queue.forget(view.uid, Expect.STARTING)
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
            self.events.post(JOB, view.body(), "Warning", NETWORK_POLICY_PENDING, message)

    # ------------------------------------------------------------------------ capture pods

    async def pod_event(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        """A capture pod ended, vanished or is overdue (its kubelet is gone, see
        `lifecycle.pod_outcome`): record the attempt's outcome on its job.

        A pod is a job's only by its controller ownerReference: labels and annotations are
        anyone's to write, and a pod someone made under a job's pod name is never its attempt.
        """
        meta = pod.get("metadata", {})
        namespace, pod_name = meta.get("namespace", ""), meta.get("name", "")
        owner = building.owning_job(pod)
        if owner is None:
            if names.WARM in (meta.get("labels") or {}):
                await self.pool.pod_event(event_type, pod)
            return
        job_name, job_uid = owner
        if event_type == "DELETED":
            outcome: Outcome | None = Outcome.failed(
                FailureReason.POD_LOST, f"the capture pod {pod_name} was deleted before it finished"
            )
        else:
            outcome = lifecycle.pod_outcome(dict(pod), datetime.now(UTC))
            outcome = lifecycle.with_container_times(outcome, dict(pod))
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
        A fresh read of the job under its lock makes the first to notice the end record it.
        """
        async with self._job_locks[(namespace, job_name)]:
            try:
                view: JobView | None = JobView.from_body(
                    await self.client.get(jobs_path(namespace, job_name))
                )
            except NotFound:
                view = None
            if view is None:
                self._job_locks.pop((namespace, job_name), None)
                return
            if view.uid != job_uid:
                return
            if view.phase is not Phase.RUNNING or view.status.pod_name != pod_name:
                if pod_uid is not None:  # a leftover of an attempt already recorded
                    await self.delete_pod(namespace, pod_name, pod_uid)
                return
            with _job_scope(view), _traced("record capture pod", view):
                _record_pod_span(view, pod_name, outcome)
                await self.conclude(view, outcome, pod_name, pod_uid=pod_uid)

    async def conclude(
        self,
        view: JobView,
        outcome: Outcome,
        pod_name: str | None,
        *,
        pod_uid: str | None = None,
    ) -> None:
        """Record an attempt's outcome: finished, or queued again for a retry; delete the pod
        pod_uid, if any (before a retry is queued; after a finish is recorded), and the Secret."""
        at = lifecycle.now()
        attempts = max(view.status.attempts, 1)
        parsed = self.parsed_spec(view)
        retries = parsed[0].retries if not isinstance(parsed, Failure) else 0
        failure = outcome.failure
        if failure is not None and lifecycle.may_retry(failure, attempts, retries):
            if pod_name is not None and pod_uid is not None:  # never two pods (docs/operator.md)
                await self.delete_pod(view.namespace, pod_name, pod_uid)
                pod_uid = None
            delay = lifecycle.backoff_seconds(
                attempts,
                self.settings.retry_backoff_seconds,
                self.settings.retry_backoff_max_seconds,
            )
            status = lifecycle.retry_status(view.status, failure, delay, view.generation, at)
            await self.patch_status(view, status)
            self.queue.forget(view.uid, Expect.STARTING, Expect.STARTED)
            metrics.RETRIES.labels(failure.reason.value).inc()
            self.events.post(JOB, view.body(), "Warning", "Retrying", status.conditions[-1].message)
            assert status.next_attempt_time is not None
            next_attempt = lifecycle.parse_time(status.next_attempt_time).timestamp()
            self._wake(next_attempt - time.time(), view.key)
        else:
            status = lifecycle.finished_status(view.status, outcome, view.generation, at)
            job = building.JobRef(view.name, view.namespace, view.uid)
            s3 = self.s3_delivery(view)
            if failure is None and s3 is not None and not isinstance(parsed, Failure):
                put = credentials.delivered_object(job, s3, parsed[1])  # status.delivery.s3
                status = status.model_copy(update={"delivery": DeliveryStatus(s3=put)})
            await self.patch_status(view, status)
            self.queue.expect(view.uid, Expect.FINISHED)
            self.notifier.announce(replace(view, status=view.status.merged(status)))
            reason = failure.reason.value if failure is not None else ""
            metrics.JOBS_FINISHED.labels(status.phase.value, reason).inc()
            if failure is None:
                self.events.post(JOB, view.body(), "Normal", "Succeeded", "the capture succeeded")
            else:
                self.events.post(JOB, view.body(), "Warning", reason, failure.message)
            await credentials.delete_secret(self.client, job)
        if pod_name is not None and pod_uid is not None:  # only now that its outcome is recorded
            await self.delete_pod(view.namespace, pod_name, pod_uid)
        await self.dispatch(view.key)

    async def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Delete that very pod (a precondition on its uid), never one made under its name."""
        with contextlib.suppress(Conflict):
            await self.client.delete(resource_path("v1", "pods", namespace, name), uid=uid)

    def _wake(self, delay: float, key: PolicyKey) -> None:
        """Dispatch the policy's jobs after `delay` seconds (a retry's nextAttemptTime)."""
        metrics.requeued()

        async def wake() -> None:
            await asyncio.sleep(delay + 0.01)
            await self.dispatch(key)

        task = asyncio.get_running_loop().create_task(wake())
        self._wakeups.add(task)
        task.add_done_callback(self._wakeups.discard)

    async def check_pods(self, views: list[JobView]) -> None:
        """Running jobs whose pod is gone (not those being started here): the pod was lost."""
        for view in views:
            pod = view.status.pod_name
            if pod is None or self.queue.expects(view.uid, Expect.STARTING, Expect.STARTED):
                continue
            try:
                await self.client.get(resource_path("v1", "pods", view.namespace, pod))
                continue
            except NotFound:
                pass
            outcome = Outcome.failed(FailureReason.POD_LOST, f"the capture pod {pod} disappeared")
            await self.record(view.namespace, view.name, view.uid, pod, outcome, None)

    # ------------------------------------------------------------------------- housekeeping

    async def sweep(self) -> None:
        """Lost pods, unrecorded pod ends, interrupted admissions, due retries, expired finished
        jobs, policies' activeJobs and unreconciled NetworkPolicies, gauges."""
        views = self.all_jobs()
        running = [
            v
            for v in views
            if v.phase is Phase.RUNNING and not self.queue.expects(v.uid, Expect.STARTED)
        ]
        listed: set[tuple[str, str]] = set()
        selector = ",".join(f"{key}={value}" for key, value in names.CAPTURE_PODS.items())
        for namespace in sorted({v.namespace for v in running}):
            pods = await self.client.get(
                resource_path("v1", "pods", namespace), params={"labelSelector": selector}
            )
            for pod in pods.get("items", []):
                listed.add((namespace, pod["metadata"]["name"]))
                # An end the watch did not deliver, or a pod overdue (no event tells that).
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
            active[view.key] += view.phase is Phase.RUNNING
            self.notifier.announce(view)  # a webhook cut short (a failover) is sent again
            stuck = now - lifecycle.parse_time(view.created) if view.created else timedelta()
            if view.phase is Phase.PENDING and stuck > STUCK_ADMISSION:
                await self.admit(view)  # an admission that failed half-way (else a no-op)
        for phase, count in by_phase.items():
            metrics.JOBS.labels(phase).set(count)
        for key in {v.key for v in views if not v.phase.finished}:
            await self.dispatch(key)
        await self.policies.set_active_jobs(active)
        for body in self.policies.unreconciled():
            await self.policy_event(None, body)
        await self.pool.sweep(lambda: list(self.policies.index or ()))

    async def expired(self, view: JobView, now: datetime) -> bool:
        """Whether the job finished longer ago than its TTL (else its policy's) says."""
        if not view.status.completion_time:
            return False
        spec = self.parsed_spec(view)
        ttl = None if isinstance(spec, Failure) else spec[0].ttl_seconds_after_finished
        if ttl is None:
            policy = await self.policies.parsed(view.namespace, view.policy)
            runtime = policy.runtime if isinstance(policy, ScreenshotPolicySpec) else Runtime()
            ttl = runtime.ttl_seconds_after_finished
        finished = lifecycle.parse_time(view.status.completion_time)
        return now >= finished + timedelta(seconds=ttl)

    # ---------------------------------------------------------------------- ScreenshotPolicy

    async def policy_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """The policy's NetworkPolicy and status (see `policies`); then its jobs may start."""
        meta = body.get("metadata", {})
        key = (str(meta.get("namespace")), str(meta.get("name")))
        active = sum(1 for v in self.jobs_of(key) if v.phase is Phase.RUNNING)
        if await self.policies.reconcile(event_type, body, active):
            await self.dispatch(key)
        if event_type != "DELETED":  # its warm pods go with it (their owner)
            self.pool.refill(*key)


def running_status(view: JobView, pod_name: str, attempt: int, token: str) -> CaptureJobStatus:
    """The status that claims `attempt` of the job: Running in `pod_name`, the request Secret's
    upload token named by its hash."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    at = lifecycle.now()
    return lifecycle.running_status(view.status, pod_name, attempt, digest, view.generation, at)


def claim_patch(status: CaptureJobStatus, seen: JobView) -> dict[str, Any]:
    """The Running write: a merge patch of the job's status, a compare-and-swap on the
    resourceVersion of the job as `seen`."""
    return {"metadata": {"resourceVersion": seen.version or None}, "status": status.patch()}


def started_event(view: JobView, attempt: int, pod_name: str) -> dict[str, Any]:
    """The Event of an attempt's start, once its pod exists."""
    message = f"attempt {attempt}: pod {pod_name}"
    return build_event(JOB, view.body(), "Normal", "Started", message, lifecycle.now())


def _job_scope(view: JobView) -> contextlib.AbstractContextManager[None]:
    """The job's fields on the log lines inside (the request id only as the gateway makes them:
    an annotation is anyone's to write)."""
    request_id = tracing.request_id(view.annotations.get(tracing.REQUEST_ID_ANNOTATION))
    return logs.bound(
        job=f"{view.namespace}/{view.name}", policy=view.policy, request_id=request_id
    )


def pod_log_context(view: JobView, span: str) -> dict[str, str]:
    """What the job's capture pod puts on its log lines: the job's fields and the ids of a span
    `span` of the job's trace (a cold pod's in its environment, a warm pod's on its assignment:
    it exists before its job). Nothing secret: the pod's environment is no secret."""
    with _job_scope(view), _traced(span, view):
        return logs.context()


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

"""Warm capture pods: per ScreenshotPolicy, `spec.runtime.warmPods` pods that have started
Chromium and wait for one job each (docs/operator.md "Warm capture pods").

The truth is the API server's, through Kopf's index of warm pods (`bind`): a pod is idle while
its ScreenshotPolicy is its controller owner, and a claim (`claim`) makes a CaptureJob its owner,
a compare-and-swap on the pod's resourceVersion. A job's status naming the pod is the record of
the assignment, as for a cold pod; the pod fetches its job's request from the operator
(`assigning`). Kept beside the index, in this process only, and rebuilt by the watch after a
restart:
- `_ours`: the pods this process made. Only those are ever claimed: labels and owner references
  are anyone's to write, and a pod planted to look like a warm pod would otherwise be given a
  job's request. A new leader replaces the idle pods it inherits (a few seconds of cold pods);
- `_taken`: pods this process picked for a claim (the index shows the claim a moment later);
- `_made`: pods created and not yet in the index (so a refill does not create them twice);
- `_polling`: the pods asking for a job right now: only those are picked (a pod that does not
  ask yet, Chromium still starting, would make its job wait);
- `_assigned`: a wake-up per pod, set when its job's request exists;
- `_jobs`: which job this process started in a pod, until the watch shows the job's status (a
  hint only: the endpoint reads the job to check that its status names the pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubeshot.api import ScreenshotPolicySpec
from kubeshot.kube import (
    ApiError,
    Conflict,
    KubeClient,
    NotFound,
    names,
    resource_path,
)
from kubeshot.operator import building, credentials, lifecycle, metrics
from kubeshot.operator.confinement import Confinement
from kubeshot.operator.policies import Index, Policies
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import PolicyKey

log = logging.getLogger(__name__)
PodKey = tuple[str, str]  # namespace, pod name
MADE_SECONDS = 30.0  # a created pod the index has not shown after this long is not counted


@dataclass(frozen=True)
class WarmPod:
    """What the index keeps of a warm pod."""

    namespace: str
    name: str
    uid: str
    version: str
    owner: tuple[str, str]
    """Its controller owner's kind and name: its ScreenshotPolicy, or once claimed a CaptureJob."""
    template: str
    start_time: str | None
    ended: bool
    deleting: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WarmPod:
        meta, status = body.get("metadata") or {}, body.get("status") or {}
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller") is True]
        owner = (str(owners[0].get("kind")), str(owners[0].get("name"))) if owners else ("", "")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            version=str(meta.get("resourceVersion", "")),
            owner=owner,
            template=str((meta.get("annotations") or {}).get(names.WARM_TEMPLATE, "")),
            start_time=status.get("startTime"),
            ended=status.get("phase") in ("Succeeded", "Failed"),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def unclaimed(self) -> bool:
        return self.owner[0] == "ScreenshotPolicy"

    @property
    def idle(self) -> bool:
        """Unclaimed, not ended, not being deleted: may be claimed."""
        return self.unclaimed and not self.ended and not self.deleting


class WarmPool:
    """The warm pods of every policy (one per operator process)."""

    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        policies: Policies,
        confinement: Confinement,
    ) -> None:
        self.client, self.settings = client, settings
        self.policies, self.confinement = policies, confinement
        self.index: Index | None = None
        self._ours: set[str] = set()
        self._taken: set[str] = set()
        self._made: defaultdict[PolicyKey, dict[str, float]] = defaultdict(dict)
        self._polling: Counter[PodKey] = Counter()
        self._assigned: defaultdict[PodKey, asyncio.Event] = defaultdict(asyncio.Event)
        self._jobs: dict[PodKey, tuple[str, str]] = {}
        self._keys: dict[tuple[str, str, str], bytes] = {}
        self._locks: defaultdict[PolicyKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._refills: set[asyncio.Task[None]] = set()

    def bind(self, index: Index) -> None:
        """Kopf's index of warm pods, by (namespace, policy label)."""
        self.index = index

    def pods(self, namespace: str, policy: str) -> list[WarmPod]:
        key = (namespace, names.label_value(policy))
        if self.index is None or key not in self.index:
            return []
        return list(self.index[key])

    def pod(self, namespace: str, name: str) -> WarmPod | None:
        for key in list(self.index or ()):
            if key[0] == namespace:
                for pod in (self.index or {})[key]:
                    if pod.name == name:
                        return pod  # type: ignore[no-any-return]
        return None

    # ---------------------------------------------------------------------- taking a pod

    def take(self, namespace: str, policy: str, spec: ScreenshotPolicySpec) -> WarmPod | None:
        """An idle pod of the policy's current template that asks for a job now, reserved for
        its claim (`claim`; refused, it is idle again); None: the job takes a cold pod."""
        if not spec.runtime.warm_pods:
            return None
        template = building.warm_template(spec, self.settings)
        for pod in self.pods(namespace, policy):
            ready = pod.idle and pod.template == template and pod.start_time is not None
            ready = ready and pod.uid in self._ours
            if ready and pod.uid not in self._taken and self._polling[(namespace, pod.name)]:
                self._taken.add(pod.uid)
                self.refill(namespace, policy)
                return pod
        self.refill(namespace, policy)
        return None

    async def claim(self, pod: WarmPod, job: building.JobRef, attempt: int, deadline: int) -> bool:
        """Make the pod the attempt's (see `building.claim_warm_pod`); False when it is gone or
        was changed since the index saw it (the job then takes a cold pod)."""
        assert pod.start_time is not None
        ran = time.time() - lifecycle.parse_time(pod.start_time).timestamp()
        patch = building.claim_warm_pod(pod.version, ran, job, attempt, deadline)
        try:
            await self.client.merge_patch(_pod_path(pod.namespace, pod.name), patch)
        except (Conflict, NotFound) as exc:
            log.info("warm pod %s/%s not claimed: %s", pod.namespace, pod.name, exc)
            self._taken.discard(pod.uid)  # idle again, as the index will show it
            return False
        return True

    async def discard(self, pod: WarmPod) -> None:
        """Delete a claimed pod whose attempt did not start (its job's status does not name
        it): it never gets a job."""
        with contextlib.suppress(Conflict):
            await self.client.delete(_pod_path(pod.namespace, pod.name), uid=pod.uid)

    def assigned(self, namespace: str, name: str, job: str, uid: str) -> None:
        """The pod's job's request exists: wake its poll."""
        self._jobs[(namespace, name)] = (job, uid)
        self._assigned[(namespace, name)].set()

    def job_hint(self, namespace: str, name: str) -> tuple[str, str] | None:
        """The job (name, uid) this process started in the pod, if any."""
        return self._jobs.get((namespace, name))

    # ---------------------------------------------------------------- the pods' requests

    @contextlib.contextmanager
    def polling(self, namespace: str, name: str) -> Iterator[asyncio.Event]:
        """While a pod asks for its job: it may be taken; the event wakes it."""
        key = (namespace, name)
        self._polling[key] += 1
        metrics.WARM_PODS_ASKING.set(len(self._polling))
        try:
            yield self._assigned[key]
        finally:
            self._polling[key] -= 1
            if not self._polling[key]:
                del self._polling[key]
                self._assigned.pop(key, None)
            metrics.WARM_PODS_ASKING.set(len(self._polling))

    async def authentic(self, pod: WarmPod, presented: str) -> bool:
        """Whether `presented` is the pod's key: its Secret, owned by that very pod (a Secret
        planted under the name by someone else proves nothing). Its hash is kept once read."""
        cached = (pod.namespace, pod.name, pod.uid)
        digest = self._keys.get(cached)
        if digest is None:
            name = building.key_secret_name(pod.name)
            key = await credentials.owned_text(
                self.client, pod.namespace, name, pod.uid, building.KEY_KEY
            )
            if not key:
                return False
            digest = self._keys[cached] = hashlib.sha256(key.encode()).digest()
        return hmac.compare_digest(digest, hashlib.sha256(presented.encode()).digest())

    # ----------------------------------------------------------------------- the pool

    def refill(self, namespace: str, policy: str) -> None:
        """Bring the policy's pool to its size, in the background."""
        task = asyncio.get_running_loop().create_task(self._ensure_quietly(namespace, policy))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _ensure_quietly(self, namespace: str, policy: str) -> None:
        try:
            await self.ensure(namespace, policy)
        except (ApiError, OSError, TimeoutError) as exc:
            log.warning("warm pods of %s/%s not refilled: %s", namespace, policy, exc)

    async def ensure(self, namespace: str, policy: str) -> None:
        """The policy's idle pods: ended ones and those of an older template deleted, the
        surplus deleted (those not asking first), the missing created, once its NetworkPolicy
        confines them (as for a cold pod)."""
        async with self._locks[(namespace, policy)]:
            body = await self.policies.body(namespace, policy)
            spec = await self.policies.parsed(namespace, policy)
            want = spec.runtime.warm_pods if isinstance(spec, ScreenshotPolicySpec) else 0
            template = (
                building.warm_template(spec, self.settings)
                if isinstance(spec, ScreenshotPolicySpec)
                else ""
            )
            pods = [p for p in self.pods(namespace, policy) if p.uid not in self._taken]
            made = self._made[(namespace, policy)]
            seen = {p.name for p in pods}
            for name, at in list(made.items()):
                if name in seen or time.monotonic() - at > MADE_SECONDS:
                    del made[name]
            fresh = [p for p in pods if p.idle and p.template == template and p.uid in self._ours]
            fresh.sort(key=lambda p: self._polling[(namespace, p.name)] > 0, reverse=True)
            keep = max(0, want - len(made))
            doomed = [p for p in pods if p.unclaimed and p.ended and not p.deleting]
            doomed += [p for p in pods if p.idle and p.template != template]
            doomed += [p for p in pods if p.idle and p.uid not in self._ours]  # not made here
            doomed += fresh[keep:]
            for pod in doomed:
                if pod.uid not in self._taken:
                    await self.discard(pod)
            missing = want - len(fresh[:keep]) - len(made)
            if missing <= 0 or body is None or not isinstance(spec, ScreenshotPolicySpec):
                return
            labels = {**names.capture_labels(policy), names.WARM: "true"}
            problem = await self.confinement.problem(body, spec, labels)
            if problem is not None:
                log.info("no warm pods for %s/%s yet: %s", namespace, policy, problem)
                return
            ref = building.PolicyRef(policy, namespace, str(body["metadata"]["uid"]))
            for _ in range(missing):
                await self._make(ref, spec, made)

    async def _make(
        self, policy: building.PolicyRef, spec: ScreenshotPolicySpec, made: dict[str, float]
    ) -> None:
        """One warm pod, then its key's Secret (owned by the pod; the kubelet waits for it)."""
        name = building.warm_pod_name(policy.name, secrets.token_hex(3))
        manifest = building.build_warm_pod(policy, spec, self.settings, name)
        pod = await self.client.create(_pod_path(policy.namespace), manifest)
        made[name] = time.monotonic()
        self._ours.add(pod["metadata"]["uid"])
        key = secrets.token_urlsafe(32)
        secret = building.build_key_secret(policy.namespace, name, pod["metadata"]["uid"], key)
        try:
            await self.client.create(resource_path("v1", "secrets", policy.namespace), secret)
        except ApiError:
            await self.discard(WarmPod.from_body(pod))
            raise
        log.info("warm pod %s/%s made", policy.namespace, name)

    async def pod_event(self, event_type: str | None, pod: Mapping[str, Any]) -> None:
        """An unclaimed pod ended (it waited warmIdleSeconds, or crashed) or went: delete it
        and refill its policy's pool."""
        seen = WarmPod.from_body(pod)
        if not seen.unclaimed:
            return
        if event_type == "DELETED" or seen.ended:
            self._taken.discard(seen.uid)
            for key in [k for k in self._keys if k[2] == seen.uid]:
                del self._keys[key]
            if seen.ended and event_type != "DELETED":
                await self.discard(seen)
            self.refill(seen.namespace, seen.owner[1])

    async def sweep(self, policies: Callable[[], list[PolicyKey]]) -> None:
        """Every policy's pool to its size (a refill that failed, a changed template); what
        is kept of pods that are gone, forgotten."""
        pods = [pod for key in list(self.index or ()) for pod in (self.index or {})[key]]
        live = {pod.uid for pod in pods}
        self._taken &= live
        self._ours &= live
        for key in [k for k in self._keys if k[2] not in live]:
            del self._keys[key]
        named = {(pod.namespace, pod.name) for pod in pods}
        for gone in [k for k in self._jobs if k not in named]:
            del self._jobs[gone]
        for namespace, policy in policies():
            await self._ensure_quietly(namespace, policy)


def _pod_path(namespace: str, name: str | None = None) -> str:
    return resource_path("v1", "pods", namespace, name)

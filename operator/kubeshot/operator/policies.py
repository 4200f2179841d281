"""ScreenshotPolicies: read from Kopf's index, and reconciled into their NetworkPolicy and status
(the Ready condition, observedGeneration, networkPolicyName, activeJobs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from kubeshot.api import (
    Failure,
    FailureReason,
    ScreenshotPolicySpec,
    ScreenshotPolicyStatus,
    describe_validation_error,
    is_object_name,
)
from kubeshot.kube import ApiError, KubeClient, NotFound, names
from kubeshot.kube.names import network_policies_path, policies_path
from kubeshot.operator import lifecycle
from kubeshot.operator.confinement import network_policy
from kubeshot.operator.events import EventPoster
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import PolicyKey

POLICY = "ScreenshotPolicy"


class Index(Protocol):
    """The part of a Kopf index used here: key → the values of the objects under that key."""

    def __getitem__(self, key: Any) -> Iterable[Any]: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Any: ...


class Policies:
    """The ScreenshotPolicies of Kopf's index, and their status.

    The one thing kept beside the index, `_parsed`: each policy's spec as validated, keyed by
    the policy's uid, generation and resourceVersion (a pure function of that version), because
    every admission and every start checks a job against its policy.
    """

    def __init__(self, client: KubeClient, settings: OperatorSettings, events: EventPoster) -> None:
        self.client, self.settings, self.events = client, settings, events
        self.index: Index | None = None
        self._parsed: dict[PolicyKey, tuple[object, ScreenshotPolicySpec | Failure]] = {}

    async def body(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The ScreenshotPolicy: from the index, else (just created?) from the API server.

        A name no object can have (".", "..", "a/b" from a job stored before the CRD checked
        names) names no policy: it is never put into a URL, where it would address another one.
        """
        if not is_object_name(name):
            return None
        if self.index is not None and (namespace, name) in self.index:
            for body in self.index[(namespace, name)]:
                return dict(body)
        try:
            return await self.client.get(policies_path(namespace, name))
        except NotFound:
            return None

    async def parsed(self, namespace: str, name: str) -> ScreenshotPolicySpec | Failure | None:
        """The policy's spec, parsed once per version; a Failure when invalid; None if absent."""
        body = await self.body(namespace, name)
        if body is None:
            return None
        meta = body.get("metadata") or {}
        version = (meta.get("uid"), meta.get("generation"), meta.get("resourceVersion"))
        cached = self._parsed.get((namespace, name))
        if cached is not None and cached[0] == version:
            return cached[1]
        parsed: ScreenshotPolicySpec | Failure
        try:
            parsed = ScreenshotPolicySpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            problems = describe_validation_error(exc, "spec")
            message = f"ScreenshotPolicy {name!r} is invalid: {problems}"
            parsed = Failure(reason=FailureReason.INVALID_SPEC, message=message[:1024])
        self._parsed[(namespace, name)] = (version, parsed)
        return parsed

    async def limit(self, key: PolicyKey) -> int:
        """The policy's maxConcurrentJobs. A missing or broken policy: 1, so that its jobs start
        one by one, to fail with a reason."""
        policy = await self.parsed(*key)
        return policy.limits.max_concurrent_jobs if isinstance(policy, ScreenshotPolicySpec) else 1

    def unreconciled(self) -> list[Mapping[str, Any]]:
        """Policies whose NetworkPolicy could not be applied at their last change."""
        return [
            body
            for key in list(self.index or ())
            for body in (self.index or {})[key]
            if (body.get("status") or {}).get("observedGeneration")
            != (body.get("metadata") or {}).get("generation")
        ]

    async def set_active_jobs(self, active: Mapping[PolicyKey, int]) -> None:
        """Each policy's status.activeJobs, written where the index shows another count."""
        for key in list(self.index or ()):
            for body in (self.index or {})[key]:
                count = active.get(key, 0)
                if (body.get("status") or {}).get("activeJobs") != count:
                    patch = ScreenshotPolicyStatus(active_jobs=count).patch()
                    path = policies_path(*key) + "/status"
                    with contextlib.suppress(NotFound):  # deleted meanwhile
                        await self.client.merge_patch(path, {"status": patch})

    async def reconcile(self, event_type: str | None, body: Mapping[str, Any], active: int) -> bool:
        """Apply the policy's NetworkPolicy and say so in its status (`active`: its Running jobs);
        whether its jobs may now start (it changed, or went)."""
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if event_type == "DELETED":  # its NetworkPolicy goes with it (ownerReference)
            return True
        generation = meta.get("generation")
        try:
            status = ScreenshotPolicyStatus.model_validate(body.get("status") or {})
        except ValidationError:  # never as the operator wrote it: written anew
            status = ScreenshotPolicyStatus()
        if status.observed_generation == generation and event_type is not None:
            return False  # our own status write coming back, or nothing that changes the spec
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
            return False
        manifest = network_policy(body, spec, self.settings)
        np_name = manifest["metadata"]["name"]
        try:
            await self.client.apply(
                network_policies_path(namespace, np_name), manifest, names.MANAGER
            )
        except ApiError as exc:
            await ready(False, "NetworkPolicyFailed", exc.message)
            self.events.post(POLICY, body, "Warning", "NetworkPolicyFailed", exc.message)
            raise
        await ready(
            True,
            "NetworkPolicyApplied",
            f"NetworkPolicy {np_name} confines the capture pods",
            observed_generation=generation,
            network_policy_name=np_name,
            active_jobs=active,
        )
        self.events.post(POLICY, body, "Normal", "NetworkPolicyApplied", f"NetworkPolicy {np_name}")
        return True

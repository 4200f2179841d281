"""No capture pod without its ScreenshotPolicy's NetworkPolicy around it.

A job's pod is created only once the NetworkPolicy exists as built from the policy and selects
the pod; until then the job waits, Queued, with the reason `NetworkPolicyPending`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubeshot.api import ScreenshotPolicySpec, describe_validation_error
from kubeshot.kube import ApiError, KubeClient, NotFound, names
from kubeshot.kube.names import network_policies_path, policies_path
from kubeshot.operator import building
from kubeshot.operator.settings import OperatorSettings

Manifest = dict[str, Any]
# The Started condition's reason while a job waits for its policy's NetworkPolicy.
NETWORK_POLICY_PENDING = "NetworkPolicyPending"


def network_policy(
    body: Mapping[str, Any], spec: ScreenshotPolicySpec, settings: OperatorSettings
) -> Manifest:
    """The NetworkPolicy of the ScreenshotPolicy `body` (owned by it), from its parsed `spec`."""
    meta = body.get("metadata") or {}
    name, namespace, uid = (str(meta.get(k, "")) for k in ("name", "namespace", "uid"))
    return building.build_network_policy(building.PolicyRef(name, namespace, uid), spec, settings)


class Confinement:
    """Checks the NetworkPolicy around a policy's capture pods before each pod, and restores it.

    Kept: the reads of each NetworkPolicy not yet sent (`_next`) and in flight (`_sent`). Every
    check decides on a read sent after the check began; checks that overlap share one, so a burst
    of one policy's starts reads its NetworkPolicy once per round trip rather than once per pod.
    (Hand-written: request coalescing with that guarantee is a few lines, and no library here.)
    """

    def __init__(self, client: KubeClient, settings: OperatorSettings) -> None:
        self.client, self.settings = client, settings
        self._next: dict[str, asyncio.Future[Manifest | None]] = {}
        self._sent: dict[str, asyncio.Future[Manifest | None]] = {}
        self._reading: set[asyncio.Task[None]] = set()

    async def _read(self, path: str) -> Manifest | None:
        """The object at path (None: not found), as read after this call began."""
        read = self._next.get(path)
        if read is None:
            read = self._next[path] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._send(path, read, self._sent.get(path)))
            self._reading.add(task)
            task.add_done_callback(self._reading.discard)
        return await asyncio.shield(read)

    async def _send(
        self, path: str, read: asyncio.Future[Manifest | None], previous: asyncio.Future[Any] | None
    ) -> None:
        if previous is not None:  # callers joined this read while that one was under way
            await asyncio.wait([previous])
        self._sent[path] = self._next.pop(path)
        try:
            read.set_result(await self.client.get(path))
        except NotFound:
            read.set_result(None)
        except Exception as exc:  # every caller gets it
            read.set_exception(exc)
        finally:
            if self._sent.get(path) is read:
                del self._sent[path]

    async def problem(
        self, body: Mapping[str, Any], policy: ScreenshotPolicySpec, pod_labels: Mapping[str, str]
    ) -> str | None:
        """Why a capture pod with `pod_labels` would not be confined by the NetworkPolicy of the
        ScreenshotPolicy `body` yet; None when that exists as built and selects the pod.

        Missing or different (the policy's own reconciliation has not run yet, or failed, or
        someone changed the NetworkPolicy), it is applied again, from the ScreenshotPolicy as
        the API server has it now, and looked at once more.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        wanted = network_policy(body, policy, self.settings)
        path = network_policies_path(namespace, wanted["metadata"]["name"])
        problem = building.confinement_problem(await self._read(path), wanted, pod_labels)
        if problem is None:
            return None
        try:
            fresh = await self.client.get(policies_path(namespace, name))
            current = ScreenshotPolicySpec.model_validate(dict(fresh.get("spec") or {}))
        except NotFound:
            return f"ScreenshotPolicy {name} not found"
        except ValidationError as exc:
            problems = describe_validation_error(exc, "spec")
            return f"ScreenshotPolicy {name} is invalid: {problems}"
        wanted = network_policy(fresh, current, self.settings)
        try:
            live = await self.client.apply(path, wanted, names.MANAGER)
        except ApiError as exc:
            return f"{problem}, and applying it failed: {exc.message}"
        return building.confinement_problem(live, wanted, pod_labels)

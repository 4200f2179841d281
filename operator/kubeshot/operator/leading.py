"""One active replica: a coordination.k8s.io Lease, held while this process runs Kopf.

Replicas that do not hold the Lease wait; the leader renews it every third of its duration and
stops (the process exits, Kubernetes restarts it as a follower) when it cannot.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from kubeshot.kube import ApiError, Conflict, KubeClient, NotFound, resource_path

log = logging.getLogger(__name__)
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro_time(at: datetime) -> str:
    return at.strftime(_FORMAT)


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in (_FORMAT, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


class LeaderLease:
    """The Lease `namespace/name`, held by `identity`."""

    def __init__(
        self, client: KubeClient, namespace: str, name: str, identity: str, duration: float
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self._path = resource_path("coordination.k8s.io/v1", "leases", namespace)

    def _spec(self, at: datetime, transitions: int, acquired: str | None) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired or _micro_time(at),
            "renewTime": _micro_time(at),
            "leaseTransitions": transitions,
        }

    async def try_acquire(self) -> bool:
        """Take or renew the Lease; False while another live holder has it."""
        at = datetime.now(UTC)
        try:
            lease = await self.client.get(f"{self._path}/{self.name}")
        except NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(at, 0, None),
            }
            try:
                await self.client.create(self._path, body)
            except Conflict:
                return False
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        alive = renewed is not None and at < renewed + timedelta(seconds=duration)
        if holder and holder != self.identity and alive:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(at, transitions, acquired)
        try:  # the resourceVersion in `lease` makes this a compare-and-swap
            await self.client.request("PUT", f"{self._path}/{self.name}", lease)
        except Conflict:
            return False
        return True

    async def acquire(self) -> None:
        """Wait until this replica is the leader."""
        announced = False
        while True:
            try:
                if await self.try_acquire():
                    log.info(
                        "leader lease %s/%s acquired by %s",
                        self.namespace,
                        self.name,
                        self.identity,
                    )
                    return
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("leader lease: %s", exc)
            if not announced:
                log.info("waiting for the leader lease %s/%s", self.namespace, self.name)
                announced = True
            await asyncio.sleep(max(0.2, self.duration / 4))

    async def hold(self, lost: asyncio.Event) -> None:
        """Renew until cancelled; set `lost` when the Lease could not be renewed in time."""
        last = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                if await self.try_acquire():
                    last = asyncio.get_running_loop().time()
                    continue
                log.error("leader lease taken over by another replica")
                lost.set()
                return
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("leader lease not renewed: %s", exc)
            if asyncio.get_running_loop().time() - last > self.duration * 2 / 3:
                log.error("leader lease could not be renewed in time; stopping")
                lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up (at shutdown), so a follower takes over at once."""
        try:
            lease = await self.client.get(f"{self._path}/{self.name}")
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = None
            await self.client.request("PUT", f"{self._path}/{self.name}", lease)
        except (TimeoutError, ApiError, OSError) as exc:
            log.warning("leader lease not released: %s", exc)

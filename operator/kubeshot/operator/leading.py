"""One active replica: a coordination.k8s.io Lease, held while this process runs Kopf.

Replicas that do not hold the Lease wait; the leader renews it every sixth of its duration and
stops (the process exits, Kubernetes restarts it as a follower) when it cannot.

The leader acts only while it surely leads (client-go's renew deadline): for two thirds of the
duration from the moment it *sent* its last successful renewal. A follower takes over no sooner
than a whole duration after it saw that renewal, so the old leader has stopped writing by then
even when its event loop stalled and it never noticed in time: `fence` guards every write of the
operator's client (see `running`), in-flight work included.

Expiry is judged as client-go's leaderelection judges it: by this process's own monotonic clock,
from the moment it last saw the Lease's record change, never by comparing the holder's
`renewTime` with the local wall clock. Replicas whose clocks disagree therefore never both
lead: a follower takes over only after it has watched the record stay unchanged for a whole
lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kubeshot.kube import ApiError, Conflict, KubeClient, NotFound, resource_path

log = logging.getLogger(__name__)
_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro_time(at: datetime) -> str:
    return at.strftime(_FORMAT)


class LeadershipLost(ApiError):
    """A write refused by this replica itself: it no longer surely holds the Lease (an
    ApiError, so that every caller treats it as a failed write and writes nothing else)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "LeadershipLost", message)


class LeaderLease:
    """The Lease `namespace/name`, held by `identity`."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.renew_deadline = duration * 2 / 3
        self._path = resource_path("coordination.k8s.io/v1", "leases", namespace)
        self._monotonic = monotonic
        self._wall = wall  # only written into the Lease for people to read, never compared
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None  # when the last successful renewal was sent

    def _spec(self, at: datetime, transitions: int, acquired: str | None) -> dict[str, object]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": acquired or _micro_time(at),
            "renewTime": _micro_time(at),
            "leaseTransitions": transitions,
        }

    def leading(self) -> bool:
        """Whether this replica surely holds the Lease now (within the renew deadline)."""
        renewed = self._renewed_at
        return renewed is not None and self._monotonic() < renewed + self.renew_deadline

    def fence(self) -> None:
        """Raise LeadershipLost unless this replica surely holds the Lease now."""
        if not self.leading():
            raise LeadershipLost(f"not the holder of the leader lease {self.namespace}/{self.name}")

    async def try_acquire(self) -> bool:
        """Take or renew the Lease; False while another holder has it and has not let it lapse."""
        sent, at = self._monotonic(), self._wall()
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
                self._renewed_at = None
                return False
            self._renewed_at = sent
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = float(spec.get("leaseDurationSeconds") or self.duration)
        record = (
            holder,
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
            spec.get("leaseDurationSeconds"),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, self._monotonic()
        lapsed = self._monotonic() >= self._observed_at + duration
        if holder and holder != self.identity and not lapsed:
            self._renewed_at = None
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (holder != self.identity)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        lease["spec"] = self._spec(at, transitions, acquired)
        try:  # the resourceVersion in `lease` makes this a compare-and-swap
            await self.client.request("PUT", f"{self._path}/{self.name}", lease)
        except Conflict:
            self._renewed_at = None
            return False
        self._renewed_at = sent
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
        """Renew until cancelled; set `lost` once the Lease is no longer surely held: taken
        over, or not renewed within the renew deadline (a renewal is given no longer)."""
        while True:  # a sixth of the duration apart (client-go's retry period), so that a stall
            await asyncio.sleep(self.duration / 6)  # costs a renewal, not the Lease
            try:
                async with asyncio.timeout(max(0.0, self._time_left())):
                    if await self.try_acquire():
                        continue
                log.error("leader lease taken over by another replica")
                break
            except (TimeoutError, ApiError, OSError) as exc:
                log.warning("leader lease not renewed: %s", exc)
            if not self.leading():
                log.error("leader lease could not be renewed in time; stopping")
                break
        lost.set()

    def _time_left(self) -> float:
        """Seconds until the renew deadline (negative once passed)."""
        if self._renewed_at is None:
            return -1.0
        return self._renewed_at + self.renew_deadline - self._monotonic()

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

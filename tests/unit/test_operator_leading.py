"""The leader Lease judges expiry by observed time (client-go's rule), so skewed clocks never
give two leaders."""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from kubeshot.kube import Conflict, KubeClient, NotFound, resource_path
from kubeshot.operator.leading import LeaderLease, LeadershipLost

pytestmark = pytest.mark.unit

DURATION = 15.0


class LeaseStore:
    """The API server's part: one Lease, compare-and-swap on resourceVersion."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    async def get(self, path: str) -> dict[str, Any]:
        if self.lease is None:
            raise NotFound(404, "NotFound", path)
        return copy.deepcopy(self.lease)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise Conflict(409, "AlreadyExists", path)
        return self._store(body)

    async def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert method == "PUT"
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", path)
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)


class Clocks:
    def __init__(self) -> None:
        self.monotonic = 1000.0

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds


def _replica(store: LeaseStore, clocks: Clocks, name: str, skew: timedelta) -> LeaderLease:
    return LeaderLease(
        store,  # type: ignore[arg-type]
        "kubeshot",
        "kubeshot-operator",
        name,
        DURATION,
        monotonic=lambda: clocks.monotonic,
        wall=lambda: (
            datetime(2026, 11, 29, 12, 0, tzinfo=UTC) + skew + timedelta(seconds=clocks.monotonic)
        ),
    )


@pytest.mark.parametrize("skew", [timedelta(hours=1), timedelta(hours=-1), timedelta(0)])
async def test_a_follower_with_a_skewed_clock_never_takes_a_renewed_lease(skew: timedelta) -> None:
    store, clocks = LeaseStore(), Clocks()
    leader = _replica(store, clocks, "a", timedelta(0))
    follower = _replica(store, clocks, "b", skew)
    assert await leader.try_acquire()
    for _ in range(20):  # the leader renews every third of the duration
        assert not await follower.try_acquire()
        clocks.advance(DURATION / 3)
        assert await leader.try_acquire()
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "a"


async def test_a_follower_takes_over_a_full_duration_after_the_last_renewal_it_saw() -> None:
    store, clocks = LeaseStore(), Clocks()
    leader = _replica(store, clocks, "a", timedelta(0))
    follower = _replica(store, clocks, "b", timedelta(hours=-3))  # its wall clock says "young"
    assert await leader.try_acquire()
    assert not await follower.try_acquire()  # first sight of the record: the count starts
    clocks.advance(DURATION - 0.5)
    assert not await follower.try_acquire()
    clocks.advance(1.0)
    assert await follower.try_acquire()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    # The old leader, back, sees the new holder and stays a follower.
    assert not await leader.try_acquire()


async def test_a_released_lease_is_taken_at_once() -> None:
    store, clocks = LeaseStore(), Clocks()
    leader = _replica(store, clocks, "a", timedelta(0))
    follower = _replica(store, clocks, "b", timedelta(0))
    assert await leader.try_acquire()
    assert not await follower.try_acquire()
    await leader.release()
    assert await follower.try_acquire()


async def test_a_stalled_leader_stops_acting_before_a_follower_can_take_over() -> None:
    """The chaos bench's failover: the leader's renewal comes late (its event loop stalled);
    it must have stopped writing before the follower may take the Lease."""
    store, clocks = LeaseStore(), Clocks()
    leader = _replica(store, clocks, "a", timedelta(0))
    follower = _replica(store, clocks, "b", timedelta(0))
    assert await leader.try_acquire()
    assert leader.leading()
    leader.fence()  # a leader's write passes
    assert not await follower.try_acquire()
    took_over = False
    for _ in range(int(DURATION * 1.5 / 0.25)):  # the leader renews no more
        clocks.advance(0.25)
        took_over = took_over or await follower.try_acquire()
        assert not (took_over and leader.leading()), "two replicas lead at once"
    assert took_over
    assert not leader.leading()
    with pytest.raises(LeadershipLost):
        leader.fence()
    # Back from its stall, the old leader learns it lost the Lease and stays a follower.
    assert not await leader.try_acquire()
    assert not leader.leading()


class Sent(Exception):
    """The request got past the fence (the client went on to log in)."""


def _no_login() -> kopf.ConnectionInfo:
    raise Sent


async def test_the_operators_client_sends_no_write_once_the_lease_is_not_surely_held() -> None:
    store, clocks = LeaseStore(), Clocks()
    leader = _replica(store, clocks, "a", timedelta(0))
    client = KubeClient(_no_login, guard=leader.fence)
    pods = resource_path("v1", "pods", "default")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "job-1"}}
    with pytest.raises(LeadershipLost):  # not yet the leader
        await client.create(pods, pod)
    assert await leader.try_acquire()
    with pytest.raises(Sent):
        await client.create(pods, pod)
    clocks.advance(leader.renew_deadline)  # a renewal missed: the deadline passed
    with pytest.raises(LeadershipLost):
        await client.create(pods, pod)
    with pytest.raises(LeadershipLost):
        await client.delete(f"{pods}/job-1")
    with pytest.raises(Sent):  # reads are not fenced
        await client.get(f"{pods}/job-1")
    assert leader.renew_deadline < DURATION


class StalledStore(LeaseStore):
    """An API server that stops answering once the Lease is held."""

    async def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_leader_whose_renewal_hangs_gives_up_at_the_renew_deadline() -> None:
    duration = 0.6
    lease = LeaderLease(StalledStore(), "kubeshot", "kubeshot-operator", "a", duration)  # type: ignore[arg-type]
    assert await lease.try_acquire()
    lost = asyncio.Event()
    started = time.monotonic()
    holding = asyncio.create_task(lease.hold(lost))
    try:
        await asyncio.wait_for(lost.wait(), timeout=duration * 3)
    finally:
        holding.cancel()
    assert time.monotonic() - started < duration  # before a follower could take over
    assert not lease.leading()

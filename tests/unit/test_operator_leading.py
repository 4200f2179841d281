"""The leader Lease judges expiry by observed time (client-go's rule), so skewed clocks never
give two leaders."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeshot.kube import Conflict, NotFound
from kubeshot.operator.leading import LeaderLease

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

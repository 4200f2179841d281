"""Fair use of the capture capacity: no identity can take the places every other caller needs.

A rate limit bounds how often an identity starts captures, not how many it holds: 17 slow
captures inside a 5/s limit fill the local backend's queue, and every other tenant gets 503. So
each identity (its rate key: a token, a signed-URL client's address or /64) may hold at most

- `per_identity` captures in flight (running or waiting; synchronous ones until they answer,
  asynchronous ones until their job has finished), and
- with `fair_share`, its fair share of the capacity (workers + queue):
  capacity // (identities holding captures, itself included, + 1), at least 1. One share is
  always left over for a caller that holds none, and the shares shrink as callers arrive.

A capture beyond either is refused at once with 429 `concurrency_limited` (and Retry-After),
before it takes a place in the queue. Refused is only the identity over its share; everyone
else keeps being admitted.

With Redis (KUBESHOT_REDIS_URL) `per_identity` holds across all gateway replicas, exactly: each
capture's place is a member of the identity's sorted set, added by one Lua script only while
the set has fewer than `per_identity` live members (atomic however many replicas race), scored
by a lease the holding replica renews every LEASE_SECONDS / 3, so the places of a killed
replica come back within LEASE_SECONDS. (`limits` counts rates, not places held: it has no
such primitive.) The fair share stays each replica's own: it guards that replica's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from kubeshot.gateway.auth import Identity
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.jobstore import LEASE_SECONDS
from kubeshot.gateway.metrics import Metrics

log = logging.getLogger("kubeshot.gateway.fairness")
_PREFIX = "kubeshot:inflight:"
# Leases on the Redis server's clock (TIME), never the replicas' own.
_ACQUIRE = """
local now = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then return {0, held} end
redis.call('ZADD', KEYS[1], now[1] + ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ARGV[2]))
return {1, held + 1}
"""
_RENEW = """
local now = redis.call('TIME')
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now[1] + ARGV[1], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], math.ceil(ARGV[1]))
end
"""


@dataclass
class Slot:
    """A capture's place; `keep(job_id)` hands it to an asynchronous job, which holds it until
    the job has finished."""

    identity: Identity
    job_id: str | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def keep(self, job_id: str) -> None:
        self.job_id = job_id


class FairShare:
    """Counts the captures each identity holds and refuses those beyond its share.

    `keep_jobs`: the job registry reports when a job has finished (`job_finished`); without it
    a kept slot is given back when the request ends."""

    def __init__(
        self,
        capacity: int,
        per_identity: int,
        *,
        fair_share: bool = True,
        keep_jobs: bool = False,
        redis: Redis | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.capacity = capacity
        self.per_identity = per_identity
        self.fair_share = fair_share
        self.keep_jobs = keep_jobs
        self.metrics = metrics
        self._held: Counter[str] = Counter()
        self._jobs: dict[str, Slot] = {}
        self._slots: dict[str, Slot] = {}  # by token: the places this replica holds
        self._redis = redis
        if redis is not None:
            self._acquire = redis.register_script(_ACQUIRE)
            self._renew = redis.register_script(_RENEW)

    def held(self, key: str) -> int:
        """Captures the identity with this rate key holds now (in this replica)."""
        return self._held[key]

    def limit(self, key: str) -> int:
        """How many captures the identity may hold now, given who else holds some."""
        if not self.fair_share:
            return self.per_identity
        holders = sum(1 for k, n in self._held.items() if n > 0 and k != key) + 1
        return min(self.per_identity, max(1, self.capacity // (holders + 1)))

    def _refused(self, held: int, limit: int) -> ApiError:
        if self.metrics is not None:
            self.metrics.rate_limited.labels(category="in_flight").inc()
        return ApiError(
            429,
            "concurrency_limited",
            f"this caller already has {held} capture(s) in flight, its limit right now "
            f"(at most {self.per_identity}, fewer while other callers wait); retry when "
            "one has finished",
            {"inFlight": held, "limit": limit},
            headers={"Retry-After": "1"},
        )

    @contextlib.asynccontextmanager
    async def slot(self, identity: Identity) -> AsyncIterator[Slot]:
        """A place for one capture of `identity`, given back on exit unless a job keeps it;
        ApiError(429) when the identity already holds its share."""
        key = identity.rate_key
        held, limit = self._held[key], self.limit(key)
        if held >= limit:
            raise self._refused(held, limit)
        slot = Slot(identity)
        if self._redis is not None:
            args: list[str | float] = [self.per_identity, LEASE_SECONDS, slot.token]
            taken, held = await self._acquire([_PREFIX + key], args)
            if not taken:
                raise self._refused(held, self.per_identity)
        self._held[key] += 1
        self._slots[slot.token] = slot
        try:
            yield slot
        finally:
            if slot.job_id is not None and self.keep_jobs:
                # Recorded before the job can finish: nothing awaits between submit and here.
                self._jobs[slot.job_id] = slot
            else:
                await self._release(slot)

    async def job_finished(self, job_id: str) -> None:
        """The job that kept a slot has finished: its place is free."""
        slot = self._jobs.pop(job_id, None)
        if slot is not None:
            await self._release(slot)

    async def _release(self, slot: Slot) -> None:
        key = slot.identity.rate_key
        self._slots.pop(slot.token, None)
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]
        if self._redis is not None:
            try:
                await self._redis.zrem(_PREFIX + key, slot.token)
            except RedisError:
                log.warning("could not give a place back in Redis; its lease frees it")

    async def renewing(self) -> None:
        """With Redis: renew the leases of this replica's places every LEASE_SECONDS / 3, until
        cancelled."""
        while self._redis is not None:
            await asyncio.sleep(LEASE_SECONDS / 3)
            slots = list(self._slots.values())
            if not slots:
                continue
            try:
                keys = [_PREFIX + s.identity.rate_key for s in slots]
                await self._renew(keys, [LEASE_SECONDS, *(s.token for s in slots)])
            except RedisError:
                log.exception("could not renew the leases of the captures in flight")

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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubeshot.api import Phase
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Jobs
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.metrics import Metrics

FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED})


@dataclass
class Slot:
    """A capture's place; `keep(job_id)` hands it to an asynchronous job, which holds it until
    the job has finished."""

    identity: Identity
    job_id: str | None = None

    def keep(self, job_id: str) -> None:
        self.job_id = job_id


class FairShare:
    """Counts the captures each identity holds and refuses those beyond its share."""

    def __init__(
        self,
        capacity: int,
        per_identity: int,
        *,
        fair_share: bool = True,
        jobs: Jobs | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.capacity = capacity
        self.per_identity = per_identity
        self.fair_share = fair_share
        self.jobs = jobs
        self.metrics = metrics
        self._held: Counter[str] = Counter()
        self._jobs: dict[str, Identity] = {}

    def held(self, key: str) -> int:
        """Captures the identity with this rate key holds now."""
        self._forget_finished_jobs()
        return self._held[key]

    def limit(self, key: str) -> int:
        """How many captures the identity may hold now, given who else holds some."""
        self._forget_finished_jobs()
        return self._limit(key)

    def _limit(self, key: str) -> int:
        if not self.fair_share:
            return self.per_identity
        holders = sum(1 for k, n in self._held.items() if n > 0 and k != key) + 1
        return min(self.per_identity, max(1, self.capacity // (holders + 1)))

    @contextmanager
    def slot(self, identity: Identity) -> Iterator[Slot]:
        """A place for one capture of `identity`, given back on exit unless a job keeps it;
        ApiError(429) when the identity already holds its share."""
        key = identity.rate_key
        self._forget_finished_jobs()
        held, limit = self._held[key], self._limit(key)
        if held >= limit:
            if self.metrics is not None:
                self.metrics.rate_limited.labels(category="in_flight").inc()
            raise ApiError(
                429,
                "concurrency_limited",
                f"this caller already has {held} capture(s) in flight, its limit right now "
                f"(at most {self.per_identity}, fewer while other callers wait); retry when "
                "one has finished",
                {"inFlight": held, "limit": limit},
                headers={"Retry-After": "1"},
            )
        self._held[key] += 1
        slot = Slot(identity)
        try:
            yield slot
        finally:
            if slot.job_id is not None and self.jobs is not None:
                self._jobs[slot.job_id] = identity
            else:
                self._release(key)

    def _release(self, key: str) -> None:
        self._held[key] -= 1
        if self._held[key] <= 0:
            del self._held[key]

    def _forget_finished_jobs(self) -> None:
        if self.jobs is None or not self._jobs:
            return
        for job_id, identity in list(self._jobs.items()):
            view = self.jobs.find(identity, job_id)
            if view is None or view.phase in FINISHED:
                del self._jobs[job_id]
                self._release(identity.rate_key)

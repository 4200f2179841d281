"""Per-identity rate limits with the `limits` library (moving window): in this process, or in
the Redis the gateway replicas share (limits' own Lua scripts count each hit atomically, so N
replicas together let exactly the limit through)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter


@dataclass(frozen=True)
class Decision:
    """The outcome of one hit, with what the RateLimit headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_seconds))
        return headers


@lru_cache(maxsize=256)
def _parse(limit: str) -> RateLimitItem:
    return parse(limit)


class RateLimiter:
    """Counts hits per (category, identity) against limits like "5 per second"."""

    def __init__(self, enabled: bool = True, redis_url: str | None = None) -> None:
        self.enabled = enabled
        storage: Storage = MemoryStorage()
        if redis_url is not None:
            storage = RedisStorage(
                f"async+{redis_url}", implementation="redispy", key_prefix="kubeshot:limits"
            )
        self._limiter = MovingWindowRateLimiter(storage)

    async def hit(self, limit: str, category: str, key: str) -> Decision | None:
        """Count one request; None when rate limiting is disabled."""
        if not self.enabled:
            return None
        item = _parse(limit)
        allowed = await self._limiter.hit(item, category, key)
        stats = await self._limiter.get_window_stats(item, category, key)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, item.amount, max(0, stats.remaining), reset)

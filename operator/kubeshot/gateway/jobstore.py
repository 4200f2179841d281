"""Where the gateway's own asynchronous jobs live, so that a gateway restart forgets none.

Two stores with one interface: SQLite in KUBESHOT_RESULT_DIR (the embedded default, one gateway)
and Redis (KUBESHOT_REDIS_URL, shared by every replica: a job accepted by one is seen through
all). A job not done (not finished, or its webhook not delivered) carries a lease, renewed by
the gateway running it every LEASE_SECONDS / 3; a job whose lease ran out (its gateway was
killed) is claimed by exactly one gateway, atomically (one SQLite transaction, one Redis Lua
script), which runs it again, fails it or sends its webhook (jobs.JobRegistry). Finished jobs
are deleted `ttl_seconds` after they finished.

A job holds what running it again takes: the caller's identity, the capture options (headers
and cookies included), its webhook (the signing secret included) and the deadline by which it
must have started. The database file is private to the gateway's user, Redis is behind its
password.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, field_serializer
from redis.asyncio import Redis

from kubeshot.api import CaptureOptions
from kubeshot.api.delivery import DeliveryOutcome, Webhook
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.models import CaptureJobView

LEASE_SECONDS = 10.0
_PREFIX = "kubeshot:jobs"


class Job(BaseModel):
    """One asynchronous capture: what its caller sees (`view`) and what running it takes."""

    model_config = ConfigDict(frozen=True)

    view: CaptureJobView
    caller: Identity
    options: CaptureOptions
    webhook: Webhook | None = None
    """Where its outcome is announced; how that went is `view.delivery`."""
    deadline: float
    """Epoch seconds after which the capture is no longer started (again)."""
    finished_at: float | None = None

    @field_serializer("webhook")
    def _with_secret(self, webhook: Webhook | None) -> dict[str, str] | None:
        """Stored with its secret (pydantic masks a SecretStr): whoever delivers it signs."""
        if webhook is None:
            return None
        return {"url": webhook.url, "secret": webhook.secret.get_secret_value()}

    @property
    def owes_webhook(self) -> bool:
        """Finished, and its webhook not delivered yet (Pending)."""
        delivery = self.view.delivery.webhook if self.view.delivery is not None else None
        pending = delivery is not None and delivery.outcome is DeliveryOutcome.PENDING
        return self.finished_at is not None and pending

    @property
    def leased(self) -> bool:
        """Whether some gateway must still do something with it (run it, or announce it)."""
        return self.finished_at is None or self.owes_webhook


class JobStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def save(self, job: Job) -> None:
        """Create or update the job; a `leased` one (re)gets a lease of LEASE_SECONDS."""

    async def load(self, job_id: str) -> Job | None: ...

    async def renew(self, job_ids: list[str]) -> None:
        """Extend the leases of these jobs (the ones this gateway runs or announces)."""

    async def claim(self) -> list[Job]:
        """The leased jobs whose lease ran out, each now leased to the caller alone."""

    async def expire(self, before: float) -> list[str]:
        """Delete the jobs finished before this time (epoch seconds); their ids."""


class SqliteJobs:
    """Jobs in an SQLite database (stdlib sqlite3, each call in a thread under one lock: the
    connection is shared, and a transaction must not interleave with another's statements)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        """None: in memory."""
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.touch(mode=0o600)
        where = ":memory:" if self.path is None else self.path
        db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, data TEXT NOT NULL,"
            " lease REAL, finished_at REAL)"
        )
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    def _run(self, sql: str, *args: object) -> list[tuple[str, ...]]:
        with self._lock:
            if self._db is None:
                raise RuntimeError("the job store is not open")
            return self._db.execute(sql, args).fetchall()

    async def save(self, job: Job) -> None:
        lease = time.time() + LEASE_SECONDS if job.leased else None
        await asyncio.to_thread(
            self._run,
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
            job.view.id,
            job.model_dump_json(),
            lease,
            job.finished_at,
        )

    async def load(self, job_id: str) -> Job | None:
        rows = await asyncio.to_thread(self._run, "SELECT data FROM jobs WHERE id = ?", job_id)
        return Job.model_validate_json(rows[0][0]) if rows else None

    async def renew(self, job_ids: list[str]) -> None:
        until = time.time() + LEASE_SECONDS
        for job_id in job_ids:
            await asyncio.to_thread(
                self._run,
                "UPDATE jobs SET lease = ? WHERE id = ? AND lease IS NOT NULL",
                until,
                job_id,
            )

    async def claim(self) -> list[Job]:
        now = time.time()
        rows = await asyncio.to_thread(
            self._run,
            "UPDATE jobs SET lease = ? WHERE lease <= ? RETURNING data",
            now + LEASE_SECONDS,
            now,
        )
        return [Job.model_validate_json(row[0]) for row in rows]

    async def expire(self, before: float) -> list[str]:
        rows = await asyncio.to_thread(
            self._run,
            "DELETE FROM jobs WHERE finished_at < ? AND lease IS NULL RETURNING id",
            before,
        )
        return [row[0] for row in rows]


# Leases are counted on the Redis server's clock (TIME), never the replicas' own.
_SAVE = """
local now = redis.call('TIME')
if ARGV[2] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], now[1] + ARGV[3], ARGV[4])
end
"""
_RENEW = """
local now = redis.call('TIME')
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now[1] + ARGV[1], ARGV[i]) end
"""
_CLAIM = """
local now = redis.call('TIME')
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now[1])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], now[1] + ARGV[1], id) end
return ids
"""


class RedisJobs:
    """Jobs in Redis: one key per job (expiring `ttl_seconds` after it finished, by Redis
    itself) and one sorted set of the unfinished ones by lease expiry."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self.redis = redis
        self.ttl_seconds = ttl_seconds
        self._leases = f"{_PREFIX}:leases"
        self._save = redis.register_script(_SAVE)
        self._renew = redis.register_script(_RENEW)
        self._claim = redis.register_script(_CLAIM)

    async def open(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        pass  # the client is the app's (app.py closes it)

    def _key(self, job_id: str) -> str:
        return f"{_PREFIX}:{job_id}"

    async def save(self, job: Job) -> None:
        done = not job.leased
        ttl = self.ttl_seconds if done else LEASE_SECONDS
        keys = [self._key(job.view.id), self._leases]
        await self._save(keys, [job.model_dump_json(), int(done), ttl, job.view.id])

    async def load(self, job_id: str) -> Job | None:
        data = await self.redis.get(self._key(job_id))
        return None if data is None else Job.model_validate_json(data)

    async def renew(self, job_ids: list[str]) -> None:
        if job_ids:
            await self._renew([self._leases], [LEASE_SECONDS, *job_ids])

    async def claim(self) -> list[Job]:
        claimed = []
        for raw in await self._claim([self._leases], [LEASE_SECONDS]):
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            job = await self.load(job_id)
            if job is None:  # deleted meanwhile: nothing left to run
                await self.redis.zrem(self._leases, job_id)
            else:
                claimed.append(job)
        return claimed

    async def expire(self, before: float) -> list[str]:
        return []  # finished jobs' keys expire in Redis itself

"""Asynchronous jobs of the local backend survive their gateway: SQLite (one gateway, its result
directory) and Redis (shared by replicas). A job whose gateway was killed is run again when its
deadline allows, else failed with a reason; exactly one gateway takes it over. So is a webhook
whose gateway was killed before it recorded how its delivery went: sent again, same id."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis

from kubeshot.api import (
    CaptureOptions,
    CaptureReport,
    Failure,
    FailureReason,
    Phase,
    ScreenshotPolicy,
)
from kubeshot.api.delivery import DeliveryOutcome, DeliveryStatus, Webhook, WebhookStatus
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import CaptureResult
from kubeshot.gateway.jobs import JobRegistry
from kubeshot.gateway.jobstore import Job, JobStore, RedisJobs, SqliteJobs
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from kubeshot.store.files import FileStore
from tests.gateway.conftest import TOKEN, Pages
from tests.gateway.test_replicas import Replica
from tests.gateway.test_webhooks import RECEIVER_HOST, SECRET, receiving
from tests.support import free_port, wait_until

pytestmark = pytest.mark.gateway

ALICE = Identity(name="alice", kind="token", rate_key="token:alice")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
OPEN = ScreenshotPolicy.model_validate(  # the webhook receiver's address opened
    {
        "metadata": {"name": "default"},
        "spec": {"network": {"allowedCIDRs": [f"{RECEIVER_HOST}/32"]}},
    }
)


class Instant:
    """A backend whose captures answer at once (the local backend's part is not under test)."""

    ready = True
    queue_depth = 0

    def can_accept(self) -> bool:
        return True

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        return PolicySet([OPEN]).get(name)

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        report = CaptureReport(
            content_type="image/png",
            bytes=len(PNG),
            sha256=hashlib.sha256(PNG).hexdigest(),
            format="png",
        )
        return CaptureResult(PNG, report)


def orphan(job_id: str, deadline: float) -> Job:
    """A job a killed gateway had accepted and was running."""
    view = CaptureJobView(
        id=job_id, phase=Phase.RUNNING, created_at="2026-01-01T00:00:00Z", policy="default"
    )
    options = CaptureOptions(url="https://example.com/")
    return Job(view=view, caller=ALICE, options=options, deadline=deadline)


async def lapse(jobs: JobStore, job_id: str) -> None:
    """Let the lease of a job run out now (its gateway stopped renewing it)."""
    if isinstance(jobs, SqliteJobs):
        await asyncio.to_thread(jobs._run, "UPDATE jobs SET lease = 0 WHERE id = ?", job_id)
    else:
        assert isinstance(jobs, RedisJobs)
        await jobs.redis.zadd(jobs._leases, {job_id: 0})


@pytest.fixture(params=["sqlite", "redis"])
async def jobs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        store: JobStore = SqliteJobs(tmp_path / "jobs" / "jobs.sqlite3")
    else:
        store = RedisJobs(Redis.from_url(request.getfixturevalue("redis_url")), 60)
    await store.open()
    yield store
    await store.close()
    if isinstance(store, RedisJobs):
        await store.redis.aclose()


async def test_an_orphaned_job_is_run_again_or_failed_by_its_deadline(
    jobs: JobStore, tmp_path: Path
) -> None:
    files = FileStore(tmp_path / "results", 60)
    await files.open()
    registry = JobRegistry(Instant(), files, jobs, 60, Metrics())  # type: ignore[arg-type]
    in_time, too_late = os.urandom(16).hex(), os.urandom(16).hex()
    await jobs.save(orphan(in_time, time.time() + 60))
    await jobs.save(orphan(too_late, time.time() - 1))
    assert await registry.take_over() == 0  # their leases still run
    for job_id in (in_time, too_late):
        await lapse(jobs, job_id)
    assert await registry.take_over() == 2

    async def finished(job_id: str) -> CaptureJobView | None:
        view = await registry.find(ALICE, job_id)
        return view if view is not None and view.phase.finished else None

    assert await wait_until(lambda: finished(in_time), 10)
    rerun, failed = await finished(in_time), await finished(too_late)
    assert rerun is not None and rerun.phase is Phase.SUCCEEDED and rerun.result is not None
    assert failed is not None and failed.failure is not None
    assert failed.failure.reason is FailureReason.POD_LOST
    assert "deadline has passed" in failed.failure.message
    assert await registry.take_over() == 0  # finished: nothing left to claim
    await files.close()


async def test_a_webhook_cut_short_is_sent_by_the_gateway_that_claims_it(
    jobs: JobStore, tmp_path: Path
) -> None:
    registry = JobRegistry(Instant(), FileStore(tmp_path, 60), jobs, 60, Metrics())  # type: ignore[arg-type]
    async with receiving() as receiver:
        job_id = os.urandom(16).hex()
        pending = WebhookStatus(outcome=DeliveryOutcome.PENDING, id=f"msg_{job_id}")
        failure = Failure(reason=FailureReason.TIMEOUT, message="no load in 30s")
        view = orphan(job_id, 0).view.model_copy(
            update={
                "phase": Phase.FAILED,
                "failure": failure,
                "delivery": DeliveryStatus(webhook=pending),
            }
        )
        webhook = Webhook(url=receiver.url, secret=SECRET)
        # Finished, its delivery under way when its gateway was killed: still leased.
        killed = orphan(job_id, 0).model_copy(
            update={"view": view, "webhook": webhook, "finished_at": time.time()}
        )
        await jobs.save(killed)
        stored = await jobs.load(job_id)  # the secret is kept, for whoever sends it
        assert stored is not None and stored.webhook is not None
        assert stored.webhook.secret.get_secret_value() == SECRET
        assert await registry.take_over() == 0  # its lease still runs
        assert await registry.expire(time.time() + 3600) == 0  # owed: never expired
        await lapse(jobs, job_id)
        assert await registry.take_over() == 1

        async def delivery() -> WebhookStatus | None:
            view = await registry.find(ALICE, job_id)
            return view.delivery.webhook if view and view.delivery else None

        async def announced() -> bool:
            status = await delivery()
            return status is not None and status.outcome is not DeliveryOutcome.PENDING

        assert await wait_until(announced, 10)
        status = await delivery()
        assert status is not None and status.outcome is DeliveryOutcome.DELIVERED, status
        [hit] = receiver.received
        assert hit.headers["webhook-id"] == pending.id
        assert (
            isinstance(hit.verified, dict)
            and hit.verified["data"]["failure"]["reason"] == "Timeout"
        )
    assert await registry.take_over() == 0  # announced: nothing left to claim


async def test_exactly_one_gateway_claims_an_orphaned_job(redis_url: str) -> None:
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    stores = [RedisJobs(client, 60) for client in clients]
    job_id = os.urandom(16).hex()
    await stores[0].save(orphan(job_id, time.time() + 60))
    await lapse(stores[0], job_id)
    claims = await asyncio.gather(*(store.claim() for store in stores))
    assert sorted(len([j for j in c if j.view.id == job_id]) for c in claims) == [0, 0, 0, 1]
    await asyncio.gather(*(client.aclose() for client in clients))


async def test_a_killed_gateway_finishes_its_accepted_job_after_a_restart(
    policy_file: Path, pages: Pages, tmp_path: Path
) -> None:
    """SQLite, the embedded default: the job is in the result directory, not in memory."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVIRONMENT}
    env |= {
        "AUTH_TOKEN": TOKEN,
        "KUBESHOT_PORT": str(port),
        "KUBESHOT_METRICS_PORT": str(free_port()),
        "KUBESHOT_WORKERS": "1",
        "KUBESHOT_POLICY_FILES": json.dumps([str(policy_file)]),
        "KUBESHOT_RESULT_DIR": str(tmp_path / "results"),
    }
    gateway = Replica(port, env, tmp_path / "gateway.log")
    url, headers = gateway.url, {"Authorization": f"Bearer {TOKEN}"}
    async with ClientSession() as session:
        try:
            await gateway.start(session)
            body = {"url": f"{pages.base}/slow?s=6", "format": "png"}
            async with session.post(f"{url}/v1/captures", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["id"]
            view: dict[str, Any] = {}

            async def phase(*wanted: str) -> bool:
                async with session.get(f"{url}/v1/captures/{job_id}", headers=headers) as r:
                    view.update(await r.json() if r.status == 200 else {})
                return view.get("phase") in wanted

            assert await wait_until(lambda: phase("Running"), 60, 0.5), view
            await gateway.kill()  # mid-capture: the page takes 6 s to answer
            await gateway.start(session)
            assert await wait_until(lambda: phase("Succeeded", "Failed"), 90, 1.0), view
            assert view["phase"] == "Succeeded", view
            assert (tmp_path / "results" / "jobs" / "jobs.sqlite3").stat().st_mode & 0o077 == 0
        finally:
            await gateway.stop()

"""A burst of CaptureJobs (issue 19, bench/operator.py): admissions that arrive together are
decided together, first come first served, and a start writes Running without reading the job
first when nothing changed it since it was seen."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kubeshot.operator import reconciling
from kubeshot.operator.queueing import Expect
from kubeshot.operator.reconciling import Reconciler
from tests.unit.test_operator_attempts import VersionedApi, replica
from tests.unit.test_operator_reconciling import (
    JOBS,
    NS,
    PODS,
    SECRETS,
    FakeApi,
    add_job,
    add_policy,
    api,  # noqa: F401 - fixture
    reconciler,  # noqa: F401 - fixture
    reindex,
)

pytestmark = pytest.mark.unit


async def test_a_burst_of_admissions_is_decided_in_one_round_first_come_first_served(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_policy(api, limits={"maxConcurrentJobs": 3})
    bodies = []
    for i in range(40):
        body = add_job(api, f"job-{i:02d}")
        body["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{i:02d}Z"
        bodies.append(body)
    reindex(reconciler, api)
    rounds: list[int] = []

    def counted(jobs: Any, limit: int, now: float) -> Any:
        jobs = list(jobs)
        rounds.append(len(jobs))
        return reconciling_plan(jobs, limit, now)

    reconciling_plan = reconciling.plan
    monkeypatch.setattr(reconciling, "plan", counted)
    await asyncio.gather(*(reconciler.job_event("ADDED", b) for b in reversed(bodies)))
    assert rounds == [40]  # one pass over the policy's jobs, not one per admission
    phases = [api.objects[f"{JOBS}/job-{i:02d}"]["status"]["phase"] for i in range(40)]
    assert phases == ["Running"] * 3 + ["Queued"] * 37  # every admitted job says which, at once
    assert sorted(p for p in api.objects if p.startswith(f"{PODS}/")) == [
        f"{PODS}/job-{i:02d}-1" for i in range(3)
    ]
    patches = [path for verb, path in api.writes if verb == "patch" and path.startswith(JOBS)]
    assert len(patches) == 40  # one status write per job: Running or Queued


class ReadCounting(VersionedApi):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        self.reads.append(path)
        return await super().get(path, params)


async def test_a_start_claims_the_attempt_from_the_job_as_seen_without_reading_it() -> None:
    server = ReadCounting()
    add_policy(server)
    body = add_job(server, "shot")
    body["metadata"]["resourceVersion"] = "7"
    starting = replica(server)
    reindex(starting, server)
    (seen,) = starting.jobs_of((NS, "default"))
    await starting.start(seen)
    assert f"{JOBS}/shot" not in server.reads
    status = server.objects[f"{JOBS}/shot"]["status"]
    assert (status["phase"], status["podName"]) == ("Running", "shot-1")
    assert f"{PODS}/shot-1" in server.objects


async def test_the_running_status_of_a_start_under_way_decides_nothing_again(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    (seen,) = reconciler.jobs_of((NS, "default"))
    reconciler.queue.expect(seen.uid, Expect.STARTING, seen)  # its pod is being created
    rounds: list[object] = []
    monkeypatch.setattr(reconciling, "plan", lambda *args: rounds.append(args) or [])
    body["status"] = {"phase": "Running", "attempts": 1, "podName": "shot-1"}
    await reconciler.job_event("MODIFIED", body)
    assert rounds == []
    assert reconciler.queue.expects(seen.uid, Expect.STARTING)  # until its pod exists
    body["status"] = {"phase": "Failed", "attempts": 1}  # not of its making: decided again
    await reconciler.job_event("MODIFIED", body)
    assert len(rounds) == 1


async def test_a_start_that_loses_the_attempt_leaves_the_winners_secret_alone(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    # The sweeper re-admits a job it listed Pending while its first start was winning: the late
    # start loses the Running write and must not replace the Secret (and token) the pod reads.
    add_policy(api)
    body = add_job(api, "shot")
    stale = replica(api)
    reindex(reconciler, api)
    reindex(stale, api)
    (seen,) = stale.jobs_of((NS, "default"))
    await reconciler.job_event("ADDED", body)
    secret = json.loads(json.dumps(api.objects[f"{SECRETS}/shot-request"]))
    api.writes.clear()
    await stale.start(seen)
    assert [w for w in api.writes if "/events" not in w[1]] == []
    assert api.objects[f"{SECRETS}/shot-request"] == secret

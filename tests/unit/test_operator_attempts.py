"""One pod per attempt, whatever the operators believe (issue 19, the chaos bench's failover): a
start acting on a view of the job older than the job, from a replica that lost the Lease or from
an index the watch has not caught up, writes nothing and creates no pod; the job's
resourceVersion makes the Running write a compare-and-swap."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from kubeshot.kube import Conflict
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import JobView
from tests.unit.test_operator_reconciling import (
    JOBS,
    PODS,
    FakeApi,
    Index,
    add_job,
    add_policy,
    api,  # noqa: F401 - fixture
    reconciler,  # noqa: F401 - fixture
    reindex,
)

pytestmark = pytest.mark.unit


def replica(server: FakeApi) -> Reconciler:
    """Another operator process on the same API server."""
    settings = OperatorSettings(upload_url="http://gw:8081/v1/internal/uploads")
    other = Reconciler(server, settings)  # type: ignore[arg-type]
    other.bind(Index(), Index())
    return other


def succeed(pod: dict[str, Any]) -> None:
    result = {"contentType": "image/png", "bytes": 3, "sha256": "a" * 64, "format": "png"}
    terminated = {"exitCode": 0, "message": json.dumps({"result": result})}
    pod["status"] = {
        "phase": "Succeeded",
        "containerStatuses": [{"state": {"terminated": terminated}}],
    }


@pytest.mark.parametrize("meanwhile", ["running", "recorded"])
async def test_a_start_from_a_stale_view_makes_no_second_pod_for_the_attempt(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    meanwhile: str,
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    stale = replica(api)
    reindex(reconciler, api)
    reindex(stale, api)  # its index shows the job before its first attempt, and stays so
    (seen,) = stale.jobs_of((body["metadata"]["namespace"], "default"))
    await reconciler.job_event("ADDED", body)
    pod = api.objects[f"{PODS}/shot-1"]
    if meanwhile == "recorded":  # the attempt ended, was recorded and its pod deleted
        succeed(pod)
        await reconciler.pod_event("MODIFIED", pod)
        assert f"{PODS}/shot-1" not in api.objects
    job = json.loads(json.dumps(api.objects[f"{JOBS}/shot"]))
    api.writes.clear()
    await stale.start(seen)
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert ("create", f"{PODS}/shot-1") not in writes
    assert ("patch", f"{JOBS}/shot/status") not in writes
    assert api.objects[f"{JOBS}/shot"] == job
    if meanwhile == "running":
        assert api.objects[f"{PODS}/shot-1"]["metadata"]["uid"] == pod["metadata"]["uid"]


class VersionedApi(FakeApi):
    """resourceVersions: every write of a job bumps its own; a merge patch naming another fails
    (409), as the API server's optimistic concurrency does. `between`: run once, right after the
    next read of a job (another writer's turn)."""

    between: Callable[[], None] | None = None

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        found = await super().get(path, params)
        if "/capturejobs/" in path and self.between is not None:
            between, self.between = self.between, None
            between()
        return found

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        target = self.objects.get(path.removesuffix("/status"), {})
        wanted = patch.get("metadata", {}).get("resourceVersion")
        version = target.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != version:
            raise Conflict(409, "Conflict", f"{path}: the object has been modified")
        merged = await super().merge_patch(path, patch)
        merged["metadata"]["resourceVersion"] = str(int(version or 0) + 1)
        return merged


@pytest.mark.parametrize("other_writes", ["before the start", "between its read and its write"])
async def test_the_api_server_refuses_a_running_write_after_another_writer(
    other_writes: str,
) -> None:
    versioned = VersionedApi()
    add_policy(versioned)
    body = add_job(versioned, "shot")
    body["metadata"]["resourceVersion"] = "7"
    starting = replica(versioned)
    reindex(starting, versioned)
    (seen,) = starting.jobs_of((body["metadata"]["namespace"], "default"))

    def other_replica_starts_the_attempt() -> None:
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        body["status"] = {"phase": "Running", "attempts": 1, "podName": "shot-1"}

    if other_writes == "before the start":  # the start's first write is from its view: refused
        other_replica_starts_the_attempt()
    else:  # someone changed the job since the view: the start reads it, then the other writes
        body["metadata"]["resourceVersion"] = "8"
        versioned.between = other_replica_starts_the_attempt
    await starting.start(seen)
    assert versioned.between is None
    assert f"{PODS}/shot-1" not in versioned.objects
    assert ("patch", f"{JOBS}/shot/status") not in versioned.writes
    assert versioned.objects[f"{JOBS}/shot"]["status"]["attempts"] == 1
    # Without another writer, the same start wins the attempt and creates its pod.
    body.pop("status")
    await starting.start(seen)
    assert versioned.objects[f"{JOBS}/shot"]["status"]["podName"] == "shot-1"
    assert f"{PODS}/shot-1" in versioned.objects
    assert JobView.from_body(versioned.objects[f"{JOBS}/shot"]).status.attempts == 1

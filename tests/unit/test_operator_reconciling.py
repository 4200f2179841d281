"""The Reconciler against an in-memory API server: what it writes, in which order, and why."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections import defaultdict
from typing import Any

import pytest

from kubeshot.kube import Conflict, NotFound
from kubeshot.operator.queueing import JobView
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings

NS = "team-a"
JOBS = f"/apis/kubeshot.dev/v1alpha1/namespaces/{NS}/capturejobs"
POLICIES = f"/apis/kubeshot.dev/v1alpha1/namespaces/{NS}/screenshotpolicies"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value
    return target


class FakeApi:
    """Objects by path, like the API server keeps them; a log of every write."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        if path in self.objects:
            return json.loads(json.dumps(self.objects[path]))
        items = [o for p, o in self.objects.items() if p.rsplit("/", 1)[0] == path]
        if items or path.endswith(("/pods", "/secrets")):
            return {"items": items}
        raise NotFound(404, "NotFound", path)

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = json.loads(json.dumps(body))
        if "generateName" in body["metadata"]:
            body["metadata"]["name"] = body["metadata"]["generateName"] + uuid.uuid4().hex[:5]
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise Conflict(409, "AlreadyExists", full)
        if "stringData" in body:
            body["data"] = {
                k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()
            }
        self.objects[full] = body
        self.writes.append(("create", full))
        return body

    async def create_or_keep(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        try:
            return await self.create(path, body), True
        except Conflict:
            return await self.get(f"{path}/{body['metadata']['name']}"), False

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        target = path.removesuffix("/status")
        if target not in self.objects:
            raise NotFound(404, "NotFound", path)
        self.writes.append(("patch", path))
        return merge(self.objects[target], json.loads(json.dumps(patch)))

    async def apply(self, path: str, body: dict[str, Any], field_manager: str) -> dict[str, Any]:
        self.objects[path] = body
        self.writes.append(("apply", path))
        return body

    async def delete(self, path: str, *, missing_ok: bool = True) -> None:
        self.writes.append(("delete", path))
        self.objects.pop(path, None)


class Index(dict[Any, list[Any]]):
    """A stand-in for Kopf's index: key → values."""


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def reconciler(api: FakeApi) -> Reconciler:
    settings = OperatorSettings(upload_url="http://gw:8081/v1/internal/uploads")
    r = Reconciler(api, settings)  # type: ignore[arg-type]
    r.bind(Index(), Index())
    return r


def reindex(reconciler: Reconciler, api: FakeApi) -> None:
    """What Kopf's indexes would hold after the watch caught up."""
    jobs: dict[Any, list[Any]] = defaultdict(list)
    policies: dict[Any, list[Any]] = {}
    for path, body in api.objects.items():
        if "/capturejobs/" in path:
            view = JobView.from_body(body)
            jobs[view.key].append(view)
        elif "/screenshotpolicies/" in path:
            policies[(NS, body["metadata"]["name"])] = [body]
    reconciler.bind(Index(jobs), Index(policies))


def add_policy(api: FakeApi, name: str = "default", **spec: Any) -> None:
    api.objects[f"{POLICIES}/{name}"] = {
        "metadata": {"name": name, "namespace": NS, "uid": "p-uid", "generation": 1},
        "spec": spec,
    }


def add_job(api: FakeApi, name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "kubeshot.dev/v1alpha1",
        "kind": "CaptureJob",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec or {"html": "<p>x</p>"},
    }
    api.objects[f"{JOBS}/{name}"] = body
    return body


async def test_a_job_without_its_policy_fails_and_creates_nothing(
    api: FakeApi, reconciler: Reconciler
) -> None:
    body = add_job(api, "orphan", html="<p>x</p>", policyRef="nope")
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/orphan"]["status"]
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "PolicyNotFound"
    assert not any(path.startswith(PODS) for _, path in api.writes)
    await reconciler.events.drain()
    events = [o for p, o in api.objects.items() if "/events/" in p]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "PolicyNotFound")]


async def test_an_admitted_job_gets_its_secret_and_a_status_naming_the_pod_before_the_pod(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert writes == [  # a free slot: no Queued status in between
        ("create", f"{SECRETS}/shot-request"),
        ("patch", f"{JOBS}/shot/status"),  # Running, naming the pod before it exists
        ("create", f"{PODS}/shot-1"),
    ]
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert (status["phase"], status["podName"], status["attempts"]) == ("Running", "shot-1", 1)
    request = json.loads(
        base64.b64decode(api.objects[f"{SECRETS}/shot-request"]["data"]["request.json"])
    )
    assert request["upload"]["url"] == f"http://gw:8081/v1/internal/uploads/{NS}/shot"
    token = request["upload"]["token"]
    assert status["uploadTokenSha256"] == hashlib.sha256(token.encode()).hexdigest()


async def test_a_restarted_start_keeps_the_jobs_token(api: FakeApi, reconciler: Reconciler) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    first = api.objects[f"{JOBS}/shot"]["status"]["uploadTokenSha256"]
    # Another attempt (after a retry) reuses the Secret and its token.
    view = JobView.from_body(api.objects[f"{JOBS}/shot"])
    await reconciler.start(view)
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["uploadTokenSha256"] == first
    assert status["podName"] == "shot-2"


async def test_the_pods_result_is_recorded_before_the_pod_is_removed(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    pod = api.objects[f"{PODS}/shot-1"]
    result = {"contentType": "image/png", "bytes": 3, "sha256": "a" * 64}
    pod["status"] = {
        "phase": "Succeeded",
        "containerStatuses": [
            {"state": {"terminated": {"exitCode": 0, "message": json.dumps({"result": result})}}}
        ],
    }
    api.writes.clear()
    await reconciler.pod_event("MODIFIED", pod)
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert writes == [
        ("patch", f"{JOBS}/shot/status"),
        ("delete", f"{SECRETS}/shot-request"),
        ("delete", f"{PODS}/shot-1"),
    ]
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["phase"] == "Succeeded"
    assert status["result"] == result
    # The same end seen again (the sweeper, a replayed event) changes nothing.
    api.writes.clear()
    await reconciler.pod_event("DELETED", pod)
    assert api.writes == []


async def test_proxy_credentials_are_resolved_into_the_request(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(
        api,
        network={"proxy": {"server": "http://proxy:3128", "credentialsSecretRef": {"name": "px"}}},
    )
    api.objects[f"{SECRETS}/px"] = {
        "metadata": {"name": "px"},
        "data": {
            "username": base64.b64encode(b"user").decode(),
            "password": base64.b64encode(b"s3cret").decode(),
        },
    }
    body = add_job(api, "proxied")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    request = json.loads(
        base64.b64decode(api.objects[f"{SECRETS}/proxied-request"]["data"]["request.json"])
    )
    assert request["proxy"] == {
        "server": "http://proxy:3128",
        "username": "user",
        "password": "s3cret",
    }


async def test_a_missing_proxy_secret_fails_the_job(api: FakeApi, reconciler: Reconciler) -> None:
    add_policy(
        api,
        network={"proxy": {"server": "http://proxy:3128", "credentialsSecretRef": {"name": "px"}}},
    )
    body = add_job(api, "proxied")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/proxied"]["status"]
    assert status["phase"] == "Failed"
    assert status["failure"] == {
        "reason": "InvalidSpec",
        "message": "proxy credentials Secret 'px' not found",
    }
    assert f"{PODS}/proxied-1" not in api.objects


async def test_policy_event_applies_its_network_policy_and_status(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api, network={"allowedPorts": [443]})
    body = api.objects[f"{POLICIES}/default"]
    await reconciler.policy_event(None, body)
    np = api.objects[
        "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/kubeshot-capture-default"
    ]
    assert np["spec"]["egress"][2]["ports"] == [{"protocol": "TCP", "port": 443}]
    status = api.objects[f"{POLICIES}/default"]["status"]
    assert status["observedGeneration"] == 1
    assert status["networkPolicyName"] == "kubeshot-capture-default"
    assert status["conditions"][0]["status"] == "True"
    # Its own status write coming back through the watch is not another reconciliation.
    api.writes.clear()
    await reconciler.policy_event("MODIFIED", api.objects[f"{POLICIES}/default"])
    assert api.writes == []


async def test_a_job_without_a_free_slot_is_queued_and_started_when_one_frees(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api, limits={"maxConcurrentJobs": 1})
    first = add_job(api, "first")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", first)
    second = add_job(api, "second")
    second["metadata"]["creationTimestamp"] = "2026-01-01T00:00:01Z"
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", second)
    status = api.objects[f"{JOBS}/second"]["status"]
    assert status["phase"] == "Queued"
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Admitted", "True", "Admitted"),
        ("Started", "False", "Queued"),
    ]
    assert f"{PODS}/second-1" not in api.objects
    pod = api.objects[f"{PODS}/first-1"]
    pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded"}
    reindex(reconciler, api)
    await reconciler.pod_event("MODIFIED", pod)
    assert api.objects[f"{JOBS}/first"]["status"]["failure"]["reason"] == "Timeout"
    # The slot is free at once, before the watch shows the first job Failed.
    assert api.objects[f"{JOBS}/second"]["status"]["phase"] == "Running"
    assert f"{PODS}/second-1" in api.objects


async def test_a_job_is_admitted_once_however_often_it_is_seen_pending(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "twice")
    reindex(reconciler, api)
    stale = json.loads(json.dumps(body))
    await reconciler.job_event("ADDED", body)
    await reconciler.job_event(None, stale)  # a replayed listing, or the sweeper's retry
    await reconciler.admit(JobView.from_body(stale), stale)
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert writes == [
        ("create", f"{SECRETS}/twice-request"),
        ("patch", f"{JOBS}/twice/status"),
        ("create", f"{PODS}/twice-1"),
    ]
    assert api.objects[f"{JOBS}/twice"]["status"]["phase"] == "Running"


async def test_a_start_interrupted_after_its_secret_keeps_that_secrets_token(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "again")
    request = {"options": {"html": "<p>x</p>"}, "upload": {"url": "http://gw/x", "token": "t" * 43}}
    api.objects[f"{SECRETS}/again-request"] = {
        "metadata": {"name": "again-request"},
        "data": {"request.json": base64.b64encode(json.dumps(request).encode()).decode()},
    }
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/again"]["status"]
    assert status["uploadTokenSha256"] == hashlib.sha256(b"t" * 43).hexdigest()
    assert status["podName"] == "again-1"
    assert f"{PODS}/again-1" in api.objects

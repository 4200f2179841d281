"""The Reconciler against an in-memory API server: what it writes, in which order, and why."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections import defaultdict
from typing import Any

import pytest

from kubeshot.api import CaptureJobSpec, CaptureOptions
from kubeshot.kube import ApiError, Conflict, NotFound, NotOwned, controller_uid
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.views import JobView

NS = "team-a"
JOBS = f"/apis/kubeshot.dev/v1alpha1/namespaces/{NS}/capturejobs"
POLICIES = f"/apis/kubeshot.dev/v1alpha1/namespaces/{NS}/screenshotpolicies"
PODS = f"/api/v1/namespaces/{NS}/pods"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
NETPOLS = f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"
NETPOL = f"{NETPOLS}/kubeshot-capture-default"


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
        body["metadata"]["uid"] = f"uid-{uuid.uuid4().hex[:8]}"
        if "stringData" in body:
            body["data"] = {
                k: base64.b64encode(v.encode()).decode() for k, v in body.pop("stringData").items()
            }
        self.objects[full] = body
        self.writes.append(("create", full))
        return body

    async def create_or_adopt(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        try:
            return await self.create(path, body), True
        except Conflict:
            existing = await self.get(f"{path}/{body['metadata']['name']}")
        if controller_uid(existing) != controller_uid(body):
            raise NotOwned(409, "AlreadyExists", path)
        return existing, False

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

    async def delete(self, path: str, *, missing_ok: bool = True, uid: str | None = None) -> None:
        found = self.objects.get(path)
        if found is not None and uid is not None and found["metadata"].get("uid") != uid:
            raise Conflict(409, "Conflict", f"precondition failed: uid {uid}")
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
        ("apply", NETPOL),  # no pod before its NetworkPolicy (the policy's event is yet to come)
        ("patch", f"{JOBS}/shot/status"),  # Running, naming the pod before it exists
        ("create", f"{SECRETS}/shot-request"),  # only once the attempt is this start's
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


async def test_a_jobs_options_are_validated_once_for_its_admission_and_its_start(
    api: FakeApi, reconciler: Reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    validations: list[str] = []
    for model in (CaptureJobSpec, CaptureOptions):

        def counted(*args: Any, _validate: Any = model.model_validate, **kwargs: Any) -> Any:
            validations.append(_validate.__self__.__name__)
            return _validate(*args, **kwargs)

        monkeypatch.setattr(model, "model_validate", counted)
    await reconciler.job_event("ADDED", body)
    assert api.objects[f"{JOBS}/shot"]["status"]["phase"] == "Running"
    assert f"{PODS}/shot-1" in api.objects
    assert validations == ["CaptureJobSpec"]


async def test_a_restarted_start_keeps_the_jobs_token(api: FakeApi, reconciler: Reconciler) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    first = api.objects[f"{JOBS}/shot"]["status"]["uploadTokenSha256"]
    # Another attempt (after a retry, which says Queued) reuses the Secret and its token.
    api.objects[f"{JOBS}/shot"]["status"]["phase"] = "Queued"
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
    # The pod's whole report, timings and blocked requests included, is the job's result.
    timings = {"totalMs": 5.0, "setupMs": 1.0, "navigationMs": 2.0, "renderMs": 2.0, "phases": []}
    result = {
        **{"contentType": "image/png", "bytes": 3, "sha256": "a" * 64, "format": "png"},
        **{"blockedRequests": 2, "bytesTransferred": 10, "timings": timings},
    }
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
    add_proxy_secret(api, labels={"kubeshot.dev/proxy-credentials": "true"})
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


def add_proxy_secret(api: FakeApi, labels: dict[str, str]) -> None:
    api.objects[f"{SECRETS}/px"] = {
        "metadata": {"name": "px", "labels": labels},
        "data": {
            "username": base64.b64encode(b"user").decode(),
            "password": base64.b64encode(b"s3cret").decode(),
        },
    }


REFUSED_PROXY_SECRET = {
    "reason": "InvalidSpec",
    "message": "proxy credentials Secret 'px' not found, or not labelled"
    ' kubeshot.dev/proxy-credentials: "true"',
}


@pytest.mark.parametrize("label", [None, "false", "True"])
async def test_a_proxy_secret_that_has_not_opted_in_is_never_read(
    api: FakeApi, reconciler: Reconciler, label: str | None
) -> None:
    # Whoever writes a policy must not send any Secret of the namespace to a proxy they chose.
    add_policy(
        api,
        network={"proxy": {"server": "http://proxy:3128", "credentialsSecretRef": {"name": "px"}}},
    )
    add_proxy_secret(api, labels={} if label is None else {"kubeshot.dev/proxy-credentials": label})
    body = add_job(api, "proxied")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/proxied"]["status"]
    assert (status["phase"], status["failure"]) == ("Failed", REFUSED_PROXY_SECRET)
    assert f"{SECRETS}/proxied-request" not in api.objects
    assert f"{PODS}/proxied-1" not in api.objects


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
    assert status["failure"] == REFUSED_PROXY_SECRET
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
    assert np["spec"]["egress"][3]["ports"] == [{"protocol": "TCP", "port": 443}]
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


async def test_a_job_admitted_behind_an_older_admission_says_queued_once_that_takes_the_slot(
    api: FakeApi, reconciler: Reconciler
) -> None:
    # The younger job's admission ends first: it waits for the older one (first come, first
    # served), Pending still. The older one then takes the only slot: the younger is Queued at
    # once, not at the next sweep.
    add_policy(api, limits={"maxConcurrentJobs": 1})
    older, younger = add_job(api, "older"), add_job(api, "younger")
    younger["metadata"]["creationTimestamp"] = "2026-01-01T00:00:01Z"
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", younger)
    assert "status" not in api.objects[f"{JOBS}/younger"]
    await reconciler.job_event("ADDED", older)
    assert api.objects[f"{JOBS}/older"]["status"]["phase"] == "Running"
    assert api.objects[f"{JOBS}/younger"]["status"]["phase"] == "Queued"
    assert f"{PODS}/younger-1" not in api.objects
    await reconciler.dispatch((NS, "default"))  # said once: the watch has not shown it yet
    await reconciler.events.drain()
    queued = [o for p, o in api.objects.items() if "/events/" in p and o["reason"] == "Queued"]
    assert [e["involvedObject"]["name"] for e in queued] == ["younger"]


async def test_a_job_is_admitted_once_however_often_it_is_seen_pending(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "twice")
    reindex(reconciler, api)
    stale = json.loads(json.dumps(body))
    await reconciler.job_event("ADDED", body)
    await reconciler.job_event(None, stale)  # a replayed listing, or the sweeper's retry
    await reconciler.admit(JobView.from_body(stale))
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert writes == [
        ("apply", NETPOL),
        ("patch", f"{JOBS}/twice/status"),
        ("create", f"{SECRETS}/twice-request"),
        ("create", f"{PODS}/twice-1"),
    ]
    assert api.objects[f"{JOBS}/twice"]["status"]["phase"] == "Running"


def request_secret(name: str, token: str, owner_uid: str | None) -> dict[str, Any]:
    request = {"options": {"html": "<p>x</p>"}, "upload": {"url": "http://gw/x", "token": token}}
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}"}
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "kubeshot.dev/v1alpha1",
                "kind": "CaptureJob",
                "name": name.removesuffix("-request"),
                "uid": owner_uid,
                "controller": True,
            }
        ]
    return {
        "metadata": meta,
        "data": {"request.json": base64.b64encode(json.dumps(request).encode()).decode()},
    }


@pytest.mark.parametrize("owner", [None, "uid-someone-else"])
async def test_a_request_secret_made_before_the_job_fails_it_and_is_left_alone(
    api: FakeApi, reconciler: Reconciler, owner: str | None
) -> None:
    # Someone who may create Secrets but not read the job's: their request and upload token
    # must never become the job's.
    add_policy(api)
    body = add_job(api, "victim")
    planted = request_secret("victim-request", "t" * 43, owner)
    api.objects[f"{SECRETS}/victim-request"] = planted
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/victim"]["status"]
    assert status["phase"] == "Failed"
    assert status["failure"] == {
        "reason": "InvalidSpec",
        "message": "a Secret named victim-request exists already and does not belong to this"
        " CaptureJob (its ownerReference is not this job): delete it, or create the CaptureJob"
        " under another name",
    }
    assert status.get("uploadTokenSha256") != hashlib.sha256(b"t" * 43).hexdigest()
    assert f"{PODS}/victim-1" not in api.objects
    assert api.objects[f"{SECRETS}/victim-request"] == planted  # not ours to delete


async def test_a_secret_the_job_owns_but_cannot_vouch_for_is_replaced(
    api: FakeApi, reconciler: Reconciler
) -> None:
    # Left by a start interrupted before its status was written, or made in the job's name by
    # someone who read its uid: the job's status (the operator's alone) never named its token.
    add_policy(api)
    body = add_job(api, "again")
    api.objects[f"{SECRETS}/again-request"] = request_secret("again-request", "t" * 43, "uid-again")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/again"]["status"]
    token = upload_token_of(api, "again")
    assert token != "t" * 43
    assert status["uploadTokenSha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert status["podName"] == "again-1"
    assert f"{PODS}/again-1" in api.objects


def upload_token_of(api: FakeApi, job: str) -> str:
    data = api.objects[f"{SECRETS}/{job}-request"]["data"]["request.json"]
    return str(json.loads(base64.b64decode(data))["upload"]["token"])


async def test_a_retry_keeps_the_secret_only_while_its_token_is_the_one_in_the_status(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    first = upload_token_of(api, "shot")
    # Replaced by someone in the job's name (Secrets are immutable: deleted and made again).
    api.objects[f"{SECRETS}/shot-request"] = request_secret("shot-request", "t" * 43, "uid-shot")
    api.objects[f"{JOBS}/shot"]["status"]["phase"] = "Queued"  # retried
    await reconciler.start(JobView.from_body(api.objects[f"{JOBS}/shot"]))
    token = upload_token_of(api, "shot")
    assert token not in {first, "t" * 43}
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["uploadTokenSha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert status["podName"] == "shot-2"


def planted_pod(name: str, owner_uid: str | None, message: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-pod-{name}",
        "labels": {
            "app.kubernetes.io/component": "capture",
            "app.kubernetes.io/managed-by": "kubeshot-operator",
        },
        "annotations": {"kubeshot.dev/job": name.rsplit("-", 1)[0]},
    }
    if owner_uid is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "kubeshot.dev/v1alpha1",
                "kind": "CaptureJob",
                "name": name.rsplit("-", 1)[0],
                "uid": owner_uid,
                "controller": True,
            }
        ]
    terminated = {"exitCode": 0, "message": message}
    return {
        "metadata": meta,
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": terminated}}],
        },
    }


FAKE_RESULT = json.dumps({"result": {"contentType": "image/png", "bytes": 3, "sha256": "f" * 64}})


async def test_a_pod_made_before_the_job_under_its_pod_name_fails_it_and_is_left_alone(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "victim")
    planted = planted_pod("victim-1", None, FAKE_RESULT)
    api.objects[f"{PODS}/victim-1"] = planted
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    # The planted pod "ends" (its status written by whoever made it): never the job's result.
    await reconciler.pod_event("MODIFIED", planted)
    status = api.objects[f"{JOBS}/victim"]["status"]
    assert status["phase"] == "Failed"
    assert status["failure"]["reason"] == "InvalidSpec"
    assert status["failure"]["message"].startswith("a Pod named victim-1 exists already")
    assert "result" not in status
    assert api.objects[f"{PODS}/victim-1"] == planted
    assert f"{SECRETS}/victim-request" not in api.objects  # the job's own, removed at its end


async def test_a_pod_is_a_jobs_attempt_by_its_owner_reference_only(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    # A stranger's pod that ended, carrying the job's name (annotation) and the operator's
    # labels, or even the name of the attempt's pod: ignored, never deleted.
    for stranger in (planted_pod("shot-1", None, FAKE_RESULT), planted_pod("x-1", None, "")):
        api.writes.clear()
        await reconciler.pod_event("MODIFIED", stranger)
        await reconciler.pod_event("DELETED", stranger)
        assert [w for w in api.writes if "/events" not in w[1]] == []
    assert api.objects[f"{JOBS}/shot"]["status"]["phase"] == "Running"


async def test_a_job_waits_for_its_network_policy_and_starts_once_it_confines_the_pod(
    api: FakeApi, reconciler: Reconciler
) -> None:
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    applied = api.apply

    async def refused(path: str, manifest: dict[str, Any], field_manager: str) -> dict[str, Any]:
        raise ApiError(403, "Forbidden", "exceeded quota: networkpolicies=0")

    api.apply = refused  # type: ignore[method-assign]
    await reconciler.job_event("ADDED", body)
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["phase"] == "Queued"
    started = next(c for c in status["conditions"] if c["type"] == "Started")
    assert (started["status"], started["reason"]) == ("False", "NetworkPolicyPending")
    assert started["message"] == (
        "waiting for the NetworkPolicy of ScreenshotPolicy default: NetworkPolicy"
        " kubeshot-capture-default does not exist, and applying it failed: exceeded quota:"
        " networkpolicies=0"
    )
    assert not any(p.startswith((PODS, SECRETS)) for p in api.objects)
    # A NetworkPolicy of that name that someone else made, selecting nothing of ours: no better.
    api.objects[NETPOL] = {"metadata": {"name": "kubeshot-capture-default"}, "spec": {}}
    reindex(reconciler, api)
    await reconciler.dispatch((NS, "default"))  # as every sweep does
    assert not any(p.startswith((PODS, SECRETS)) for p in api.objects)
    api.apply = applied  # type: ignore[method-assign]
    await reconciler.dispatch((NS, "default"))
    assert api.objects[f"{JOBS}/shot"]["status"]["phase"] == "Running"
    pod = api.objects[f"{PODS}/shot-1"]
    selector = api.objects[NETPOL]["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()


async def test_overlapping_network_policy_reads_are_shared_but_never_older_than_the_check(
    api: FakeApi, reconciler: Reconciler
) -> None:
    api.objects[NETPOL] = {"metadata": {"name": "kubeshot-capture-default"}, "spec": {"v": 1}}
    sent: list[int] = []
    under_way = asyncio.Event()
    read = api.get

    async def slow_get(path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        sent.append(api.objects.get(NETPOL, {}).get("spec", {}).get("v", 0))
        under_way.set()
        found = await read(path, params)
        await asyncio.sleep(0.01)
        return found

    api.get = slow_get  # type: ignore[method-assign]
    first = asyncio.create_task(reconciler.confinement._read(NETPOL))
    await under_way.wait()
    api.objects[NETPOL]["spec"]["v"] = 2  # changed after that read was sent
    later = await asyncio.gather(*(reconciler.confinement._read(NETPOL) for _ in range(5)))
    assert (await first) == {"metadata": {"name": "kubeshot-capture-default"}, "spec": {"v": 1}}
    assert sent == [1, 2]  # the five checks that began meanwhile shared one read, sent after
    assert all(found is not None and found["spec"]["v"] == 2 for found in later)
    del api.objects[NETPOL]
    assert await reconciler.confinement._read(NETPOL) is None

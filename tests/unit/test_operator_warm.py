"""Warm capture pods (docs/operator.md "Warm capture pods") without a cluster: the warm pod's
manifest and its claim, the NetworkPolicy's way to the operator, the pool (`WarmPool`) and the
start of a job in a warm pod against the in-memory API server of test_operator_reconciling, and
the assignment endpoint through aiohttp's test client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import test_utils, web
from prometheus_client import REGISTRY

from kubeshot import logs, tracing
from kubeshot.api import CaptureOptions, ScreenshotPolicySpec
from kubeshot.kube import ApiError, Conflict, names
from kubeshot.operator import assigning, building
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings
from kubeshot.operator.warming import WarmPod
from tests.unit.test_operator_reconciling import (
    JOBS,
    NS,
    PODS,
    POLICIES,
    SECRETS,
    FakeApi,
    Index,
    add_job,
    add_policy,
    api,  # noqa: F401 - fixture
    reconciler,  # noqa: F401 - fixture
    reindex,
)

pytestmark = pytest.mark.unit

WARM = "kubeshot.dev/warm"
POLICY = building.PolicyRef(name="default", namespace=NS, uid="p-uid")
JOB = building.JobRef(name="shot", namespace=NS, uid="uid-shot")
SETTINGS = OperatorSettings(
    capture_image="registry.example/kubeshot-capture:1.0",
    upload_url="http://gw:8081/v1/internal/uploads",
    assignment_url="http://op.example:9090/v1/assignments/",
)
STARTED = "2026-11-30T12:00:00Z"
JOB_OWNER = building.owner_reference("CaptureJob", "shot", "uid-shot")


def policy(**spec: Any) -> ScreenshotPolicySpec:
    return ScreenshotPolicySpec.model_validate(spec)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


# ------------------------------------------------------------------------- the manifests

HARDENED: dict[str, Any] = {
    "limits": {"memory": "768Mi", "cpu": "500m"},
    "runtime": {
        "runtimeClassName": "gvisor",
        "nodeSelector": {"pool": "capture"},
        "tolerations": [{"key": "capture", "operator": "Exists", "effect": "NoSchedule"}],
        "warmPods": 2,
        "warmIdleSeconds": 120,
    },
}


def test_a_warm_pod_is_a_cold_pods_spec_that_asks_for_its_job() -> None:
    spec = policy(**HARDENED)
    pod = building.build_warm_pod(POLICY, spec, SETTINGS, "default-warm-abc123")
    meta = pod["metadata"]
    assert (meta["name"], meta["namespace"]) == ("default-warm-abc123", NS)
    assert meta["labels"] == {**names.capture_labels("default"), WARM: "true"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "name": "default",
            "uid": "p-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["annotations"] == {names.WARM_TEMPLATE: building.warm_template(spec, SETTINGS)}
    assert "activeDeadlineSeconds" not in pod["spec"]  # set by the claim
    env = env_of(pod)
    assert "KUBESHOT_REQUEST" not in env
    assert env["KUBESHOT_ASSIGNMENT_URL"] == (
        f"http://op.example:9090/v1/assignments/{NS}/default-warm-abc123"
    )
    assert env["KUBESHOT_WARM_IDLE_SECONDS"] == "120"
    # The key is a file of the pod's own Secret, mounted where KUBESHOT_POD_KEY says.
    (volume,) = [v for v in pod["spec"]["volumes"] if "secret" in v]
    assert volume["secret"] == {"secretName": "default-warm-abc123-key", "defaultMode": 0o440}
    (mount,) = [
        m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == volume["name"]
    ]
    assert mount["readOnly"] is True
    key_file = building.build_key_secret(NS, "default-warm-abc123", "u", "k")["stringData"]
    assert env["KUBESHOT_POD_KEY"] == f"{mount['mountPath']}/{next(iter(key_file))}"
    # Everything else is a cold pod's of the same policy: hardening, resources, runtime class…
    cold = building.build_pod(
        JOB, 1, "default", spec, CaptureOptions(url="https://example.com"), SETTINGS
    )
    warm_env = {"KUBESHOT_ASSIGNMENT_URL", "KUBESHOT_POD_KEY", "KUBESHOT_WARM_IDLE_SECONDS"}
    cold_env = {"KUBESHOT_REQUEST", "KUBESHOT_OUTCOME_URL"}  # a warm pod learns both by asking
    assert {k: v for k, v in env.items() if k not in warm_env} == {
        k: v for k, v in env_of(cold).items() if k not in cold_env
    }

    def shared(manifest: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = copy.deepcopy(manifest["spec"])
        spec.pop("activeDeadlineSeconds", None)
        spec["containers"][0].pop("env")
        for v in spec["volumes"]:
            if "secret" in v:
                v["secret"].pop("secretName")
        return spec

    assert shared(pod) == shared(cold)
    assert pod["spec"]["runtimeClassName"] == "gvisor"  # the comparison covers the runtime


def test_the_warm_template_changes_with_what_a_pod_is_built_from() -> None:
    template = building.warm_template(policy(**HARDENED), SETTINGS)
    assert building.warm_template(policy(**copy.deepcopy(HARDENED)), SETTINGS) == template
    more_memory = {**HARDENED, "limits": {"memory": "1Gi", "cpu": "500m"}}
    longer_idle = {**HARDENED, "runtime": {**HARDENED["runtime"], "warmIdleSeconds": 300}}
    other_image = SETTINGS.model_copy(update={"capture_image": "registry.example/c:2.0"})
    assert building.warm_template(policy(**more_memory), SETTINGS) != template
    assert building.warm_template(policy(**longer_idle), SETTINGS) != template
    assert building.warm_template(policy(**HARDENED), other_image) != template
    # The pool's size is no part of a pod: resizing it keeps the pods it has.
    resized = {**HARDENED, "runtime": {**HARDENED["runtime"], "warmPods": 5}}
    assert building.warm_template(policy(**resized), SETTINGS) == template


def test_a_claim_makes_the_job_the_pods_sole_owner_and_counts_its_deadline_from_its_start() -> None:
    patch = building.claim_warm_pod("4711", 12.3, JOB, 2, 60)
    assert patch == {
        "metadata": {
            "resourceVersion": "4711",
            "ownerReferences": [JOB_OWNER],
            "labels": {names.JOB_UID: "uid-shot", names.ATTEMPT: "2"},
            "annotations": {names.JOB_NAME_ANNOTATION: "shot"},
        },
        "spec": {"activeDeadlineSeconds": 13 + 60},  # 12.3 s since the pod started, rounded up
    }


def operator_rules(settings: OperatorSettings, warm_pods: int) -> list[dict[str, Any]]:
    """The egress rules of a policy's NetworkPolicy towards the operator's assignment port."""
    spec = policy(runtime={"warmPods": warm_pods})
    egress = building.build_network_policy(POLICY, spec, settings)["spec"]["egress"]
    port = [{"protocol": "TCP", "port": settings.assignment_port_of_url}]
    return [r for r in egress if r.get("ports") == port]


@pytest.mark.parametrize(
    ("url", "port"),
    [("http://op.example:9090/v1/assignments", 9090), ("https://op.example/v1/assignments", 443)],
)
@pytest.mark.parametrize("pods", [0, 3])
def test_capture_pods_may_reach_the_operators_pods_on_the_assignment_port_alone(
    url: str, port: int, pods: int
) -> None:
    # Warm pods ask for their job there, and every pod reports its outcome there.
    settings = OperatorSettings(
        upload_url="http://gw:8081/v1/internal/uploads",
        assignment_url=url,
        operator_namespace="ops",
        operator_pod_labels={"app": "op"},
    )
    assert operator_rules(settings, pods) == [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                    "podSelector": {"matchLabels": {"app": "op"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": port}],
        }
    ]
    egress = building.build_network_policy(POLICY, policy(), settings)["spec"]["egress"]
    towards = [r for r in egress if '"ops"' in json.dumps(r)]
    assert towards == operator_rules(settings, pods)  # no other port of the operator's pods


def test_an_operator_outside_the_cluster_is_reached_by_its_addresses() -> None:
    settings = SETTINGS.model_copy(update={"operator_cidrs": ["10.1.2.0/24", "fd00::1/128"]})
    assert operator_rules(settings, 1) == [
        {
            "to": [{"ipBlock": {"cidr": "10.1.2.0/24"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
            "ports": [{"protocol": "TCP", "port": 9090}],
        }
    ]
    egress = building.build_network_policy(POLICY, policy(), settings)["spec"]["egress"]
    assert '"operator"' not in json.dumps(egress)  # not its pods by their labels too


# ------------------------------------------------------------------------------ the pool


@pytest.fixture(autouse=True)
def refills(
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> list[tuple[str, str]]:
    """The pool's background refills, recorded instead of run (the tests call `ensure`)."""
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(reconciler.pool, "refill", lambda ns, name: calls.append((ns, name)))
    return calls


def warm_policy(api: FakeApi, pods: int, generation: int = 1, **spec: Any) -> None:  # noqa: F811
    add_policy(api, limits={"memory": "512Mi"}, runtime={"warmPods": pods}, **spec)
    api.objects[f"{POLICIES}/default"]["metadata"]["generation"] = generation


def warm_pods(api: FakeApi) -> dict[str, dict[str, Any]]:  # noqa: F811
    """The warm pods the API server has, by name."""
    return {
        body["metadata"]["name"]: body
        for path, body in api.objects.items()
        if path.startswith(f"{PODS}/") and body["metadata"]["labels"].get(WARM) == "true"
    }


def index_pods(reconciler: Reconciler, api: FakeApi) -> dict[str, WarmPod]:  # noqa: F811
    """What Kopf's index of warm pods holds once the watch caught up."""
    pods: dict[str, WarmPod] = {}
    index: defaultdict[Any, list[Any]] = defaultdict(list)
    for name, body in warm_pods(api).items():
        pods[name] = WarmPod.from_body(body)
        index[(NS, body["metadata"]["labels"][names.POLICY])].append(pods[name])
    reconciler.pool.bind(Index(index))
    return pods


def run(body: dict[str, Any], phase: str = "Running") -> None:
    """The kubelet started the pod (and it ended, for Succeeded or Failed)."""
    body.setdefault("metadata", {})["resourceVersion"] = "17"
    body["status"] = {"phase": phase, "startTime": STARTED}


def claimed(body: dict[str, Any]) -> None:
    body["metadata"]["ownerReferences"] = [JOB_OWNER]


async def test_the_pool_makes_the_missing_pods_each_with_its_key(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    warm_policy(api, 2)
    await reconciler.pool.ensure(NS, "default")
    pods = warm_pods(api)
    assert len(pods) == 2
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    for name, pod in pods.items():
        assert name.startswith("default-warm-")
        built = building.build_warm_pod(POLICY, spec, reconciler.settings, name)
        built["metadata"]["uid"] = pod["metadata"]["uid"]
        assert pod == built
        secret = api.objects[f"{SECRETS}/{name}-key"]
        assert secret["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name,
                "uid": pod["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        key = base64.b64decode(secret["data"]["key"]).decode()
        assert len(key) == 43
        assert key not in json.dumps(pod)
    # The pods made count before the watch shows them: no pool is filled twice.
    await reconciler.pool.ensure(NS, "default")
    assert warm_pods(api).keys() == pods.keys()
    index_pods(reconciler, api)
    await reconciler.pool.ensure(NS, "default")
    assert warm_pods(api).keys() == pods.keys()


async def test_no_warm_pod_without_its_network_policy(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warm_policy(api, 1)

    apply = api.apply

    async def refused(*args: Any) -> dict[str, Any]:
        raise ApiError(403, "Forbidden", "networkpolicies is forbidden")

    monkeypatch.setattr(api, "apply", refused)  # the NetworkPolicy is missing and stays so
    await reconciler.pool.ensure(NS, "default")
    assert warm_pods(api) == {}
    monkeypatch.setattr(api, "apply", apply)
    await reconciler.pool.ensure(NS, "default")
    assert len(warm_pods(api)) == 1


async def test_the_pool_replaces_pods_of_an_older_template_and_ended_ones(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    warm_policy(api, 2)
    await reconciler.pool.ensure(NS, "default")
    first, second = warm_pods(api)
    run(api.objects[f"{PODS}/{first}"])
    run(api.objects[f"{PODS}/{second}"], "Failed")  # it waited warmIdleSeconds, or crashed
    index_pods(reconciler, api)
    await reconciler.pool.ensure(NS, "default")
    assert first in warm_pods(api)
    assert second not in warm_pods(api)
    assert len(warm_pods(api)) == 2
    # The policy changed what its pods are built from: every idle pod is replaced.
    kept = set(warm_pods(api))
    warm_policy(api, 2, generation=2)
    api.objects[f"{POLICIES}/default"]["spec"]["limits"] = {"memory": "1Gi"}
    index_pods(reconciler, api)
    await reconciler.pool.ensure(NS, "default")
    assert not kept & set(warm_pods(api))
    assert len(warm_pods(api)) == 2
    templates = {p["metadata"]["annotations"][names.WARM_TEMPLATE] for p in warm_pods(api).values()}
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    assert templates == {building.warm_template(spec, reconciler.settings)}


async def test_a_smaller_pool_deletes_its_surplus_those_not_asking_first(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    warm_policy(api, 3)
    await reconciler.pool.ensure(NS, "default")
    names_ = sorted(warm_pods(api))
    for body in warm_pods(api).values():
        run(body)
    asking = names_[1]
    index_pods(reconciler, api)
    warm_policy(api, 1, generation=2)
    with reconciler.pool.polling(NS, asking):
        await reconciler.pool.ensure(NS, "default")
    assert list(warm_pods(api)) == [asking]
    warm_policy(api, 0, generation=3)
    index_pods(reconciler, api)
    await reconciler.pool.ensure(NS, "default")
    assert warm_pods(api) == {}


async def test_the_pool_never_touches_a_claimed_pod(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    warm_policy(api, 2)
    await reconciler.pool.ensure(NS, "default")
    ended, working = warm_pods(api)
    for name in (ended, working):
        run(api.objects[f"{PODS}/{name}"])
        claimed(api.objects[f"{PODS}/{name}"])
    run(api.objects[f"{PODS}/{ended}"], "Failed")  # its attempt's end: the job's to record
    # A new template and a smaller pool: still no claimed pod goes, and none counts as idle.
    warm_policy(api, 1, generation=2)
    api.objects[f"{POLICIES}/default"]["spec"]["limits"] = {"memory": "1Gi"}
    index_pods(reconciler, api)
    api.writes.clear()
    await reconciler.pool.ensure(NS, "default")
    assert not [w for w in api.writes if w[0] == "delete"]
    assert {ended, working} < set(warm_pods(api))
    assert len(warm_pods(api)) == 3  # one idle pod made for the pool
    await reconciler.pool.pod_event("MODIFIED", api.objects[f"{PODS}/{ended}"])
    assert ended in warm_pods(api)


async def test_a_job_takes_only_an_idle_started_pod_of_the_current_template_that_asks(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    refills: list[tuple[str, str]],
) -> None:
    warm_policy(api, 5)
    await reconciler.pool.ensure(NS, "default")
    old, starting, ended, taken, ready = sorted(warm_pods(api))
    for name in (old, ended, taken, ready):
        run(api.objects[f"{PODS}/{name}"])
    api.objects[f"{PODS}/{old}"]["metadata"]["annotations"][names.WARM_TEMPLATE] = "0" * 16
    run(api.objects[f"{PODS}/{ended}"], "Succeeded")
    claimed(api.objects[f"{PODS}/{taken}"])
    pods = index_pods(reconciler, api)
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    pool = reconciler.pool
    with contextlib.ExitStack() as asking:
        for name in (old, starting, ended, taken):
            asking.enter_context(pool.polling(NS, name))
        assert pool.take(NS, "default", spec) is None  # none of them may run a job now
        assert pool.take(NS, "default", spec) is None
    assert pool.take(NS, "default", spec) is None  # the ready one does not ask
    no_pool = spec.model_copy(update={"runtime": spec.runtime.model_copy(update={"warm_pods": 0})})
    with pool.polling(NS, ready):
        assert pool.take(NS, "default", no_pool) is None  # the policy keeps no pods now
        assert pool.take(NS, "default", spec) == pods[ready]
        assert pool.take(NS, "default", spec) is None  # never twice
    assert refills == [(NS, "default")] * 5  # every take refills the pool


async def test_a_pod_planted_to_look_like_a_warm_pod_is_never_given_a_job(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    # Whoever may create pods can copy a warm pod's labels, annotations and owner reference
    # (and make its key Secret): the pool claims only pods it made itself, and replaces others.
    name = await ready_pod(api, reconciler)
    planted = json.loads(json.dumps(api.objects[f"{PODS}/{name}"]))
    planted["metadata"].update({"name": "default-warm-planted", "uid": "uid-planted"})
    api.objects[f"{PODS}/default-warm-planted"] = planted
    index_pods(reconciler, api)
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    with reconciler.pool.polling(NS, "default-warm-planted"):
        assert reconciler.pool.take(NS, "default", spec) is None
    await reconciler.pool.ensure(NS, "default")
    assert list(warm_pods(api)) == [name]  # the planted one deleted, its own kept


# ------------------------------------------------------------------- a job in a warm pod


async def ready_pod(api: FakeApi, reconciler: Reconciler) -> str:  # noqa: F811
    """The policy's one warm pod, started and in the index."""
    warm_policy(api, 1)
    await reconciler.pool.ensure(NS, "default")
    (name,) = warm_pods(api)
    run(api.objects[f"{PODS}/{name}"])
    index_pods(reconciler, api)
    return name


async def test_a_job_starts_in_a_warm_pod_that_asks(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
) -> None:
    name = await ready_pod(api, reconciler)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    api.writes.clear()
    with reconciler.pool.polling(NS, name) as woken:
        await reconciler.job_event("ADDED", body)
        assert woken.is_set()  # its question is answered
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert (status["phase"], status["podName"], status["attempts"]) == ("Running", name, 1)
    assert not [p for p in api.objects if p.startswith(f"{PODS}/shot-")]  # no cold pod
    pod = api.objects[f"{PODS}/{name}"]
    assert pod["metadata"]["ownerReferences"] == [JOB_OWNER]
    assert pod["metadata"]["labels"][names.JOB_UID] == "uid-shot"
    assert pod["metadata"]["labels"][names.ATTEMPT] == "1"
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    deadline = building.pod_deadline(CaptureOptions(html="<p>x</p>"), spec, reconciler.settings)
    assert pod["spec"]["activeDeadlineSeconds"] >= deadline
    # The claim, then the status naming the pod, then the request it is given.
    writes = [w for w in api.writes if "/events" not in w[1]]
    assert writes.index(("patch", f"{PODS}/{name}")) < writes.index(
        ("patch", f"{JOBS}/shot/status")
    )
    assert writes.index(("patch", f"{JOBS}/shot/status")) < writes.index(
        ("create", f"{SECRETS}/shot-request")
    )


def refuse_claims(api: FakeApi, monkeypatch: pytest.MonkeyPatch, pod: str) -> None:  # noqa: F811
    """The pod's claims fail: it changed since the index saw it, or another's claim won."""
    patch = api.merge_patch

    async def refused(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == f"{PODS}/{pod}":
            raise Conflict(409, "Conflict", "the object has been modified")
        return await patch(path, body)

    monkeypatch.setattr(api, "merge_patch", refused)


@pytest.mark.parametrize("why", ["claim refused", "not asking"])
async def test_without_a_warm_pod_to_claim_the_job_takes_a_cold_one(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    why: str,
) -> None:
    name = await ready_pod(api, reconciler)
    refuse_claims(api, monkeypatch, name)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    with contextlib.ExitStack() as stack:
        if why == "claim refused":
            stack.enter_context(reconciler.pool.polling(NS, name))
        await reconciler.job_event("ADDED", body)
    assert api.objects[f"{JOBS}/shot"]["status"]["podName"] == "shot-1"
    assert f"{PODS}/shot-1" in api.objects
    assert api.objects[f"{PODS}/{name}"]["metadata"]["ownerReferences"][0]["kind"] == (
        "ScreenshotPolicy"
    )


async def test_a_pod_whose_claim_was_refused_is_idle_again_once_the_index_shows_it(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = await ready_pod(api, reconciler)
    spec = await reconciler.policies.parsed(NS, "default")
    assert isinstance(spec, ScreenshotPolicySpec)
    pool = reconciler.pool
    with pool.polling(NS, name):
        taken = pool.take(NS, "default", spec)
        assert taken is not None
        refuse_claims(api, monkeypatch, name)
        assert not await pool.claim(taken, JOB, 1, 60)
        # The kubelet wrote the pod meanwhile (the claim's precondition failed); the index shows
        # the pod as it is now: idle, asking, of the current template.
        api.objects[f"{PODS}/{name}"]["metadata"]["resourceVersion"] = "18"
        pods = index_pods(reconciler, api)
        await pool.ensure(NS, "default")
        assert list(warm_pods(api)) == [name]  # still the pool's one pod: none made for it
        assert pool.take(NS, "default", spec) == pods[name]


# ------------------------------------------------------------------ the assignment endpoint

Served = tuple[test_utils.TestClient[web.Request, web.Application], asyncio.Event]


@pytest.fixture
async def served(reconciler: Reconciler) -> AsyncIterator[Served]:  # noqa: F811
    leader = asyncio.Event()
    leader.set()
    server = test_utils.TestServer(assigning.create_app(reconciler, leader), host="127.0.0.1")
    async with test_utils.TestClient(server) as client:
        yield client, leader


def key_of(api: FakeApi, pod: str) -> str:  # noqa: F811
    return base64.b64decode(api.objects[f"{SECRETS}/{pod}-key"]["data"]["key"]).decode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def running_in(api: FakeApi, reconciler: Reconciler, pod: str) -> dict[str, Any]:  # noqa: F811
    """A job whose status names the pod, Running, as the index shows it."""
    body = add_job(api, "shot")
    body["status"] = {"phase": "Running", "attempts": 1, "podName": pod}
    reindex(reconciler, api)
    return body


def request_secret(api: FakeApi, owner: str = "uid-shot") -> str:  # noqa: F811
    text = json.dumps({"options": {"html": "<p>x</p>"}, "marker": "the request"})
    api.objects[f"{SECRETS}/shot-request"] = {
        "metadata": {
            "name": "shot-request",
            "namespace": NS,
            "ownerReferences": [building.owner_reference("CaptureJob", "shot", owner)],
        },
        "data": {"request.json": base64.b64encode(text.encode()).decode()},
    }
    return text


@pytest.fixture
def short_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assigning, "POLL_SECONDS", 0.3)
    monkeypatch.setattr(assigning, "WAKE_SECONDS", 0.05)


async def test_only_the_leader_answers(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
) -> None:
    client, leader = served
    warm_policy(api, 1)
    await reconciler.pool.ensure(NS, "default")
    (name,) = warm_pods(api)
    url, key = f"/v1/assignments/{NS}/{name}", bearer(key_of(api, name))
    # A leader whose index of warm pods is not filled yet would call the pod no pod of ours.
    assert (await client.get(url, headers=key)).status == 503
    assert (await client.post(f"{url}/outcome", headers=key)).status == 503
    index_pods(reconciler, api)
    leader.clear()
    assert (await client.get(url, headers=key)).status == 503
    assert (await client.post(f"{url}/outcome", headers=key)).status == 503


@pytest.mark.usefixtures("short_polls")
async def test_only_a_warm_pod_of_ours_with_its_own_key_is_answered(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
) -> None:
    client, _ = served
    name = await ready_pod(api, reconciler)
    key, url = key_of(api, name), f"/v1/assignments/{NS}/{name}"
    assert (await client.get(f"/v1/assignments/{NS}/shot-1", headers=bearer(key))).status == 404
    assert (await client.get(f"/v1/assignments/other/{name}", headers=bearer(key))).status == 404
    # A Secret of that name someone else made (not owned by the pod) proves nothing.
    secret = api.objects[f"{SECRETS}/{name}-key"]
    owner = secret["metadata"]["ownerReferences"][0]["uid"]
    secret["metadata"]["ownerReferences"][0]["uid"] = "someone-elses"
    assert (await client.get(url, headers=bearer(key))).status == 401
    secret["metadata"]["ownerReferences"][0]["uid"] = owner
    for headers in ({}, bearer("x" * 43), bearer(key[:-1]), {"Authorization": f"Basic {key}"}):
        assert (await client.get(url, headers=headers)).status == 401
        assert (await client.post(f"{url}/outcome", headers=headers, data="{}")).status == 401
    answer = await client.get(url, headers=bearer(key))
    assert (answer.status, await answer.read()) == (204, b"")  # no job for it yet


@pytest.mark.usefixtures("short_polls")
async def test_a_pod_is_given_the_request_of_the_running_job_that_names_it(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
) -> None:
    client, _ = served
    name = await ready_pod(api, reconciler)
    key, url = key_of(api, name), f"/v1/assignments/{NS}/{name}"
    running_in(api, reconciler, name)
    assert (await client.get(url, headers=bearer(key))).status == 204  # no request Secret yet
    request_secret(api, owner="someone-elses")
    assert (await client.get(url, headers=bearer(key))).status == 204  # not the job's own
    text = request_secret(api)
    request_id = "0123456789abcdef0123456789abcdef"
    api.objects[f"{JOBS}/shot"]["metadata"]["annotations"] = {
        tracing.REQUEST_ID_ANNOTATION: request_id
    }
    reindex(reconciler, api)
    answer = await client.get(url, headers=bearer(key))
    assert (answer.status, answer.content_type) == (200, "application/json")
    assert await answer.text() == text
    # The job's log fields for the pod's lines (a warm pod is made before its job).
    context = json.loads(answer.headers[logs.CONTEXT_HEADER])
    assert context == {"job": f"{NS}/shot", "policy": "default", "request_id": request_id} | {
        k: context[k] for k in logs.TRACE_FIELDS if k in context
    }
    api.objects[f"{JOBS}/shot"]["status"]["phase"] = "Succeeded"  # done: never given again
    reindex(reconciler, api)
    assert (await client.get(url, headers=bearer(key))).status == 204


async def test_a_pod_asking_gets_its_job_the_moment_it_starts(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client, _ = served
    # No periodic look saves it: the start itself wakes the poll, and the index still shows
    # the job as it was before its start (the watch shows its Running status a moment later).
    monkeypatch.setattr(assigning, "WAKE_SECONDS", 30)
    name = await ready_pod(api, reconciler)
    asking = asyncio.create_task(
        client.get(f"/v1/assignments/{NS}/{name}", headers=bearer(key_of(api, name)))
    )
    for _ in range(200):
        if REGISTRY.get_sample_value("kubeshot_operator_warm_pods_asking") == 1:
            break
        await asyncio.sleep(0.01)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    await reconciler.job_event("ADDED", body)
    assert api.objects[f"{JOBS}/shot"]["status"]["podName"] == name
    answer = await asyncio.wait_for(asking, 5)
    assert answer.status == 200
    request = json.loads(await answer.text())
    assert request["upload"]["url"].endswith(f"/{NS}/shot")
    secret = api.objects[f"{SECRETS}/shot-request"]["data"]["request.json"]
    assert request == json.loads(base64.b64decode(secret))


FAILED = {"failure": {"reason": "NavigationFailed", "message": "net::ERR_NAME_NOT_RESOLVED"}}


@pytest.mark.parametrize(
    ("reason", "phase"), [("NavigationFailed", "Failed"), ("Internal", "Queued")]
)
async def test_a_pods_outcome_is_recorded_on_its_job(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    reason: str,
    phase: str,
) -> None:
    client, _ = served
    monkeypatch.setattr(reconciler, "_wake", lambda delay, key: None)  # no retry runs here
    name = await ready_pod(api, reconciler)
    key, url = key_of(api, name), f"/v1/assignments/{NS}/{name}/outcome"
    outcome = {"failure": {**FAILED["failure"], "reason": reason}}
    assert (await client.post(url, headers=bearer(key), json=outcome)).status == 409  # no job
    running_in(api, reconciler, name)
    assert (await client.post(url, headers=bearer(key), data="not json")).status == 400
    assert api.objects[f"{JOBS}/shot"]["status"]["phase"] == "Running"
    assert (await client.post(url, headers=bearer(key), json=outcome)).status == 204
    status = api.objects[f"{JOBS}/shot"]["status"]
    assert status["phase"] == phase
    if phase == "Failed":
        assert status["failure"] == outcome["failure"]
    else:  # retriable: another attempt, after the backoff
        assert status["conditions"][-1]["reason"] == "Retrying"
        assert status["conditions"][-1]["message"].startswith("Internal: net::ERR")
    assert f"{PODS}/{name}" not in api.objects  # recorded, then the pod is removed


async def test_a_cold_pod_reports_its_outcome_with_its_jobs_token(
    api: FakeApi,  # noqa: F811
    reconciler: Reconciler,  # noqa: F811
    served: Served,
) -> None:
    client, _ = served
    add_policy(api)
    body = add_job(api, "shot")
    reindex(reconciler, api)
    index_pods(reconciler, api)  # no warm pods
    await reconciler.job_event("ADDED", body)
    reindex(reconciler, api)
    secret = api.objects[f"{SECRETS}/shot-request"]["data"]["request.json"]
    token = json.loads(base64.b64decode(secret))["reportToken"]
    url = f"/v1/assignments/{NS}/shot-1/outcome"
    assert (await client.post(url, headers=bearer(token[:-1] + "x"), json=FAILED)).status == 401
    assert (await client.post(url, headers=bearer(token), json=FAILED)).status == 204
    assert api.objects[f"{JOBS}/shot"]["status"]["failure"] == FAILED["failure"]

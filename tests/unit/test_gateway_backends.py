"""The gateway's backend protocols (kubeshot.gateway.backend): what create_app accepts and how it
composes a backend with asynchronous jobs, the gateway's own JobRegistry on a stand-in backend,
and who the local backend's workers run as. Real backends run in tests/gateway (local) and
tests/cluster/operator (kubernetes)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import pwd
import time
from pathlib import Path

import pytest

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureReport,
    FailureReason,
    Phase,
    ScreenshotPolicy,
)
from kubeshot.gateway import Settings, create_app, keys
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, CaptureResult, Jobs
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.jobs import JobRegistry
from kubeshot.gateway.jobstore import SqliteJobs
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.pool import WorkerUser, resolve_worker_user, worker_environment
from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from kubeshot.gateway.worker import RUN_AS
from kubeshot.store.files import FileStore
from kubeshot_capture import browser

ALICE = Identity(name="alice", kind="token", namespace="a", rate_key="token:alice")
BOB = Identity(name="bob", kind="token", namespace="a", rate_key="token:bob")
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def settings() -> Settings:
    return Settings(auth_token="unit-test-token-0123456789abcdef")


class NoPolicies:
    """Everything of a Backend except `policy`: it matches the protocol only structurally."""

    queue_depth = 0
    ready = True

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def can_accept(self) -> bool:
        return True

    def begin_shutdown(self) -> None: ...

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        raise AssertionError("never called")


class Quick(Backend):
    """A backend of synchronous captures only; `gate` holds each capture until it is set."""

    def __init__(self, fail: CaptureError | None = None) -> None:
        self.accepting = True
        self.fail = fail
        self.gate = asyncio.Event()
        self.callers: list[Identity] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def ready(self) -> bool:
        return True

    def can_accept(self) -> bool:
        return self.accepting

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        return PolicySet([]).get(name)

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        self.callers.append(caller)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        report = CaptureReport(
            content_type="image/png",
            bytes=len(PNG),
            sha256=hashlib.sha256(PNG).hexdigest(),
            format="png",
        )
        return CaptureResult(PNG, report)


class WithJobs(Quick):
    """A backend that runs asynchronous captures itself."""

    async def submit(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureJobView:
        raise AssertionError("never called")

    async def find(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        return None


def test_an_object_that_is_not_a_backend_is_refused_when_the_app_is_built() -> None:
    with pytest.raises(TypeError, match=r"NoPolicies is not a gateway Backend: it lacks policy$"):
        create_app(settings(), backend=NoPolicies())  # type: ignore[arg-type]


def test_a_backend_without_jobs_gets_the_gateways_job_registry() -> None:
    backend = Quick()
    assert not isinstance(backend, Jobs)
    app = create_app(settings(), backend=backend)
    jobs = app[keys.JOBS]
    assert isinstance(jobs, JobRegistry)
    assert jobs.backend is backend
    assert jobs.store is app[keys.STORE]


def test_a_backend_with_jobs_runs_them_itself() -> None:
    backend = WithJobs()
    app = create_app(settings(), backend=backend)
    assert app[keys.JOBS] is backend


async def registry(backend: Backend, tmp_path: Path) -> JobRegistry:
    store = FileStore(tmp_path, 60)
    jobs = SqliteJobs(tmp_path / "jobs" / "jobs.sqlite3")
    await jobs.open()
    return JobRegistry(backend, store, jobs, 60, Metrics())


async def wait_finished(jobs: JobRegistry, job_id: str) -> CaptureJobView:
    for _ in range(200):
        view = await jobs.find(ALICE, job_id)
        assert view is not None
        if view.phase in {Phase.SUCCEEDED, Phase.FAILED}:
            return view
        await asyncio.sleep(0.01)
    raise AssertionError("the job never finished")


async def test_registry_jobs_run_on_the_backends_captures_for_their_caller_only(
    tmp_path: Path,
) -> None:
    backend = Quick()
    jobs = await registry(backend, tmp_path)
    policy = PolicySet([]).get(None)
    accepted = await jobs.submit(ALICE, policy, CaptureOptions(url="https://example.com/"))
    assert accepted.phase is Phase.QUEUED and accepted.policy == "default"
    assert await jobs.find(BOB, accepted.id) is None
    backend.gate.set()
    done = await wait_finished(jobs, accepted.id)
    assert backend.callers == [ALICE]
    assert done.result is not None and done.result.url == f"/v1/captures/{done.id}/artifact"
    assert await jobs.store.get(done.id, done.result.sha256) == PNG
    assert await jobs.expire() == 0
    assert await jobs.expire(now=time.time() + 61) == 1
    assert await jobs.find(ALICE, done.id) is None
    assert await jobs.store.get(done.id, done.result.sha256) is None


async def test_registry_failures_and_overload(tmp_path: Path) -> None:
    backend = Quick(CaptureError(FailureReason.TIMEOUT, "too slow"))
    backend.gate.set()
    jobs = await registry(backend, tmp_path)
    policy = PolicySet([]).get(None)
    options = CaptureOptions(url="https://example.com/")
    failed = await wait_finished(jobs, (await jobs.submit(ALICE, policy, options)).id)
    assert failed.failure is not None and failed.failure.reason is FailureReason.TIMEOUT
    backend.accepting = False
    with pytest.raises(ApiError) as refused:
        await jobs.submit(ALICE, policy, options)
    assert (refused.value.status, refused.value.code) == (503, "overloaded")
    assert refused.value.headers == {"Retry-After": "1"}
    assert jobs.metrics.registry.get_sample_value("kubeshot_overloaded_total") == 1


# --- who the local backend's workers run as ---------------------------------------------------

NOBODY = pwd.getpwnam("nobody")


@pytest.mark.parametrize(
    ("spec", "euid", "expected"),
    [
        (None, 0, WorkerUser(NOBODY.pw_uid, NOBODY.pw_gid)),
        ("", 0, WorkerUser(NOBODY.pw_uid, NOBODY.pw_gid)),
        ("nobody", 0, WorkerUser(NOBODY.pw_uid, NOBODY.pw_gid)),
        ("12345:23456", 0, WorkerUser(12345, 23456)),
        ("54321", 0, WorkerUser(54321, 54321)),  # a uid without an account: its own gid
        (f"nobody:{NOBODY.pw_gid}", 0, WorkerUser(NOBODY.pw_uid, NOBODY.pw_gid)),
        (None, 1000, None),  # an ordinary user's gateway: its workers share its uid
        ("1000", 1000, None),
        ("root", 0, None),  # root workers only when asked for by name
        ("0", 0, None),
    ],
)
def test_worker_user(spec: str | None, euid: int, expected: WorkerUser | None) -> None:
    assert resolve_worker_user(spec, euid=euid) == expected


@pytest.mark.parametrize(
    ("spec", "euid", "words"),
    [
        ("no-such-user-kubeshot", 0, "no such user"),
        ("nobody:no-such-group-kubeshot", 0, "no such group"),
        ("nobody", 1000, "only a gateway started as root"),
        ("root", 1000, "does not run as root"),
        ("nobody:0", 0, "no unprivileged group"),
        ("nobody:root", 0, "no unprivileged group"),
    ],
)
def test_worker_user_refusals(spec: str, euid: int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        resolve_worker_user(spec, euid=euid)


def test_worker_environment_has_no_secrets_and_a_home_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SECRET_ENVIRONMENT:
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/root/.config")
    env = worker_environment("KUBESHOT_WORKER_TAG=abc", "/tmp/w", WorkerUser(7, 8))
    assert not set(SECRET_ENVIRONMENT) & set(env)
    assert "secret-value" not in env.values()
    assert not [name for name in env if name.startswith("XDG_")]
    assert (env["HOME"], env["TMPDIR"]) == ("/tmp/w", "/tmp/w")
    assert env[RUN_AS] == "7:8"
    assert env["KUBESHOT_WORKER_TAG"] == "abc"
    assert RUN_AS not in worker_environment("T=1", "/tmp/w", None)


class RefusedNamespaces:
    """libc as a kernel without unprivileged user namespaces answers unshare()."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

    def unshare(self, flags: int) -> int:
        return -1


def test_the_sandbox_probe_says_why_chromium_cannot_have_its_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    browser.sandbox_refusal.cache_clear()
    assert "as root" in str(browser.sandbox_refusal())
    monkeypatch.setattr(browser.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(browser.ctypes, "CDLL", RefusedNamespaces)
    monkeypatch.setattr(browser.ctypes, "get_errno", lambda: errno.EPERM)
    browser.sandbox_refusal.cache_clear()
    assert browser.sandbox_refusal() == (
        "the kernel refused new user/PID/network namespaces (unshare: Operation not permitted)"
    )
    assert "--no-sandbox" in browser.chromium_args()
    browser.sandbox_refusal.cache_clear()

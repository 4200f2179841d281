"""The kubernetes backend's pure parts: the shared watch's cache and wake-ups, job visibility,
the job view, the upload endpoint's format checks, and what callers see of the API server's
refusals. The real thing runs in tests/cluster/operator/test_gateway_kubernetes.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from contextlib import asynccontextmanager
from typing import Any

import pytest
from PIL import Image

from kubeshot.api import CaptureOptions, Format, ScreenshotPolicy
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, Jobs
from kubeshot.gateway.cluster import KubernetesBackend
from kubeshot.gateway.errors import ApiError
from kubeshot.gateway.kube import CaptureJobWatch, KubeError
from kubeshot.gateway.uploads import decodes_as, has_format
from kubeshot.kube.names import caller_label, store_id
from kubeshot.store.files import FileStore

UID = "0f3c2b1a-0000-4000-8000-00000000beef"


def job(name: str = "capture-1", phase: str | None = None, **extra: Any) -> dict[str, Any]:
    labels = extra.pop("labels", {"kubeshot.dev/caller": "alice"})
    document: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": extra.pop("uid", UID),
            "labels": labels,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"html": "<p>x</p>", "policyRef": "default"},
    }
    if phase is not None:
        document["status"] = {"phase": phase, **extra}
    return document


class NeverClient:
    """A client whose API server never answers: the watch is never established."""

    async def request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def stream(self, path: str, params: dict[str, str]) -> Any:
        await asyncio.Event().wait()
        yield None

    async def close(self) -> None:
        pass


class RefusingClient(NeverClient):
    """A client whose API server fails every request, with the details it gives."""

    TEXT = 'Internal error occurred: failed calling webhook "quota.internal.example": 10.0.3.7'

    async def request(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        raise KubeError(500, "InternalError", self.TEXT)


def backend(client: Any = None) -> KubernetesBackend:
    return KubernetesBackend(
        ["team-a"],
        store=FileStore(None, 60),
        wait_grace=1,
        client=client or NeverClient(),
    )


def caller(name: str, namespace: str) -> Identity:
    return Identity(name=name, kind="token", namespace=namespace, rate_key=f"token:{name}")


def test_the_kubernetes_backend_runs_its_own_async_jobs() -> None:
    gateway = backend()
    assert isinstance(gateway, Backend)
    assert isinstance(gateway, Jobs)


async def test_a_waiter_is_woken_by_the_shared_watch_when_its_job_finishes() -> None:
    watch = backend().watch
    watch.observe(job(phase="Pending"))
    waiter = asyncio.create_task(watch.wait_finished(("team-a", "capture-1"), 30))
    await asyncio.sleep(0)
    watch.observe(job(phase="Running"))
    await asyncio.sleep(0)
    assert not waiter.done()
    watch.observe(job(phase="Failed", failure={"reason": "Timeout", "message": "slow"}))
    finished = await waiter
    assert finished["status"]["phase"] == "Failed"
    assert watch._changed == {}  # nothing left behind per request


async def test_a_job_finished_before_the_wait_is_answered_at_once() -> None:
    watch = backend().watch
    watch.observe(job(phase="Succeeded"))
    finished = await watch.wait_finished(("team-a", "capture-1"), 1)
    assert finished is not None


async def test_a_deleted_job_ends_the_wait_with_none() -> None:
    watch = backend().watch
    watch.observe(job(phase="Running"))
    waiter = asyncio.create_task(watch.wait_finished(("team-a", "capture-1"), 30))
    await asyncio.sleep(0)
    watch.observe(job(phase="Running"), deleted=True)
    assert await waiter is None
    assert watch.by_uid == {}


async def test_the_created_object_never_replaces_what_the_watch_saw_later() -> None:
    watch = backend().watch
    watch.observe(job(phase="Running"))
    watch.observe(job(), initial=True)
    assert watch.jobs[("team-a", "capture-1")]["status"]["phase"] == "Running"


async def test_waiting_times_out() -> None:
    watch = backend().watch
    watch.observe(job(phase="Running"))
    with pytest.raises(TimeoutError):
        await watch.wait_finished(("team-a", "capture-1"), 0.05)


async def test_not_ready_until_the_watch_is_established() -> None:
    gateway = backend()
    await gateway.start()
    try:
        await asyncio.sleep(0.05)
        assert not gateway.ready
        gateway.watch._established.add("team-a")
        assert gateway.ready
        gateway.begin_shutdown()
        assert not gateway.ready
    finally:
        await gateway.close()


async def test_jobs_are_visible_to_their_caller_and_kubectl_jobs_to_the_namespace() -> None:
    gateway = backend()
    gateway.watch.observe(job())
    gateway.watch.observe(job("by-kubectl", uid="1" * 32, labels={}))
    own = store_id(job())
    assert own == UID.replace("-", "")
    seen = await gateway.find(caller("alice", "team-a"), own)
    assert seen is not None and seen.id == own
    assert await gateway.find(caller("bob", "team-a"), own) is None
    assert await gateway.find(caller("alice", "team-b"), own) is None
    assert await gateway.find(caller("bob", "team-a"), "1" * 32) is not None
    assert await gateway.find(caller("alice", "team-a"), "f" * 32) is None


def test_the_view_follows_the_job_status() -> None:
    gateway = backend()
    sha = "a" * 64
    done = job(
        phase="Succeeded",
        completionTime="2026-01-01T00:00:05Z",
        result={"contentType": "image/png", "bytes": 3, "sha256": sha, "url": "/elsewhere"},
    )
    view = gateway.view(done).to_wire()
    assert view["id"] == UID.replace("-", "")
    assert view["phase"] == "Succeeded"
    assert view["result"]["url"] == f"/v1/captures/{view['id']}/artifact"
    failed = gateway.view(job(phase="Failed", failure={"reason": "Timeout", "message": "m"}))
    assert failed.failure is not None and failed.failure.reason.http_status == 504
    assert gateway.view(job()).phase.value == "Pending"


@pytest.mark.parametrize(
    ("fmt", "served"),
    [("png", "image/png"), (None, "image/png"), ("html", "text/html; charset=utf-8")],
)
def test_the_view_gives_the_jobs_format_not_what_the_pod_reported(
    fmt: str | None, served: str
) -> None:
    done = job(
        phase="Succeeded",
        result={"contentType": "text/html", "bytes": 3, "sha256": "a" * 64},
    )
    if fmt is not None:
        done["spec"]["format"] = fmt
    view = backend().view(done)
    assert view.result is not None
    assert view.result.content_type == served


def png(side: int = 64) -> bytes:
    out = io.BytesIO()
    Image.frombytes("L", (side, side), bytes(range(256)) * (side * side // 256)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "data", "ok"),
    [
        (Format.PNG, png(), True),
        (Format.PNG, b"\x89PNG\r\n\x1a\n<script>alert(1)</script>", False),
        (Format.PNG, png()[: len(png()) // 2], False),  # only decoding all pixels shows it
        (Format.JPEG, png(), False),
        (Format.PDF, b"%PDF-1.7\n<html><script>alert(1)</script>", False),
        (Format.WEBP, b"RIFF\0\0\0\0WEBPVP8 <script>", False),
        (Format.HTML, "<p>é</p>".encode(), True),
        (Format.HTML, b"", False),
    ],
)
def test_uploads_must_decode_as_the_jobs_format(fmt: Format, data: bytes, ok: bool) -> None:
    assert (decodes_as(fmt, data) is None) is ok


async def test_kubernetes_api_refusals_are_logged_not_echoed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = backend(RefusingClient())
    policy = ScreenshotPolicy.model_validate({"metadata": {"name": "default"}})
    options = CaptureOptions.model_validate({"html": "<p>x</p>"})
    calls = [
        lambda: gateway.policy(caller("alice", "team-a"), None),
        lambda: gateway.submit(caller("alice", "team-a"), policy, options),
        lambda: gateway.job("team-a", "capture-2"),
    ]
    with caplog.at_level(logging.WARNING, logger="kubeshot.gateway.cluster"):
        for call in calls:
            with pytest.raises(ApiError) as refused:
                await call()
            assert refused.value.status == 503
            answer = str(refused.value.body())
            assert "webhook" not in answer and "10.0.3.7" not in answer
    assert caplog.text.count(RefusingClient.TEXT) == len(calls)


def test_caller_labels_are_valid_label_values() -> None:
    assert caller_label("ci") == "ci"
    long = caller_label("a" * 100)
    assert len(long) <= 63 and long.isalnum()
    # Jobs are found by this label: a name that is no label value keeps its old hash.
    assert caller_label("a" * 100) == hashlib.sha256(b"a" * 100).hexdigest()[:32]


@pytest.mark.parametrize(
    ("fmt", "data", "ok"),
    [
        (Format.PNG, b"\x89PNG\r\n\x1a\nrest", True),
        (Format.PNG, b"%PDF-1.7", False),
        (Format.PDF, b"%PDF-1.7", True),
        (Format.JPEG, b"\xff\xd8\xff\xe0", True),
        (Format.WEBP, b"RIFF\0\0\0\0WEBPVP8 ", True),
        (Format.WEBP, b"RIFF\0\0\0\0WAVEfmt ", False),
        (Format.HTML, "<p>é</p>".encode(), True),
        (Format.HTML, b"\xff\xfe\xfa", False),
    ],
)
def test_uploads_are_checked_for_their_format(fmt: Format, data: bytes, ok: bool) -> None:
    assert has_format(fmt, data) is ok


def test_watch_namespaces_are_deduplicated() -> None:
    watch = CaptureJobWatch(NeverClient(), ["b", "a", "b"])  # type: ignore[arg-type]
    assert watch.namespaces == ["a", "b"]

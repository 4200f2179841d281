"""The gateway's Kubernetes API access: a small aiohttp client and one shared CaptureJob watch.

Credentials are found as Kopf finds them (in-cluster service account, else the kubeconfig) and
re-read when the server answers 401 (rotated service-account tokens). The gateway's RBAC allows
CaptureJobs create/get/list/watch and ScreenshotPolicies get/list/watch, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from kubeshot.api.crds import API_VERSION

if TYPE_CHECKING:
    import kopf

log = logging.getLogger("kubeshot.gateway.kube")
Manifest = dict[str, Any]


class KubeError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def login() -> kopf.ConnectionInfo:
    """The pod's service account, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    import kopf  # here, not at the top: the local backend's workers never pay for it

    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account and no kubeconfig to reach the cluster with")
    return info


def kubeshot_path(plural: str, namespace: str, name: str | None = None) -> str:
    path = f"/apis/{API_VERSION}/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name is not None else path


class KubeClient:
    """JSON in, JSON out; refusals as KubeError."""

    def __init__(self, login_fn: Callable[[], kopf.ConnectionInfo] = login) -> None:
        self._login = login_fn
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    def _open(self) -> aiohttp.ClientSession:
        info = self._login()
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "kubeshot-gateway"},
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: object = None) -> Manifest:
        for attempt in (1, 2):
            session = self._session or self._open()
            async with session.request(
                method,
                self._server + path,
                data=None if body is None else json.dumps(body),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                text = await response.text()
                if response.status == 401 and attempt == 1:
                    await self.close()  # rotated token: log in again, once
                    continue
                if response.status >= 400:
                    raise KubeError(response.status, _message(text))
                document: Manifest = json.loads(text) if text else {}
                return document
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: dict[str, str]
    ) -> AsyncIterator[AsyncIterator[Manifest]]:
        """A watch: the events of `path` as they come, one JSON document a line."""
        session = self._session or self._open()
        async with session.get(
            self._server + path,
            params=params,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
        ) as response:
            if response.status >= 400:
                if response.status == 401:
                    await self.close()
                raise KubeError(response.status, _message(await response.text()))
            yield _lines(response)


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[Manifest]:
    # Objects may be longer than aiohttp's line limit: split the chunks ourselves.
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))[:2000]
    except (ValueError, AttributeError):
        return text[:2000]


Key = tuple[str, str]


class CaptureJobWatch:
    """The CaptureJobs of some namespaces, kept current by one watch per namespace.

    Every waiting request is woken from here; no request opens a watch of its own.
    """

    def __init__(
        self,
        client: KubeClient,
        namespaces: list[str],
        on_connect: Callable[[], None] = lambda: None,
        retry_seconds: float = 1.0,
    ) -> None:
        self.client = client
        self.namespaces = sorted(set(namespaces))
        self.jobs: dict[Key, Manifest] = {}
        self.by_uid: dict[str, Key] = {}
        self._changed: dict[Key, asyncio.Event] = {}
        self._established: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._on_connect = on_connect
        self._retry_seconds = retry_seconds

    @property
    def established(self) -> bool:
        return self._established == set(self.namespaces)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(ns)) for ns in self.namespaces]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._established.clear()

    def observe(self, job: Manifest, *, deleted: bool = False, initial: bool = False) -> None:
        meta = job.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        uid = str(meta.get("uid", "")).replace("-", "")
        if initial and key in self.jobs:
            return  # the watch has seen a newer version already
        if deleted:
            self.jobs.pop(key, None)
            self.by_uid.pop(uid, None)
        else:
            self.jobs[key] = job
            self.by_uid[uid] = key
        event = self._changed.get(key)
        if event is not None:
            event.set()

    async def wait_finished(self, key: Key, within: float) -> Manifest | None:
        """The job once finished; None when deleted first; TimeoutError after `within` s."""
        event = self._changed.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(within):
                while True:
                    event.clear()
                    job = self.jobs.get(key)
                    if job is None:
                        return None
                    if (job.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
                        return job
                    await event.wait()
        finally:
            self._changed.pop(key, None)

    async def _run(self, namespace: str) -> None:
        path = kubeshot_path("capturejobs", namespace)
        while True:
            try:
                listing = await self.client.request("GET", path)
                seen = set()
                for item in listing.get("items", []):
                    item.setdefault("metadata", {})["namespace"] = namespace
                    self.observe(item)
                    seen.add(item["metadata"]["name"])
                for key in [k for k in self.jobs if k[0] == namespace and k[1] not in seen]:
                    self.observe(self.jobs[key], deleted=True)
                version = str(listing.get("metadata", {}).get("resourceVersion", ""))
                params = {
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "3600",
                }
                async with self.client.stream(path, params) as events:
                    self._established.add(namespace)
                    self._on_connect()
                    log.info("watching CaptureJobs in %s", namespace)
                    async for event in events:
                        kind, obj = event.get("type"), event.get("object") or {}
                        if kind == "ERROR":
                            break  # 410 Gone and the like: list again
                        if kind in {"ADDED", "MODIFIED"}:
                            self.observe(obj)
                        elif kind == "DELETED":
                            self.observe(obj, deleted=True)
                # The server ended the watch (its timeout, or an expired resourceVersion): list
                # again at once, still ready, since the list catches up on anything missed.
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must outlive any failure; it retries
                log.warning("CaptureJob watch in %s interrupted: %s", namespace, exc)
                self._established.discard(namespace)
                await asyncio.sleep(self._retry_seconds)

"""The gateway's Kubernetes API access: one shared CaptureJob watch over `kubeshot.kube`.

The gateway's RBAC allows CaptureJobs create/get/list/watch and ScreenshotPolicies
get/list/watch, nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from kubeshot.kube import ApiError as KubeError
from kubeshot.kube import KubeClient, Manifest, login
from kubeshot.kube.names import job_phase, jobs_path, store_id

__all__ = ["CaptureJobWatch", "KubeClient", "KubeError", "Manifest", "login"]

log = logging.getLogger("kubeshot.gateway.kube")

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
        uid = store_id(job) if "uid" in meta else ""
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
                    if job_phase(job).finished:
                        return job
                    await event.wait()
        finally:
            self._changed.pop(key, None)

    async def _run(self, namespace: str) -> None:
        path = jobs_path(namespace)
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

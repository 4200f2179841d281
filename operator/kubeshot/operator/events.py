"""Kubernetes Events for CaptureJob and ScreenshotPolicy transitions (`kubectl describe`).

Posted in the background: an Event that cannot be written never holds up a capture.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from kubeshot.api.crds import API_VERSION
from kubeshot.kube import ApiError, KubeClient, names, resource_path
from kubeshot.operator.lifecycle import now

log = logging.getLogger(__name__)


def build_event(
    kind: str, body: Mapping[str, Any], type_: str, reason: str, message: str, at: str
) -> dict[str, Any]:
    meta = body.get("metadata", {})
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{meta.get('name', 'kubeshot')}.",
            "namespace": meta["namespace"],
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": meta.get("name"),
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": names.MANAGER},
        "reportingComponent": names.MANAGER,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }


class EventPoster:
    """Posts Events without waiting for them, a bounded number at a time."""

    def __init__(self, client: KubeClient, concurrency: int = 16) -> None:
        self._client = client
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def post(
        self, kind: str, body: Mapping[str, Any], type_: str, reason: str, message: str
    ) -> None:
        self.send(build_event(kind, body, type_, reason, message, now()))

    def send(self, event: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._post(event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        async with self._slots:
            try:
                await self._client.create(
                    resource_path("v1", "events", event["metadata"]["namespace"]), event
                )
            except (TimeoutError, ApiError, OSError) as exc:
                log.debug("event %s not posted: %s", event["reason"], exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

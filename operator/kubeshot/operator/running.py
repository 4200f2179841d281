"""`kubeshot operator`: leader election, then Kopf with the handlers, a sweeper, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket

import aiohttp
import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubeshot.kube import ApiError, KubeClient
from kubeshot.operator import assigning, metrics
from kubeshot.operator.leading import LeaderLease
from kubeshot.operator.notifying import SHUTDOWN_GRACE_SECONDS
from kubeshot.operator.reconciling import Reconciler
from kubeshot.operator.settings import OperatorSettings

log = logging.getLogger(__name__)
LEADER_KEY = web.AppKey("leader", asyncio.Event)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    leading = request.app[LEADER_KEY].is_set()
    return web.json_response({"status": "ok", "leader": leading})


def create_app(leader: asyncio.Event) -> web.Application:
    app = web.Application()
    app[LEADER_KEY] = leader
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    return app


async def _sweep_forever(reconciler: Reconciler, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await reconciler.sweep()
        except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as exc:
            log.warning("sweep failed, next in %gs: %s", every, exc)


async def run(settings: OperatorSettings) -> int:
    """Run until SIGTERM/SIGINT (0) or until leadership is lost (1)."""
    leader = asyncio.Event()
    runner = web.AppRunner(create_app(leader), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    for sock in getattr(site._server, "sockets", None) or []:
        log.info("serving /metrics and /healthz on %s:%s", *sock.getsockname()[:2])
    identity = settings.identity or f"{socket.gethostname()}-{secrets.token_hex(4)}"
    lease = LeaderLease(
        KubeClient(),
        settings.lease_namespace,
        settings.lease_name,
        identity,
        settings.lease_duration_seconds,
    )
    # Every write of the handlers and the sweeper is fenced: none once the Lease is not surely
    # held, however late a task that started as the leader's sends it.
    client = KubeClient(guard=lease.fence)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    lost = asyncio.Event()
    tasks: list[asyncio.Task[object]] = []
    runners = [runner]
    try:
        acquiring = asyncio.create_task(lease.acquire())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not acquiring.done():
            acquiring.cancel()
            return 0
        stopping.cancel()
        leader.set()
        metrics.LEADER.set(1)
        reconciler = Reconciler(client, settings)
        # Warm pods ask the leader alone for their jobs: a standby's port is closed.
        assigner = web.AppRunner(assigning.create_app(reconciler, leader), access_log=None)
        await assigner.setup()
        runners.append(assigner)
        assigned = web.TCPSite(assigner, settings.assignment_host, settings.assignment_port)
        await assigned.start()
        for sock in getattr(assigned._server, "sockets", None) or []:
            log.info("serving warm pods' assignments on %s:%s", *sock.getsockname()[:2])
        tasks.append(asyncio.create_task(lease.hold(lost)))
        tasks.append(asyncio.create_task(_sweep_forever(reconciler, settings.resync_seconds)))
        import kubeshot.operator.handlers  # noqa: F401 - registers the handlers with Kopf

        ready = asyncio.Event()
        kopf_task = asyncio.create_task(
            kopf.operator(
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                standalone=True,  # one active replica by the Lease, not by Kopf's peering
                ready_flag=ready,
                memo=kopf.Memo(reconciler=reconciler, settings=settings),
            )
        )
        readying = asyncio.create_task(ready.wait())
        await asyncio.wait({kopf_task, readying}, return_when=asyncio.FIRST_COMPLETED)
        readying.cancel()
        # Kopf installed its own signal handlers (a graceful stop that waits for idle tasks).
        # Every step here is safe to interrupt, so stopping is cancelling, at once.
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, kopf_task.cancel)
        if stop.is_set():
            kopf_task.cancel()

        async def cancel_when_lost() -> None:
            await lost.wait()
            kopf_task.cancel()

        tasks.append(asyncio.create_task(cancel_when_lost()))
        with contextlib.suppress(asyncio.CancelledError):
            await kopf_task
        await reconciler.events.drain()
        await reconciler.notifier.close(0 if lost.is_set() else SHUTDOWN_GRACE_SECONDS)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        metrics.LEADER.set(0)
        if leader.is_set() and not lost.is_set():
            await lease.release()
        leader.clear()
        for each in reversed(runners):
            await each.cleanup()
        await client.close()
        await lease.client.close()
    return 1 if lost.is_set() else 0

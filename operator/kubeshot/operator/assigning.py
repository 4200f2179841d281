"""The assignment endpoint: a warm capture pod asks here for its one job (docs/operator.md
"Warm capture pods"). Nothing connects to a capture pod; it asks, with the key of its Secret.

    GET  /v1/assignments/{namespace}/{pod}          200 the job's request (its log fields in
         the Kubeshot-Log-Context header) · 204 none yet (25 s)
         401 without the pod's key, 404 for a pod that is no warm pod of ours
    POST /v1/assignments/{namespace}/{pod}/outcome  204 recorded · 409 no job names the pod
         401 without the warm pod's key or the token of the job that names the pod (any pod,
         cold ones too, reports its outcome here, ahead of the kubelet)
Both: 503 on a replica that does not lead. The answer is computed from the API server's
objects (Kopf's indexes and the job's request Secret), never from what a leader alone
remembers: a new leader answers as the old one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging

from aiohttp import web

from kubeshot import logs
from kubeshot.api import Phase
from kubeshot.kube import NotFound
from kubeshot.kube.names import jobs_path
from kubeshot.operator import building, credentials, lifecycle
from kubeshot.operator.reconciling import Reconciler, pod_log_context
from kubeshot.operator.views import JobView
from kubeshot.operator.warming import WarmPod

log = logging.getLogger(__name__)
POLL_SECONDS = 25.0
WAKE_SECONDS = 1.0  # a poll looks again this often even unwoken (a job started by another leader)
MAX_OUTCOME_BYTES = 8192  # the termination message's 4 KiB, with room
RECONCILER = web.AppKey("reconciler", Reconciler)
LEADER = web.AppKey("leader", asyncio.Event)


def create_app(reconciler: Reconciler, leader: asyncio.Event) -> web.Application:
    app = web.Application(client_max_size=MAX_OUTCOME_BYTES)
    app[RECONCILER], app[LEADER] = reconciler, leader
    app.router.add_get("/v1/assignments/{namespace}/{pod}", _assignment)
    app.router.add_post("/v1/assignments/{namespace}/{pod}/outcome", _outcome)
    return app


async def _assignment(request: web.Request) -> web.Response:
    reconciler, pod = await _asking_pod(request)
    deadline = asyncio.get_running_loop().time() + POLL_SECONDS
    with reconciler.pool.polling(pod.namespace, pod.name) as woken:
        while True:
            job = await _job_naming(reconciler, pod.namespace, pod.name)
            text = await _request_of(reconciler, job) if job is not None else None
            if text is not None and job is not None:
                # The job's log fields, for the pod's lines from now on (docs/operator.md, "Tracing
                # and logs").
                context = pod_log_context(job, "assign warm pod")
                log.info("warm pod %s/%s given job %s", pod.namespace, pod.name, job.name)
                return web.Response(
                    text=text,
                    content_type="application/json",
                    headers={logs.CONTEXT_HEADER: json.dumps(context, sort_keys=True)},
                )
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return web.Response(status=204)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(WAKE_SECONDS, remaining))
            woken.clear()


async def _outcome(request: web.Request) -> web.Response:
    """A pod's outcome, recorded at once. A warm pod proves itself with its key; any pod with
    its job's token (`reportToken` of its request: the job's status names its hash)."""
    reconciler = _leading(request)
    namespace, name = request.match_info["namespace"], request.match_info["pod"]
    presented = _bearer(request)
    job = await _job_naming(reconciler, namespace, name)
    warm = reconciler.pool.pod(namespace, name)
    token = job.status.upload_token_sha256 if job is not None else None
    digest = hashlib.sha256(presented.encode()).hexdigest()
    if not (token and hmac.compare_digest(digest, token)) and not (
        warm is not None and await reconciler.pool.authentic(warm, presented)
    ):
        raise web.HTTPUnauthorized(text="the pod's key or its job's token is required")
    if job is None:
        raise web.HTTPConflict(text="no job names this pod")
    outcome = lifecycle.from_termination_message(await request.text())
    if outcome is None:
        raise web.HTTPBadRequest(text="not a capture outcome")
    pod_uid = warm.uid if warm is not None else None  # a cold pod is deleted once it ends
    await reconciler.record(namespace, job.name, job.uid, name, outcome, pod_uid)
    return web.Response(status=204)


async def _asking_pod(request: web.Request) -> tuple[Reconciler, WarmPod]:
    """The warm pod that asks, proven by its key; else the HTTP error that answers."""
    reconciler = _leading(request)
    pod = reconciler.pool.pod(request.match_info["namespace"], request.match_info["pod"])
    if pod is None:
        raise web.HTTPNotFound(text="no such warm pod")
    if not await reconciler.pool.authentic(pod, _bearer(request)):
        raise web.HTTPUnauthorized(text="the pod's key is required")
    return reconciler, pod


def _leading(request: web.Request) -> Reconciler:
    """The leader's Reconciler once Kopf's indexes are filled (a pod asked a replica that just
    took over would otherwise be told it is no pod of ours); else 503: the pod asks again."""
    reconciler = request.app[RECONCILER]
    if not request.app[LEADER].is_set():
        raise web.HTTPServiceUnavailable(text="not the leader")
    if reconciler.jobs is None or reconciler.pool.index is None:
        raise web.HTTPServiceUnavailable(text="starting")
    return reconciler


def _bearer(request: web.Request) -> str:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else ""


async def _job_naming(reconciler: Reconciler, namespace: str, pod: str) -> JobView | None:
    """The Running job whose status names the pod (written by the operator alone): from the
    index; a job this process just started there (the watch shows it a moment later), read."""
    for view in reconciler.all_jobs():
        if view.namespace == namespace and _names(view, pod):
            return view
    hint = reconciler.pool.job_hint(namespace, pod)
    if hint is None:
        return None
    try:
        view = JobView.from_body(await reconciler.client.get(jobs_path(namespace, hint[0])))
    except NotFound:
        return None
    return view if view.uid == hint[1] and _names(view, pod) else None


def _names(view: JobView, pod: str) -> bool:
    return view.status.pod_name == pod and view.phase is Phase.RUNNING


async def _request_of(reconciler: Reconciler, job: JobView) -> str | None:
    """The job's request, from its Secret (the job's own), once it exists."""
    name = building.secret_name(building.JobRef(job.name, job.namespace, job.uid))
    return await credentials.owned_text(
        reconciler.client, job.namespace, name, job.uid, building.REQUEST_KEY
    )

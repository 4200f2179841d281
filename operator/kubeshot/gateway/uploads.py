"""The internal upload endpoint: capture pods PUT their artifact here, on a port of its own.

`PUT /v1/internal/uploads/{namespace}/{name}` with `Authorization: Bearer <job token>` and
`X-Kubeshot-Sha256`. The token counts for its own job only: its sha256 is compared, in constant
time, with the `uploadTokenSha256` the operator wrote into that job's status. The body must
decode as a file of the job's format (kubeshot_capture.artifacts.verify, as on the local path):
a capture pod runs hostile pages, so its artifact is checked as untrusted input. Nothing else is
served on this port. With KUBESHOT_STORE=s3 pods upload to the bucket instead, and this endpoint
refuses (409): the kubernetes backend checks their artifacts at their first read (CheckedStore).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re

from aiohttp import web

from kubeshot.api import Format, Phase, artifact_path
from kubeshot.gateway import keys
from kubeshot.gateway.auth import parse_authorization
from kubeshot.gateway.cluster import KubernetesBackend, decodes_as
from kubeshot.gateway.errors import ApiError, unauthorized
from kubeshot.kube.names import job_format, job_phase, store_id

log = logging.getLogger("kubeshot.gateway.uploads")
UPLOAD_PATH = "/v1/internal/uploads/{namespace}/{name}"
_SHA256 = re.compile("^[0-9a-f]{64}$")
_MAGIC: dict[Format, tuple[bytes, ...]] = {
    Format.PNG: (b"\x89PNG\r\n\x1a\n",),
    Format.JPEG: (b"\xff\xd8\xff",),
    Format.WEBP: (b"RIFF",),
    Format.PDF: (b"%PDF-",),
}
BACKEND = web.AppKey("backend", KubernetesBackend)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
DIRECT = web.AppKey("direct", bool)


def has_format(fmt: Format, data: bytes) -> bool:
    """A cheap look at the first bytes: is this plausibly a file of that format?"""
    if fmt is Format.HTML:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    if fmt is Format.WEBP and data[8:12] != b"WEBP":
        return False
    return data.startswith(_MAGIC[fmt])


def _refused(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message, "details": None}}, status=status
    )


async def upload(request: web.Request) -> web.StreamResponse:
    if request.app[DIRECT]:
        raise ApiError(
            409,
            "conflict",
            "with KUBESHOT_STORE=s3 capture pods upload to the bucket; this endpoint serves"
            " KUBESHOT_STORE=filesystem",
        )
    backend = request.app[BACKEND]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    try:
        token = parse_authorization(request.headers.get("Authorization", ""))
    except ValueError as exc:
        raise unauthorized(str(exc), error="invalid_request") from None
    job = await backend.job(namespace, name)
    expected = ((job or {}).get("status") or {}).get("uploadTokenSha256") or ""
    presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    # Same answer for a wrong token and an unknown job: the port tells nothing to a guesser.
    if job is None or not hmac.compare_digest(presented, str(expected)):
        log.warning("upload for %s/%s refused: not this job's token", namespace, name)
        raise ApiError(403, "forbidden", "this token may not upload for this job")
    if job_phase(job) is not Phase.RUNNING:
        raise ApiError(409, "conflict", "the job is not running")
    claimed = request.headers.get("X-Kubeshot-Sha256", "").lower()
    if not _SHA256.match(claimed):
        raise ApiError(400, "invalid_request", "X-Kubeshot-Sha256 must be a hex sha256")
    timeout = request.app[BODY_TIMEOUT]
    try:
        async with asyncio.timeout(timeout):
            data = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the upload did not arrive within {timeout:g} seconds"
        ) from None
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), claimed):
        raise ApiError(422, "sha256_mismatch", "the body does not match X-Kubeshot-Sha256")
    fmt = job_format(job)
    if fmt is None:
        raise ApiError(422, "invalid_artifact", "the job has no known format")
    problem = await asyncio.to_thread(decodes_as, fmt, data)
    if problem is not None:
        log.warning("upload for %s/%s refused: %s", namespace, name, problem)
        raise ApiError(422, "invalid_artifact", f"the body is not a {fmt.value} file")
    job_id = store_id(job)
    await backend.store.put(job_id, data, claimed)
    log.info("artifact of %s/%s stored (%d bytes)", namespace, name, len(data))
    return web.json_response({"url": artifact_path(job_id)}, status=201)


@web.middleware
async def _errors(request: web.Request, handler: object) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[operator, no-any-return]
    except ApiError as exc:
        response = web.json_response(exc.body(), status=exc.status)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status == 413:
            return _refused(413, "payload_too_large", "the artifact is too large")
        return _refused(exc.status, "not_found" if exc.status == 404 else "http_error", exc.reason)


def create_upload_app(gateway: web.Application, max_bytes: int) -> web.Application:
    """The upload listener's application, for the backend of `gateway` and its result store.

    Only the kubernetes backend has capture pods that upload: ValueError for any other.
    """
    backend = gateway[keys.BACKEND]
    if not isinstance(backend, KubernetesBackend):
        raise ValueError("the upload endpoint serves the kubernetes backend only")
    app = web.Application(middlewares=[_errors], client_max_size=max_bytes)
    app[BACKEND] = backend
    app[BODY_TIMEOUT] = gateway[keys.SETTINGS].body_timeout
    app[DIRECT] = gateway[keys.SETTINGS].store == "s3"
    app.router.add_put(UPLOAD_PATH, upload, name="upload")
    return app

"""The gateway application: `create_app(settings)` and its security pipeline.

Every request passes, in this order: HTTPS-only → authentication → rate limiting (middlewares),
then in the handler validation → admission (pixel budget, policy) → a place within the caller's
fair share of the captures in flight → backend → response validation; secure headers are added
to every response as it is prepared. Before that, the connection itself is held to a header
timeout (aiohttp's keep-alive timer, set here) and a per-address cap (serving.GatewaySite).

The handlers see a backend through two protocols (backend.py): `Backend` for the policy and
synchronous captures, `Jobs` for asynchronous ones. Which object is which is settled once, in
`create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from urllib.parse import quote, urlsplit

from aiohttp import web
from redis.asyncio import Redis

from kubeshot import logs, tracing
from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    Format,
    ProxyCredentials,
    ResultSummary,
    ScreenshotPolicy,
    ScreenshotPolicySpec,
)
from kubeshot.api.admission import admit, pixel_budget_fields
from kubeshot.api.delivery import CaptureRequestBody, Delivery
from kubeshot.api.reasons import redact_addresses
from kubeshot.gateway import keys, webhooks
from kubeshot.gateway.auth import (
    DEFAULT_IDENTITY,
    Authenticator,
    Identity,
    TokenEntry,
    check_distinct,
    hash_token,
    load_tokens_file,
    parse_authorization,
)
from kubeshot.gateway.backend import Backend, CaptureResult, Jobs, missing_members
from kubeshot.gateway.cluster import KubernetesBackend
from kubeshot.gateway.errors import (
    ApiError,
    forbidden,
    invalid,
    unauthorized,
)
from kubeshot.gateway.fairness import FairShare, Slot
from kubeshot.gateway.jobs import JobRegistry
from kubeshot.gateway.jobstore import JobStore, RedisJobs, SqliteJobs
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.models import CaptureJobView, Health
from kubeshot.gateway.openapi import openapi_document
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.ratelimit import Decision, RateLimiter
from kubeshot.gateway.redaction import LOG_CONTEXT, AccessLogger
from kubeshot.gateway.redaction import install as redact_logs
from kubeshot.gateway.security import SECURE_HEADERS, client_address, client_key, is_https
from kubeshot.gateway.serving import ConnectionGuard
from kubeshot.gateway.settings import Settings
from kubeshot.gateway.signing import SignatureError, UrlSigner
from kubeshot.gateway.store import ResultStore, expiring, result_store
from kubeshot.gateway.uploads import has_format
from kubeshot.gateway.validation import (
    POLICY_PARAM,
    options_from_json,
    options_from_query,
    policy_name,
)

log = logging.getLogger("kubeshot.gateway")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# /metrics is not among them: it is served on its own port (metrics.metrics_app), never here.
PUBLIC_ROUTES = frozenset({"healthz", "readyz", "openapi"})
SIGNED_ROUTES = frozenset({"screenshot_signed"})
CAPTURE_ROUTES = frozenset({"screenshot", "captures_create"})
# Places a token does not belong: it would end up in logs, browser history and Referer headers.
TOKEN_QUERY_PARAMS = ("token", "access_token", "auth", "api_key", "apikey", "key")
TOKEN_HEADERS = ("X-Api-Key", "X-Auth-Token", "Api-Key")


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    return route.name or "unmatched"


# --- middlewares, outermost first -------------------------------------------------------------


@web.middleware
async def telemetry_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request id (X-Request-Id), the request's span and the log context of everything it
    does. A caller's `traceparent` becomes a link, never the parent: the gateway starts the trace
    (a caller must not choose trace ids, nor what is sampled). No query string goes on the span:
    a signed URL's signature is a credential."""
    request_id = uuid.uuid4().hex
    request[LOG_CONTEXT] = {"request_id": request_id}
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    attributes = {"http.request.method": request.method, "kubeshot.request_id": request_id}
    if route is not None:
        attributes["http.route"] = route
    with (
        logs.bound(request_id=request_id),
        tracing.span(
            f"{request.method} {route}" if route else request.method,
            attributes,
            kind=tracing.SpanKind.SERVER,
            parent=tracing.new_trace(),
            links=tracing.links_to(request.headers.get("traceparent")),
        ) as span,
    ):
        try:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(tracing.StatusCode.ERROR)
            return response
        finally:
            # The access line is written after this scope: it reads the context from here.
            request[LOG_CONTEXT] = logs.context()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes `{"error": {code, message, details}}`; no stack trace leaves."""
    metrics = request.app[keys.METRICS]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error_response(exc)
    except CaptureError as exc:
        error = ApiError.from_capture_error(exc)
        error.message = redact_addresses(error.message, request.get(keys.TARGET, ""))
        response = _error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_response(_from_http_exception(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = _error_response(ApiError(500, "internal", "internal error"))
    if response.status == 400:
        metrics.validation_failures.inc()
    metrics.requests.labels(route=_route_name(request), status=str(response.status)).inc()
    return response


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    codes = {
        404: ("not_found", "no such resource"),
        405: ("method_not_allowed", "method not allowed on this resource"),
        413: ("payload_too_large", "the request body is too large"),
    }
    code, message = codes.get(exc.status, ("http_error", exc.reason))
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return ApiError(exc.status, code, message, headers=headers)


def _error_response(error: ApiError) -> web.Response:
    response = web.json_response(error.body(), status=error.status)
    response.headers.update(error.headers)
    if error.status == 408:
        response.force_close()  # the rest of a body that came too slowly is not waited for
    return response


@web.middleware
async def https_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTPS-only: plain HTTP gets 308 to the same URL over HTTPS (probes excepted)."""
    settings = request.app[keys.SETTINGS]
    if (
        settings.plain_http_allowed
        or _route_name(request) in {"healthz", "readyz"}
        or is_https(request, settings.trusted_proxies)
    ):
        return await handler(request)
    host = request.url.host
    if not host:
        raise invalid("the request has no Host")
    port = settings.port if settings.tls and settings.port != 443 else None
    authority = f"[{host}]" if ":" in host else host
    location = f"https://{authority}{f':{port}' if port else ''}{request.rel_url}"
    raise ApiError(308, "https_required", "use HTTPS", headers={"Location": location})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token, or a signed URL on GET /v1/screenshot, or nothing on public routes."""
    app = request.app
    settings = app[keys.SETTINGS]
    route = _route_name(request)
    request[keys.CLIENT] = client_address(request, settings.trusted_proxies)
    if route in PUBLIC_ROUTES:
        return await handler(request)
    authenticator = app[keys.AUTHENTICATOR]
    if authenticator.open_access:
        request[keys.IDENTITY] = Identity(
            name="anonymous",
            kind="anonymous",
            namespace=settings.namespace,
            rate_key=f"client:{client_key(request[keys.CLIENT])}",
        )
        return await handler(request)
    metrics = app[keys.METRICS]
    if route in SIGNED_ROUTES:
        try:
            app[keys.SIGNER].verify(list(request.query.items()))
        except SignatureError as exc:
            metrics.auth_failures.labels(reason="bad_signature").inc()
            raise forbidden(str(exc)) from None
        request[keys.IDENTITY] = Identity(
            name="signed",
            kind="signed",
            namespace=settings.namespace,
            rate_key=f"signed:{client_key(request[keys.CLIENT])}",
        )
        return await handler(request)
    header = request.headers.get("Authorization")
    if header is None:
        if any(p in request.query for p in TOKEN_QUERY_PARAMS) or any(
            h in request.headers for h in TOKEN_HEADERS
        ):
            metrics.auth_failures.labels(reason="token_misplaced").inc()
            raise unauthorized(
                "send the token in the Authorization header (Authorization: Bearer TOKEN), "
                "never in the URL or another header",
                error="invalid_request",
            )
        metrics.auth_failures.labels(reason="missing").inc()
        raise unauthorized(
            "authentication required: Authorization: Bearer TOKEN", "invalid_request"
        )
    try:
        token = parse_authorization(header)
    except ValueError as exc:
        metrics.auth_failures.labels(reason="malformed").inc()
        raise unauthorized(str(exc), error="invalid_request") from None
    identity = authenticator.authenticate(token)
    if identity is None:
        metrics.auth_failures.labels(reason="invalid").inc()
        raise unauthorized("the token is not valid")
    request[keys.IDENTITY] = identity
    return await handler(request)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per identity: captures by RATE_LIMIT_CAPTURE (or the token's own limit), signed URLs by
    RATE_LIMIT_SIGNED per client address (IPv6 per /64) and RATE_LIMIT_SIGNED_GLOBAL for all
    clients together, everything else by RATE_LIMIT_READ."""
    identity = request.get(keys.IDENTITY)
    if identity is None:
        return await handler(request)
    # Authenticated from here on: the identity's name (never a credential) on lines and span.
    logs.bind(identity=identity.name)
    tracing.set_attributes(identity=identity.name)
    settings = request.app[keys.SETTINGS]
    limiter = request.app[keys.RATE_LIMITER]
    route = _route_name(request)
    if route in SIGNED_ROUTES:
        category, limit = "signed", settings.rate_limit_signed
    elif route in CAPTURE_ROUTES:
        category, limit = "capture", identity.rate_limit or settings.rate_limit_capture
    else:
        category, limit = "read", settings.rate_limit_read
    decision = await limiter.hit(limit, category, identity.rate_key)
    if decision is not None and decision.allowed and route in SIGNED_ROUTES:
        # Counted only once the client's own limit let the request through: a client refused
        # by its own limit must not spend everyone's budget.
        overall = await limiter.hit(settings.rate_limit_signed_global, "signed_global", "all")
        if overall is not None and not overall.allowed:
            request.app[keys.METRICS].rate_limited.labels(category="signed_global").inc()
            raise _rate_limited(
                f"the gateway's signed-URL budget of {settings.rate_limit_signed_global} is spent",
                settings.rate_limit_signed_global,
                overall,
            )
    if decision is not None:
        request[keys.RATE_DECISION] = decision
        if not decision.allowed:
            request.app[keys.METRICS].rate_limited.labels(category=category).inc()
            raise _rate_limited(f"rate limit of {limit} exceeded", limit, decision)
    return await handler(request)


def _rate_limited(reason: str, limit: str, decision: Decision) -> ApiError:
    headers = decision.headers()
    return ApiError(
        429,
        "rate_limited",
        f"{reason}; retry in {headers['Retry-After']}s",
        {"limit": limit},
        headers=headers,
    )


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Secure headers on every response; HSTS over HTTPS; no caching of authenticated data."""
    settings = request.app[keys.SETTINGS]
    response.headers.update(SECURE_HEADERS)
    request_id = request.get(LOG_CONTEXT, {}).get("request_id") or uuid.uuid4().hex
    response.headers.setdefault("X-Request-Id", request_id)
    if request.path.startswith("/v1/") or keys.IDENTITY in request:
        response.headers["Cache-Control"] = "no-store"
    if settings.https_only and is_https(request, settings.trusted_proxies):
        response.headers["Strict-Transport-Security"] = (
            f"max-age={settings.hsts_max_age}; includeSubDomains"
        )
    decision = request.get(keys.RATE_DECISION)
    if decision is not None:
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)


# --- the capture path: admission, backend, response validation --------------------------------


async def _admitted_policy(
    request: web.Request, identity: Identity, options: CaptureOptions, name: str | None
) -> ScreenshotPolicy:
    """The policy the capture runs under, once the identity may use it and the options fit it.

    With the kubernetes backend it is the ScreenshotPolicy of the caller's namespace (the
    operator checks again); with the local backend one of the `--policy` files.
    """
    metrics = request.app[keys.METRICS]
    try:
        policy = await request.app[keys.BACKEND].policy(identity, name)
        if not identity.may_use(policy.name):
            raise ApiError(
                403,
                "blocked_by_policy",
                f"this token may not use the policy {policy.name!r}",
                {"reason": "PolicyViolation"},
            )
        logs.bind(policy=policy.name)
        tracing.set_attributes(policy=policy.name)
        _check_pixel_budget(options, policy.spec, request.app[keys.SETTINGS].max_pixels)
        admit(options, policy.spec)
    except CaptureError as exc:
        metrics.admission_rejections.labels(reason=exc.reason.value).inc()
        raise
    except ApiError as exc:
        if exc.status == 403:
            metrics.admission_rejections.labels(reason="PolicyNotAllowed").inc()
        raise
    return policy


def _check_pixel_budget(options: CaptureOptions, policy: ScreenshotPolicySpec, budget: int) -> None:
    """400 naming the fields, before any browser work, for an image too large to render: its
    bitmap alone would cost a worker (and its respawn) more than any small request should."""
    too_large = pixel_budget_fields(options, policy, budget)
    if too_large is not None:
        fields, message = too_large
        raise invalid(message, [{"field": field, "message": message} for field in fields])


def _capture_slot(
    request: web.Request, identity: Identity
) -> AbstractAsyncContextManager[Slot | None]:
    """A place among the captures in flight, within the identity's fair share (429 beyond)."""
    fairness = request.app.get(keys.FAIRNESS)
    return contextlib.nullcontext() if fairness is None else fairness.slot(identity)


def _verify_artifact(
    options: CaptureOptions, policy: ScreenshotPolicySpec, result: CaptureResult
) -> None:
    """Never answer with an artifact that is not what was asked for."""
    data, report = result.data, result.report
    problems = []
    if len(data) != report.bytes or hashlib.sha256(data).hexdigest() != report.sha256:
        problems.append("size or sha256 differs from the engine's report")
    if len(data) > policy.limits.max_result_bytes:
        problems.append("larger than the policy's maxResultBytes")
    if report.content_type.split(";")[0] != options.format.content_type.split(";")[0]:
        problems.append(f"content type {report.content_type} is not {options.format.value}")
    if options.format is not Format.HTML and not has_format(options.format, data):
        problems.append(f"not a {options.format.value} file")
    if problems:
        log.error("artifact refused: %s", "; ".join(problems))
        raise ApiError(
            502, "capture_failed", "the capture produced an artifact that failed verification"
        )


async def _run_capture(
    request: web.Request, options: CaptureOptions, name: str | None
) -> tuple[CaptureResult, ScreenshotPolicy]:
    app = request.app
    identity = request[keys.IDENTITY]
    request[keys.TARGET] = options.url or ""
    with tracing.span("admission"):
        policy = await _admitted_policy(request, identity, options, name)
    metrics = app[keys.METRICS]
    async with _capture_slot(request, identity):
        with tracing.span("capture", {"kubeshot.format": options.format.value}):
            try:
                result = await app[keys.BACKEND].capture(identity, policy, options)
            except CaptureError as exc:
                metrics.captures.labels(outcome=exc.reason.value).inc()
                tracing.set_attributes(outcome=exc.reason.value)
                raise
    with tracing.span("response", {"kubeshot.bytes": len(result.data)}):
        _verify_artifact(options, policy.spec, result)
    metrics.captures.labels(outcome="Succeeded").inc()
    return result, policy


def _artifact_response(options_format: Format, result: CaptureResult) -> web.Response:
    report = result.report
    response = web.Response(
        body=result.data, content_type=options_format.content_type.split(";")[0]
    )
    if options_format is Format.HTML:
        response.charset = "utf-8"
        response.headers["Content-Disposition"] = 'attachment; filename="capture.html"'
    response.headers["X-Kubeshot-Sha256"] = report.sha256
    if report.width is not None and report.height is not None:
        response.headers["X-Kubeshot-Size"] = f"{report.width}x{report.height}"
    response.headers.update(target_headers(report))
    return response


# Printable ASCII: what a header value may hold as is (leading and trailing spaces aside, which
# a page title never has).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F))


def target_headers(result: ResultSummary) -> dict[str, str]:
    """What the target answered, as headers beside its artifact: X-Kubeshot-Final-Url,
    X-Kubeshot-Http-Status and X-Kubeshot-Title, each only when known, and X-Kubeshot-Partial
    for a `bestAttempt` capture that timed out.

    The URL and the title are the (hostile) page's: every character outside printable ASCII is
    percent-encoded as UTF-8, so no CR, LF or other byte a header may not carry gets through.
    In the title `%` is encoded too, so `urllib.parse.unquote` (`decodeURIComponent`) gives it
    back exactly; the URL is sent as it is spelt (already percent-encoded), with only stray
    characters encoded."""
    headers: dict[str, str] = {}
    if result.final_url is not None:
        headers["X-Kubeshot-Final-Url"] = quote(result.final_url, safe=_HEADER_SAFE)
    if result.http_status is not None:
        headers["X-Kubeshot-Http-Status"] = str(result.http_status)
    if result.title is not None:
        headers["X-Kubeshot-Title"] = quote(result.title, safe=_HEADER_SAFE.replace("%", ""))
    if result.partial:
        headers["X-Kubeshot-Partial"] = "true"
    return headers


async def _json_body(request: web.Request) -> bytes:
    settings = request.app[keys.SETTINGS]
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"the request body is larger than {settings.max_body_bytes} bytes",
        )
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send capture options as application/json")
    try:
        async with asyncio.timeout(settings.body_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {settings.body_timeout:g} seconds",
        ) from None


def _policy_param(request: web.Request, *, only: bool = True) -> str | None:
    """The `policy` query parameter; with `only`, the request's one query parameter (options
    travel in the body: a parameter this endpoint does not know is refused, never ignored)."""
    unknown = sorted({name for name in request.query if name != POLICY_PARAM}) if only else []
    if unknown:
        raise invalid(
            f"unknown query parameter {unknown[0]!r}: options go in the JSON body",
            [{"field": name, "message": "unknown query parameter"} for name in unknown],
        )
    values = request.query.getall(POLICY_PARAM, [])
    if len(values) > 1:
        raise invalid("parameter 'policy' is given more than once", [{"field": "policy"}])
    return policy_name(values[0] if values else None)


# --- handlers ---------------------------------------------------------------------------------


async def screenshot(request: web.Request) -> web.StreamResponse:
    """POST /v1/screenshot: capture options as JSON, the artifact as the answer."""
    options = options_from_json(await _json_body(request), CaptureOptions)
    result, _ = await _run_capture(request, options, _policy_param(request))
    return _artifact_response(options.format, result)


async def screenshot_signed(request: web.Request) -> web.StreamResponse:
    """GET /v1/screenshot?...&expires=&keyId=&signature=: a signed URL, no token."""
    options = options_from_query(request.query.items())
    result, _ = await _run_capture(request, options, _policy_param(request, only=False))
    return _artifact_response(options.format, result)


async def captures_create(request: web.Request) -> web.StreamResponse:
    """POST /v1/captures: accept a capture to run in the background (202)."""
    body = options_from_json(await _json_body(request), CaptureRequestBody)
    options, delivery = body.capture_options(), body.delivery or Delivery()
    identity = request[keys.IDENTITY]
    with tracing.span("admission"):
        policy = await _admitted_policy(request, identity, options, _policy_param(request))
        if delivery.webhook:
            webhooks.admit(delivery.webhook, policy)
    async with _capture_slot(request, identity) as slot:
        view = await request.app[keys.JOBS].submit(
            identity, policy, options, delivery.webhook, delivery.s3
        )
        logs.bind(job=view.id)
        tracing.set_attributes(job=view.id)
        if slot is not None:
            slot.keep(view.id)
    response = web.json_response(view.to_wire(), status=202)
    response.headers["Location"] = f"/v1/captures/{view.id}"
    return response


async def _job_view(request: web.Request) -> CaptureJobView:
    jobs = request.app[keys.JOBS]
    view = await jobs.find(request[keys.IDENTITY], request.match_info["job_id"])
    if view is None:
        raise ApiError(404, "not_found", "no such capture")
    return view


async def captures_get(request: web.Request) -> web.StreamResponse:
    return web.json_response((await _job_view(request)).to_wire())


async def captures_artifact(request: web.Request) -> web.StreamResponse:
    job = await _job_view(request)
    if job.result is None:
        detail = job.failure.to_wire() if job.failure else None
        raise ApiError(409, "not_ready", f"the capture is {job.phase.value}", detail)
    store, content_type = request.app[keys.STORE], job.result.content_type
    headers = {"X-Kubeshot-Sha256": job.result.sha256, **target_headers(job.result)}
    html = content_type.startswith("text/html")
    disposition = 'attachment; filename="capture.html"' if html else None
    url = await store.download_url(job.id, content_type, disposition)
    if url is not None:  # KUBESHOT_STORE_DOWNLOAD=presigned: from the bucket itself
        return web.Response(status=307, headers={**headers, "Location": url})
    data = await store.get(job.id, job.result.sha256)
    if data is None:
        raise ApiError(404, "not_found", "the artifact has expired")
    if disposition:
        headers["Content-Disposition"] = disposition
    return web.Response(body=data, content_type=content_type.split(";")[0], headers=headers)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response(Health(status="ok").to_wire())


async def readyz(request: web.Request) -> web.StreamResponse:
    backend = request.app[keys.BACKEND]
    ready = backend.ready
    body = Health(status="ok" if ready else "not_ready", queue_depth=backend.queue_depth)
    return web.json_response(body.to_wire(), status=200 if ready else 503)


async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(openapi_document())


# --- the application --------------------------------------------------------------------------


def token_entries(settings: Settings) -> list[TokenEntry]:
    """The tokens of AUTH_TOKEN (in the gateway's namespace) and of the tokens file; ValueError
    when a name or a token is configured twice, across both (or a file token takes a name the
    gateway reserves, `default` of AUTH_TOKEN among them)."""
    entries: list[TokenEntry] = []
    sources: list[str] = []
    if settings.auth_token is not None:
        entries.append(
            TokenEntry(
                name=DEFAULT_IDENTITY,
                sha256=hash_token(settings.auth_token.get_secret_value()),
                namespace=settings.namespace,
            )
        )
        sources.append("AUTH_TOKEN")
    if settings.tokens_file is not None:
        from_file = load_tokens_file(settings.tokens_file)
        entries.extend(from_file)
        sources.extend([f"TOKENS_FILE {settings.tokens_file}"] * len(from_file))
    check_distinct(entries, sources)
    return entries


def build_authenticator(settings: Settings) -> Authenticator:
    """Tokens from AUTH_TOKEN and the tokens file; refuses to run open unless told to."""
    entries = token_entries(settings)
    if settings.no_auth:
        log.warning("authentication is OFF (--no-auth): anyone who can reach this port may capture")
        return Authenticator([], open_access=True)
    if not entries:
        raise ValueError("no token configured: set AUTH_TOKEN or TOKENS_FILE, or pass --no-auth")
    return Authenticator(entries)


def default_backend(settings: Settings, metrics: Metrics, store: ResultStore) -> Backend:
    """The backend `settings.backend` names; the kubernetes one reads artifacts from `store`."""
    if settings.backend == "kubernetes":
        # One watch per namespace a caller's jobs can be in, shared by all requests.
        namespaces = {settings.namespace} | {e.namespace for e in token_entries(settings)}
        return KubernetesBackend(
            sorted(namespaces),
            store=store,
            wait_grace=settings.kube_wait_grace,
            on_watch_connect=metrics.watch_connections.inc,
        )
    from kubeshot.gateway.pool import LocalBackend

    proxy = None
    if settings.proxy_server:
        proxy = ProxyCredentials(
            server=settings.proxy_server,
            username=settings.proxy_username,
            password=settings.proxy_password,
        )
    return LocalBackend(
        policies=PolicySet.from_files(
            settings.policy_files, ignore_https_errors=settings.ignore_https_errors
        ),
        proxy=proxy,
        workers=settings.workers,
        captures_per_worker=settings.captures_per_worker,
        queue_size=settings.queue_size,
        queue_timeout=settings.queue_timeout,
        start_timeout=settings.worker_start_timeout,
        poll_interval=settings.memory_poll_interval,
        shutdown_grace=settings.shutdown_grace,
        metrics=metrics,
        worker_user=settings.worker_user,
        spare_contexts=settings.spare_contexts,
    )


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    """The gateway. `backend` defaults to the one `settings.backend` names; one given here
    brings its own policies (`settings.policy_files` and the proxy settings are the default
    local backend's). A backend that is not also `Jobs` gets the gateway's JobRegistry for
    asynchronous captures. TypeError, at once, for an object that is not a Backend."""
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(
            f"{type(backend).__name__} is not a gateway Backend: it lacks "
            + ", ".join(missing_members(backend))
        )
    redact_logs(_secrets(settings))
    app = web.Application(
        middlewares=[
            telemetry_middleware,
            error_middleware,
            https_middleware,
            auth_middleware,
            rate_limit_middleware,
        ],
        client_max_size=settings.max_body_bytes,
        handler_args={
            # aiohttp arms its keep-alive timer when a connection opens and again after each
            # response, and closes the connection when no complete request head has arrived by
            # then: the header timeout (slowloris), whichever runner serves the app.
            "keepalive_timeout": settings.header_timeout,
            # After an early answer (408, 413) the rest of a body is read and dropped for this
            # long, so the client sees the answer; a slow body must not buy more time with it.
            "lingering_time": min(10.0, settings.body_timeout),
            "access_log_class": AccessLogger,
            "access_log": logging.getLogger("kubeshot.gateway.access"),
        },
    )
    metrics_ = Metrics()
    app[keys.SETTINGS] = settings
    app[keys.METRICS] = metrics_
    app[keys.CONNECTIONS] = ConnectionGuard(
        settings.max_connections_per_address, settings.trusted_proxies, metrics_
    )
    app[keys.AUTHENTICATOR] = build_authenticator(settings)
    secret = settings.url_signing_secret
    app[keys.SIGNER] = UrlSigner.from_secret(
        secret.get_secret_value() if secret else None, settings.signed_url_max_ttl
    )
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    redis = None if redis_url is None else Redis.from_url(redis_url)
    if redis is not None:  # first in, last out: closed after everything that uses it
        app.cleanup_ctx.append(lambda _: _shared_state(redis, app.get(keys.FAIRNESS)))
    app[keys.RATE_LIMITER] = RateLimiter(settings.rate_limit_enabled, redis_url)
    store = result_store(settings)
    backend = backend or default_backend(settings, metrics_, store)
    # The kubernetes backend checks what capture pods put into a bucket themselves (cluster.py).
    app[keys.STORE] = backend.store if isinstance(backend, KubernetesBackend) else store
    app[keys.BACKEND] = backend
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_backend_ctx)
    registry = None
    if isinstance(backend, Jobs):
        app[keys.JOBS] = backend
    else:
        jobs = _job_store(settings, redis)
        registry = JobRegistry(
            backend, store, jobs, settings.result_ttl_seconds, metrics_, settings.queue_timeout
        )
        app[keys.JOBS] = registry
        app.cleanup_ctx.append(lambda _: registry.running(settings.shutdown_grace))
    if settings.backend == "local":
        # The capacity it shares out is the local pool's; a kubernetes backend's captures wait
        # in the operator's queue, per policy.
        fairness = FairShare(
            settings.capture_capacity,
            settings.max_captures_per_identity,
            fair_share=settings.fair_share,
            keep_jobs=registry is not None,
            redis=redis,
            metrics=metrics_,
        )
        app[keys.FAIRNESS] = fairness
        if registry is not None:
            registry.on_finish.append(fairness.job_finished)

    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/v1/openapi.json", openapi, name="openapi")
    app.router.add_post("/v1/screenshot", screenshot, name="screenshot")
    app.router.add_get(
        "/v1/screenshot", screenshot_signed, name="screenshot_signed", allow_head=False
    )
    app.router.add_post("/v1/captures", captures_create, name="captures_create")
    app.router.add_get(
        r"/v1/captures/{job_id}", captures_get, name="captures_get", allow_head=False
    )
    app.router.add_get(
        r"/v1/captures/{job_id}/artifact",
        captures_artifact,
        name="captures_artifact",
        allow_head=False,
    )

    app.on_response_prepare.append(_on_response_prepare)
    app.on_shutdown.append(_begin_shutdown)
    return app


def _job_store(settings: Settings, redis: Redis | None) -> JobStore:
    """Redis when the replicas share it, else SQLite in the result directory (in memory with
    a temporary one, which does not outlive the gateway either)."""
    if redis is not None:
        return RedisJobs(redis, settings.result_ttl_seconds)
    directory = settings.result_dir
    return SqliteJobs(directory / "jobs" / "jobs.sqlite3" if directory else None)


async def _shared_state(redis: Redis, fairness: FairShare | None) -> AsyncIterator[None]:
    """The Redis client's lifetime, and the leases of this replica's captures in flight."""
    renewing = asyncio.create_task(fairness.renewing()) if fairness is not None else None
    try:
        yield
    finally:
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        await redis.aclose()


def _secrets(settings: Settings) -> list[str]:
    """The literal secrets of this gateway, masked in every log line."""
    found = [
        secret.get_secret_value()
        for secret in (settings.auth_token, settings.proxy_password, settings.redis_url)
        if secret is not None
    ]
    if settings.redis_url is not None:
        password = urlsplit(settings.redis_url.get_secret_value()).password
        found += [password] if password else []
    if settings.url_signing_secret is not None:
        for key in settings.url_signing_secret.get_secret_value().split(","):
            found.append(key.partition(":")[2] or key)
    return found


async def _begin_shutdown(app: web.Application) -> None:
    app[keys.BACKEND].begin_shutdown()


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    backend = app[keys.BACKEND]
    await backend.start()
    try:
        yield
    finally:
        await backend.close()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    """The result store, and the expiry of its artifacts, for the app's lifetime."""
    store = app[keys.STORE]
    await store.open()
    try:
        async with expiring(store.expire, store.ttl_seconds):
            yield
    finally:
        await store.close()

"""The capture engine: one Chromium, a fresh context per capture, every option honoured.

Isolation: every capture runs in a browser context of its own that is closed afterwards; a
spare context (opened ahead of time, with a page, used once) only saves the time of opening it.
All traffic goes through the egress guard, which decides what the page may reach. Each context
has a proxy login of its own, which ties its requests to its capture's guard session; the
browser's own background requests have none, and the guard refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    Request,
    Response,
    Route,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeout

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureReport,
    FailureReason,
    Format,
    PdfOptions,
    PhaseTiming,
    ProxyCredentials,
    ScreenshotPolicySpec,
    Timings,
)
from kubeshot.api.admission import admit, effective_timeout
from kubeshot.api.capture import MAX_URL_LENGTH, http_status_matches
from kubeshot.api.job import CapturePhase
from kubeshot_capture import actions, artifacts, emulation
from kubeshot_capture.actions import first_line as _first_line
from kubeshot_capture.actions import selector_error as _selector_error
from kubeshot_capture.blocklists import (
    AdBlocker,
    BlockingUnavailable,
    ad_blocker_async,
    autoconsent_script,
    dismiss_cookie_banners,
    hide_ad_elements,
)
from kubeshot_capture.browser import chromium_args, chromium_executable
from kubeshot_capture.guard import LOGIN_URL, EgressGuard, EgressSession, ProxyLogin

log = logging.getLogger(__name__)

DEFAULT_POLICY = ScreenshotPolicySpec()
_SPARE_VIEWPORT: Any = {"width": 1280, "height": 720}
# A waiting spare context (its renderer, about:blank) takes a few tens of MiB; a policy may
# have one spare per this much of its memory limit.
SPARE_MEMORY_SHARE = 512 * 2**20


@dataclass(frozen=True)
class Artifact:
    """A verified capture: the bytes and what the engine knows of them."""

    data: bytes
    report: CaptureReport


@dataclass
class _Spare:
    context: BrowserContext
    page: Page
    login: ProxyLogin
    """The context's proxy login: the next capture's session takes it."""


class CaptureEngine:
    """Captures pages in one Chromium. Use as an async context manager; one capture at a time.

    Args:
        spare_contexts: contexts kept open ahead of time (each used once, then closed, and
            replaced as soon as a capture takes it). 0 opens every context on demand. Each
            costs a renderer process's memory (tens of MiB) while it waits.
        guard: the egress guard; a new one by default. Passing one is for tests.
        playwright: Playwright's driver, started by the caller, who stops it; by default the
            engine starts its own. The capture pod starts it while Python imports the engine.
        replace_spares: open a spare's replacement when a capture takes it (a worker captures
            again); False for an engine that captures once (a warm capture pod): its one
            capture then shares the CPU with nothing.
    """

    def __init__(
        self,
        *,
        spare_contexts: int = 1,
        guard: EgressGuard | None = None,
        playwright: Playwright | None = None,
        replace_spares: bool = True,
    ) -> None:
        self._spare_target = spare_contexts
        self._replace_spares = replace_spares
        self._guard = guard if guard is not None else EgressGuard()
        self._playwright = playwright
        self._browser: Browser | None = None
        self._spares: asyncio.Queue[_Spare] = asyncio.Queue()
        self._refills: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        try:
            await self._stack.enter_async_context(self._guard)
            if self._playwright is None:
                self._playwright = await self._stack.enter_async_context(async_playwright())
            args = chromium_args() + self._guard.launch_args()
            self._browser = await self._playwright.chromium.launch(
                executable_path=chromium_executable(),
                args=args,
                # Playwright adds --no-sandbox unless the sandbox is asked for.
                chromium_sandbox="--no-sandbox" not in args,
                proxy=self._guard.browser_proxy,  # type: ignore[arg-type]
                headless=True,
            )
        except BaseException:
            await self._stack.aclose()
            raise
        for _ in range(self._spare_target):
            self._refill()
        return self

    async def spares_opened(self) -> None:
        """Wait until the spare contexts being opened are open (a warm pod asks for its job
        only then: its capture then takes a ready context and shares the CPU with nothing)."""
        await asyncio.gather(*self._refills, return_exceptions=True)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        for task in self._refills:
            task.cancel()
        await asyncio.gather(*self._refills, return_exceptions=True)
        while not self._spares.empty():
            spare = self._spares.get_nowait()
            with contextlib.suppress(PlaywrightError):
                await spare.context.close()
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):
                await self._browser.close()
            self._browser = None
        await self._stack.aclose()

    @property
    def browser(self) -> Browser:
        if self._browser is None:
            raise RuntimeError("CaptureEngine is not started: use `async with CaptureEngine()`")
        return self._browser

    async def capture(
        self,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec = DEFAULT_POLICY,
        proxy: ProxyCredentials | None = None,
    ) -> Artifact:
        """Capture under the policy. Raises CaptureError with the reason users see."""
        admit(options, policy)
        async with self._lock:
            seconds = effective_timeout(options, policy)
            session: EgressSession | None = None
            spare: _Spare | None = None
            try:
                async with asyncio.timeout(seconds):
                    started = time.perf_counter()
                    deadline = actions.Deadline.after(seconds)
                    spare = await self._take_spare(options, policy)
                    replace = spare is not None and self._replace_spares
                    if replace and self._pending() < self._spares_for(policy):
                        # Its replacement opens while this capture runs, not after it.
                        self._refill()
                    retried = False
                    while True:
                        # The session takes the login of the context the capture will run in.
                        session = self._guard.session(
                            policy.network,
                            max_download_bytes=policy.limits.max_download_bytes,
                            upstream=proxy,
                            login=spare.login if spare is not None else None,
                        )
                        try:
                            return await self._capture(
                                options, policy, session, spare, started, deadline
                            )
                        except PlaywrightError as exc:
                            if not _transient(exc):
                                raise
                            if retried:
                                raise CaptureError(
                                    FailureReason.NAVIGATION_FAILED,
                                    "the browser failed twice, on two contexts: "
                                    f"{_first_line(exc.message)}",
                                ) from exc
                            log.warning("retrying on a fresh context: %s", exc.message)
                        session.close()
                        session, spare, retried = None, None, True  # on a context of its own
            except TimeoutError as exc:
                if session is not None:
                    self._raise_if_guard_stopped(session)
                raise CaptureError(
                    FailureReason.TIMEOUT, f"capture did not finish within {seconds} s"
                ) from exc
            finally:
                if session is not None:
                    session.close()

    async def _capture(
        self,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        session: EgressSession,
        spare: _Spare | None,
        started: float,
        deadline: actions.Deadline,
    ) -> Artifact:
        context = spare.context if spare is not None else None
        partial = False
        try:
            if options.url is not None:
                await session.preflight(options.url)
            context, page = await self._open(options, policy, session, spare)
            await self._configure(context, page, options, session)
            setup_done = time.perf_counter()
            response: Response | None = None
            navigated: float | None = None
            answered = _MainDocument(page) if options.best_attempt and options.url else None
            try:
                async with actions.preparing(deadline, options.best_attempt):
                    response = await self._load(page, options, session)
                    navigated = time.perf_counter()
                    await self._prepare(page, options, policy, deadline)
            except (TimeoutError, CaptureError) as exc:
                if not options.best_attempt or not _timed_out(exc):
                    raise
                await self._salvage(page, options, session, deadline, exc)
                partial = True
                if response is None and answered is not None:
                    response = answered.last
                    _raise_if_target_failed(options, response)
            title = await page.title()
            loaded = time.perf_counter()
            data = await self._render(page, options, policy)
            rendered = time.perf_counter()
            self._raise_if_guard_stopped(session)
            if len(data) > policy.limits.max_result_bytes:
                raise CaptureError(
                    FailureReason.RESULT_TOO_LARGE,
                    f"artifact of {len(data)} bytes exceeds the limit of "
                    f"{policy.limits.max_result_bytes} bytes",
                )
            verified = artifacts.verify(data, options.format)
            done = time.perf_counter()
        finally:
            if context is not None:
                with contextlib.suppress(PlaywrightError):
                    await context.close()
        report = CaptureReport(
            format=options.format.value,
            content_type=verified.content_type,
            bytes=len(data),
            sha256=verified.sha256,
            width=verified.width,
            height=verified.height,
            pages=verified.pages,
            final_url=_reportable_url(response.url) if response is not None else None,
            http_status=response.status if response is not None else None,
            title=title,
            partial=partial or None,  # absent unless partial
            blocked_requests=session.blocked_requests,
            bytes_transferred=session.bytes_transferred,
            timings=Timings(
                total_ms=_ms(done - started),
                setup_ms=_ms(setup_done - started),
                navigation_ms=_ms(loaded - setup_done),
                render_ms=_ms(done - loaded),
                phases=_phases(started, setup_done, navigated or loaded, loaded, rendered, done),
            ),
        )
        return Artifact(data=data, report=report)

    # -- contexts ---------------------------------------------------------------------------

    def _pending(self) -> int:
        """Spare contexts ready or being opened (a refill whose spare a capture just took may
        not have been discarded from `_refills` yet: it is done, and no longer counts)."""
        return self._spares.qsize() + sum(not task.done() for task in self._refills)

    def _spares_for(self, policy: ScreenshotPolicySpec) -> int:
        """How many spares to keep under this policy: each counts against the memory limit of
        the capture that runs beside it, so one per SPARE_MEMORY_SHARE of it, at least one."""
        return min(self._spare_target, max(1, policy.limits.memory_bytes // SPARE_MEMORY_SHARE))

    def _refill(self) -> None:
        task = asyncio.get_running_loop().create_task(self._open_spare())
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _open_spare(self) -> None:
        # A login no session has yet: until a capture takes the spare, the guard refuses
        # whatever its context might send.
        login = ProxyLogin.generate()
        try:
            context = await self.browser.new_context(
                **_base_context_options(),
                proxy=self._guard.context_proxy(login),  # type: ignore[arg-type]
                viewport=_SPARE_VIEWPORT,
                color_scheme=emulation.SPARE_COLOR_SCHEME.value,
            )
            page = await context.new_page()
        except PlaywrightError as exc:  # browser closing: nothing to keep
            log.debug("spare context not opened: %s", exc)
            return
        await self._spares.put(_Spare(context, page, login))

    async def _take_spare(
        self, options: CaptureOptions, policy: ScreenshotPolicySpec
    ) -> _Spare | None:
        """A spare context for this capture, or None when it needs a context of its own.

        The caller opens its replacement at once (`_refill`): back to back, the next capture
        finds a spare ready instead of waiting for one to open after this capture. Opening a
        context meanwhile slows this capture's requests down a little (each goes through
        Playwright's driver, whose Fetch interception answers the guard's challenge), far less
        than the next capture would wait; see docs/performance.md.
        """
        fresh = policy.network.ignore_https_errors or self._spare_target == 0
        if fresh or emulation.needs_own_context(options):
            return None
        if self._spares.empty() and not self._refills:  # a spare failed to open: none coming
            return None
        return await self._spares.get()

    async def _open(
        self,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        session: EgressSession,
        spare: _Spare | None,
    ) -> tuple[BrowserContext, Page]:
        viewport = {"width": options.viewport.width, "height": options.viewport.height}
        if spare is None:
            context = await self.browser.new_context(
                **_base_context_options(),
                proxy=self._guard.context_proxy(session.login),  # type: ignore[arg-type]
                **emulation.context_options(options),
                ignore_https_errors=policy.network.ignore_https_errors,
            )
            page = await context.new_page()
        else:
            context, page = spare.context, spare.page
            # A spare was opened with the default viewport (and colour scheme: page_media).
            if viewport != _SPARE_VIEWPORT:
                await page.set_viewport_size(viewport)  # type: ignore[arg-type]
        if media := emulation.page_media(options):
            await page.emulate_media(**media)  # type: ignore[arg-type]
        return context, page

    async def _configure(
        self, context: BrowserContext, page: Page, options: CaptureOptions, session: EgressSession
    ) -> None:
        page.on("dialog", _dismiss_dialog)
        context.on("page", _close_popup)
        if options.headers and options.url is not None:  # the model refuses headers without url
            await _send_headers_to_origin(context, page, options.url, options.headers)
        if options.geolocation is not None:
            await context.grant_permissions(["geolocation"])
            geo = options.geolocation
            await context.set_geolocation(
                {"latitude": geo.latitude, "longitude": geo.longitude, "accuracy": geo.accuracy}
            )
        if options.cookies:
            await context.add_cookies([_cookie(c, options) for c in options.cookies])
        if options.block_ads:
            try:
                blocker = await ad_blocker_async()
            except BlockingUnavailable as exc:
                raise CaptureError(FailureReason.INVALID_SPEC, str(exc)) from exc
            await context.route("**/*", functools.partial(_block_ad, blocker, session))
        if options.hide_cookie_banners:  # before navigation: it hides banners as they appear
            await context.add_init_script(script=autoconsent_script())

    # -- loading ----------------------------------------------------------------------------

    async def _load(
        self, page: Page, options: CaptureOptions, session: EgressSession
    ) -> Response | None:
        """Navigate; the main document's final response (after redirects), None for html."""
        wait_until = options.wait_until.value
        # Redirect hops inside a TLS tunnel are invisible to the guard's URL bookkeeping; the
        # watch records every main-frame URL the navigation went through.
        navigation = session.watch_navigation(page)
        try:
            if options.url is not None:
                with navigation:
                    response = await page.goto(options.url, wait_until=wait_until)  # type: ignore[arg-type]
                self._raise_if_blocked(session, [options.url, *navigation.urls], response)
            else:
                assert options.html is not None
                await _log_in(page)
                await page.set_content(options.html, wait_until=wait_until)  # type: ignore[arg-type]
                response = None
        except PlaywrightTimeout as exc:
            self._raise_if_guard_stopped(session)
            raise CaptureError(
                FailureReason.TIMEOUT, f"navigation timed out: {exc.message}"
            ) from exc
        except PlaywrightError as exc:
            if options.url is not None:
                self._raise_if_blocked(session, [options.url, *navigation.urls], None)
            self._raise_if_guard_stopped(session)
            raise CaptureError(
                FailureReason.NAVIGATION_FAILED, f"navigation failed: {_first_line(exc.message)}"
            ) from exc
        self._raise_if_guard_stopped(session)
        _raise_if_target_failed(options, response)
        if options.wait_for_selector is not None:
            try:
                state = options.wait_for_selector_state.value
                await page.wait_for_selector(options.wait_for_selector, state=state)  # type: ignore[arg-type]
            except PlaywrightTimeout as exc:
                raise CaptureError(
                    FailureReason.TIMEOUT,
                    f"waitForSelector {options.wait_for_selector!r} was not {state} in time",
                ) from exc
            except PlaywrightError as exc:
                raise _selector_error("waitForSelector", exc) from exc
        return response

    def _raise_if_blocked(
        self, session: EgressSession, urls: list[str], response: Response | None
    ) -> None:
        hops = list(urls)
        if response is not None:
            request: Request | None = response.request
            while request is not None:
                hops.append(request.url)
                request = request.redirected_from
        for hop in hops:
            reason = session.blocked_reason(hop)
            if reason is not None:
                raise CaptureError(FailureReason.BLOCKED_BY_POLICY, reason)

    def _raise_if_guard_stopped(self, session: EgressSession) -> None:
        if session.download_exceeded:
            raise CaptureError(
                FailureReason.DOWNLOAD_LIMIT_EXCEEDED,
                "the page fetched more than the policy's maxDownloadBytes",
            )

    async def _prepare(
        self,
        page: Page,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        deadline: actions.Deadline,
    ) -> None:
        if options.hide_cookie_banners:
            await dismiss_cookie_banners(page, until=deadline.prepare_by)
        if options.block_ads:
            await hide_ad_elements(page, await ad_blocker_async())
        await self._style(page, options)
        if options.click_selectors:
            await actions.click(page, options.click_selectors, deadline)
        if options.custom_java_script is not None:
            try:
                await page.evaluate(options.custom_java_script)
            except PlaywrightError as exc:
                raise CaptureError(
                    FailureReason.INVALID_SPEC,
                    f"customJavaScript failed: {_first_line(exc.message)}",
                ) from exc
        if options.scroll_to_load:
            max_height = policy.limits.max_full_page_height
            await actions.scroll_to_load(page, max_height=max_height, deadline=deadline)
        if options.delay_ms:
            await asyncio.sleep(options.delay_ms / 1000)

    async def _style(self, page: Page, options: CaptureOptions) -> None:
        """The options that only add style: cheap, so a partial capture gets them too."""
        if options.custom_css is not None:
            await page.add_style_tag(content=options.custom_css)
        if options.hide_selectors:
            await actions.hide(page, options.hide_selectors)

    async def _salvage(
        self,
        page: Page,
        options: CaptureOptions,
        session: EgressSession,
        deadline: actions.Deadline,
        exc: TimeoutError | CaptureError,
    ) -> None:
        """bestAttempt after loading or preparing timed out: return when what the page
        rendered may be captured (with the styles applied; the rest of the preparation is
        skipped), else raise why not."""
        self._raise_if_guard_stopped(session)
        if options.url is not None:
            committed = page.url.startswith(("http://", "https://"))
            self._raise_if_blocked(
                session, [options.url, page.url] if committed else [options.url], None
            )
        if not await actions.has_rendered(page, options.url is not None):
            raise CaptureError(
                FailureReason.TIMEOUT,
                f"capture did not finish within {deadline.seconds:g} s, and the page had "
                "rendered nothing to capture (bestAttempt)",
            ) from exc
        await self._style(page, options)

    # -- rendering --------------------------------------------------------------------------

    async def _render(
        self, page: Page, options: CaptureOptions, policy: ScreenshotPolicySpec
    ) -> bytes:
        fmt = options.format
        if fmt is Format.PDF:
            pdf = options.pdf or PdfOptions()
            try:
                return await page.pdf(**emulation.pdf_options(pdf))
            except PlaywrightError as exc:
                why = emulation.pdf_failure(pdf, exc.message)
                if why is not None:
                    raise CaptureError(FailureReason.INVALID_SPEC, why) from exc
                raise
        if fmt is Format.HTML:
            if options.selector is not None:
                locator = await self._element(page, options.selector)
                html: str = await locator.evaluate("element => element.outerHTML")
            else:
                html = await page.content()
            return html.encode("utf-8")
        shot: dict[str, Any] = {
            "type": "jpeg" if fmt is Format.JPEG else "png",
            "omit_background": options.omit_background,
            "animations": "disabled",
            "caret": "hide",
        }
        if fmt is Format.JPEG:
            shot["quality"] = options.quality if options.quality is not None else 80
        if options.selector is not None:
            element = await self._element(page, options.selector)
            data = await element.screenshot(**shot)
        else:
            if options.clip is not None:  # the model keeps it inside the viewport
                shot["clip"] = options.clip.model_dump()
            if options.full_page:
                shot["full_page"] = True
                height = await page.evaluate(actions.PAGE_HEIGHT)
                cap = policy.limits.max_full_page_height
                if int(height) > cap:
                    shot["clip"] = {"x": 0, "y": 0, "width": options.viewport.width, "height": cap}
            data = await page.screenshot(**shot)
        if fmt is Format.WEBP:
            data = await asyncio.to_thread(artifacts.png_to_webp, data, options.quality)
        return data

    async def _element(self, page: Page, selector: str) -> Locator:
        locator = page.locator(selector).first
        try:
            count = await page.locator(selector).count()
        except PlaywrightError as exc:
            raise _selector_error("selector", exc) from exc
        if count == 0:
            raise CaptureError(
                FailureReason.NAVIGATION_FAILED, f"selector {selector!r} matched no element"
            )
        return locator


class _MainDocument:
    """The main frame's latest document response, seen as it arrives. A bestAttempt capture
    that times out before `goto` returns still reports (and `failOnHttpStatus` judges) what the
    target answered: this response."""

    def __init__(self, page: Page) -> None:
        self.last: Response | None = None
        self._frame = page.main_frame
        page.on("response", self._seen)

    def _seen(self, response: Response) -> None:
        request = response.request
        if request.is_navigation_request() and request.frame == self._frame:
            self.last = response


# Chromium's answers that a fresh context usually does not give again (a soak saw the first
# about once in 400 captures): the engine retries these once, inside the capture's deadline.
TRANSIENT_BROWSER_ERRORS = ("Unable to capture screenshot",)


def _transient(exc: PlaywrightError) -> bool:
    return any(text in exc.message for text in TRANSIENT_BROWSER_ERRORS)


def _timed_out(exc: TimeoutError | CaptureError) -> bool:
    return isinstance(exc, TimeoutError) or exc.reason is FailureReason.TIMEOUT


def _raise_if_target_failed(options: CaptureOptions, response: Response | None) -> None:
    """`failOnHttpStatus`: the target's final answer (after redirects) is one the caller
    refuses to capture. The URL in the message is redacted where messages leave us."""
    if response is not None and http_status_matches(options.fail_on_http_status, response.status):
        raise CaptureError(
            FailureReason.TARGET_HTTP_ERROR,
            f"the target answered HTTP {response.status} at {response.url[:500]}"
            " (failOnHttpStatus)",
        )


def _reportable_url(url: str) -> str | None:
    """The final URL as results carry it; longer than the API's URL limit it is not reported
    (a URL cut short would name another page)."""
    return url if len(url) <= MAX_URL_LENGTH else None


def _base_context_options() -> dict[str, Any]:
    # Service workers could answer requests from a cache the guard never sees; downloads would
    # write files. Neither has a place in a capture.
    return {"service_workers": "block", "accept_downloads": False, "java_script_enabled": True}


def _cookie(cookie: Any, options: CaptureOptions) -> Any:
    entry: dict[str, Any] = {
        "name": cookie.name,
        "value": cookie.value,
        "secure": cookie.secure,
        "httpOnly": cookie.http_only,
    }
    if cookie.same_site is not None:
        entry["sameSite"] = cookie.same_site
    if cookie.domain is not None:
        entry["domain"] = cookie.domain
        entry["path"] = cookie.path
    elif options.url is not None:
        entry["url"] = options.url
    else:
        raise CaptureError(
            FailureReason.INVALID_SPEC, f"cookie {cookie.name!r} needs a domain with html input"
        )
    return entry


async def _log_in(page: Page) -> None:
    # Subresources (of html input) that meet the guard's 407 before the context ever presented
    # its login fail: a navigation to the guard's LOGIN_URL presents it (204: no page change).
    with contextlib.suppress(PlaywrightError):
        await page.goto(LOGIN_URL, wait_until="commit")


async def _send_headers_to_origin(
    context: BrowserContext, page: Page, url: str, headers: dict[str, str]
) -> None:
    """Add the caller's `headers` to the page's requests to the origin of `url`, and no other.

    Not `set_extra_http_headers` (every request, third parties included), nor a Playwright route:
    Playwright applies a route's header overrides to every redirect hop after it, whatever the
    hop's origin, and never routes the hops. DevTools' Fetch domain pauses exactly the requests
    to the origin (each redirect hop anew, so a hop elsewhere goes without them) and only those,
    so other requests cost nothing. Requests of out-of-process frames and of workers are not
    seen and go without the headers.
    """
    # The origin as Chromium spells it (IDNA, IPv4 forms, default port), so that the pattern
    # and the paused requests' URLs are serialised alike.
    origin: str = await page.evaluate("url => new URL(url).origin", url)
    prefix = origin + "/"
    names = {name.lower() for name in headers}
    session = await context.new_cdp_session(page)

    async def continue_request(event: dict[str, Any]) -> None:
        params: dict[str, Any] = {"requestId": event["requestId"]}
        request = event["request"]
        if request["url"].startswith(prefix):
            params["headers"] = [
                *(
                    {"name": name, "value": value}
                    for name, value in request["headers"].items()
                    if name.lower() not in names
                ),
                *({"name": name, "value": value} for name, value in headers.items()),
            ]
        try:
            await session.send("Fetch.continueRequest", params)
        except PlaywrightError as exc:  # the page is closing; the request goes nowhere
            log.debug("request not continued: %s", exc)

    session.on("Fetch.requestPaused", continue_request)
    pattern = "".join("\\" + char if char in "*?\\" else char for char in prefix) + "*"
    await session.send("Fetch.enable", {"patterns": [{"urlPattern": pattern}]})


async def _block_ad(blocker: AdBlocker, session: EgressSession, route: Route) -> None:
    """Abort what the filter lists call an ad or a tracker, judged against the document that
    asks for it (a subframe's own document against its parent), so first-party rules hold."""
    request = route.request
    try:
        frame = request.frame
        source = frame.url
        if request.is_navigation_request():
            if frame.parent_frame is None:
                await route.fallback()  # the page the caller asked for is never an ad
                return
            source = frame.parent_frame.url
    except PlaywrightError:  # a service worker's request: no frame, judged as first-party
        source = request.url
    if blocker.blocks(request.url, source, request.resource_type):
        session.blocked_requests += 1
        await route.abort("blockedbyclient")
    else:
        await route.fallback()


async def _dismiss_dialog(dialog: Any) -> None:
    with contextlib.suppress(PlaywrightError):
        await dialog.dismiss()


async def _close_popup(page: Page) -> None:
    # Only the capture's own page may live; window.open() and target=_blank are closed at once.
    if await page.opener() is not None:
        with contextlib.suppress(PlaywrightError):
            await page.close()


def _phases(*marks: float) -> list[PhaseTiming]:
    """setup, navigate (with waitForSelector), wait (delays, scrolling, styles, scripts), render
    and verify between `time.perf_counter()` marks, on the wall clock: the trace puts them beside
    spans that other processes recorded."""
    offset = time.time_ns() - int(time.perf_counter() * 1e9)
    return [
        PhaseTiming(
            name=name,
            start_unix_nano=offset + int(start * 1e9),
            end_unix_nano=offset + int(end * 1e9),
        )
        for name, start, end in zip(CapturePhase, marks, marks[1:], strict=False)
    ]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)

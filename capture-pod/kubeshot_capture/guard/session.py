"""One capture's view of the guard: its rules, its budget, what it refused and why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from kubeshot.api import CaptureError, FailureReason, NetworkRules, ProxyCredentials
from kubeshot_capture.guard.addresses import IPAddress
from kubeshot_capture.guard.logins import ProxyLogin
from kubeshot_capture.guard.rules import CompiledRules, Resolver
from kubeshot_capture.guard.targets import InvalidTarget, Target, parse_url

if TYPE_CHECKING:
    from playwright.async_api import Page, Request

log = logging.getLogger("kubeshot_capture.guard")


class RequestLike(Protocol):
    """The part of a Playwright `Request` the guard reads (its URL and redirect chain)."""

    @property
    def url(self) -> str: ...

    @property
    def redirected_from(self) -> RequestLike | None: ...


class NavigationWatch:
    """The URLs of one main-frame navigation and its redirect hops, seen while the watch is open.

    Chromium follows redirects inside TLS tunnels where the guard cannot see them; when a hop is
    refused, `page.goto` fails naming the first URL only. The watch sees every hop's request. It
    follows only the first navigation and the redirects from it: a later navigation the page
    starts itself (meta refresh, script) is a subresource of the capture, not its target.
    """

    def __init__(self, session: EgressSession, page: Page) -> None:
        self.session = session
        self.urls: list[str] = []
        self._requests: list[Request] = []
        self._page = page

    def _on_request(self, request: Request) -> None:
        if not request.is_navigation_request() or request.frame != self._page.main_frame:
            return
        origin = request.redirected_from
        if not self._requests or any(origin is seen for seen in self._requests):
            self._requests.append(request)
            self.urls.append(request.url)

    def __enter__(self) -> NavigationWatch:
        self._page.on("request", self._on_request)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._page.remove_listener("request", self._on_request)

    def blocked_reason(self) -> str | None:
        """Why the guard refused one of the navigation's hops, or None."""
        return self.session.first_blocked_reason(self.urls)


class Refused(Exception):
    """The guard refuses a destination; the message is the one-line reason."""


class EgressSession:
    """The rules, download budget and refusal record of one capture.

    Created by `EgressGuard.session()`; while open, every request that carries its `login` (the
    proxy login of the capture's browser context) is judged by these rules and counted against
    its budget. Closing it forgets the login and cuts every connection it admitted; a request
    that still carries the login is refused from then on.
    """

    def __init__(
        self,
        rules: NetworkRules,
        *,
        max_download_bytes: int,
        upstream: ProxyCredentials | None,
        resolver: Resolver,
        login: ProxyLogin | None = None,
        on_close: Callable[[EgressSession], None] | None = None,
    ) -> None:
        self.rules = CompiledRules(rules)
        self.login = login if login is not None else ProxyLogin.generate()
        self.max_download_bytes = max_download_bytes
        self.upstream = upstream
        self.blocked_requests = 0
        self.bytes_transferred = 0
        self.closed = False
        self._resolver = resolver
        self._exceeded = False
        self._refusals: dict[tuple[str, int], str] = {}
        self._redirects: dict[str, str] = {}
        self._resolved: dict[str, list[IPAddress]] = {}
        self._transports: set[asyncio.BaseTransport] = set()
        self._on_close = on_close

    # -- what the engine reads ------------------------------------------------------------

    @property
    def download_exceeded(self) -> bool:
        """True once the page fetched more than `max_download_bytes` (its traffic is cut)."""
        return self._exceeded

    async def preflight(self, url: str) -> None:
        """Refuse a navigation target before the browser sees it.

        Raises CaptureError(BLOCKED_BY_POLICY) for a refused scheme, host, port, domain or
        address (names are resolved and every address classified), and
        CaptureError(NAVIGATION_FAILED) when the name does not resolve.
        """
        reason = self.rules.url_refusal(url)
        if reason is None:
            target = parse_url(url)
            try:
                _addresses, reason = await self._resolve(target)
            except OSError as exc:
                raise CaptureError(
                    FailureReason.NAVIGATION_FAILED, f"cannot resolve {target.host}: {exc}"
                ) from None
        if reason is not None:
            self._refuse_key(url, reason)
            raise CaptureError(FailureReason.BLOCKED_BY_POLICY, reason)

    def blocked_reason(self, url: str) -> str | None:
        """Why the guard refused this URL's destination (or a redirect hop it saw from it).

        Call it after a failed main-frame navigation and for each URL of the navigation's
        redirect chain: refusals of plain-HTTP requests reach the page as a 403 response, of
        HTTPS as a failed tunnel; either way the refusal is recorded here.
        """
        seen: set[str] = set()
        while url not in seen:
            seen.add(url)
            reason = self.rules.url_refusal(url)
            if reason is not None:
                return reason
            try:
                target = parse_url(url)
            except InvalidTarget as exc:  # pragma: no cover - url_refusal already parsed it
                return str(exc)
            reason = self._refusals.get((target.host, target.port))
            if reason is not None:
                return reason
            next_hop = self._redirects.get(url)
            if next_hop is None:
                return None
            url = next_hop
        return None

    def chain_blocked_reason(self, request: RequestLike | None) -> str | None:
        """`blocked_reason` of a Playwright request and every request it was redirected from."""
        while request is not None:
            reason = self.blocked_reason(request.url)
            if reason is not None:
                return reason
            request = request.redirected_from
        return None

    def first_blocked_reason(self, urls: Iterable[str]) -> str | None:
        """The first `blocked_reason` among these URLs (e.g. every main-frame navigation URL)."""
        return next((r for r in map(self.blocked_reason, urls) if r is not None), None)

    def __enter__(self) -> EgressSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def watch_navigation(self, page: Page) -> NavigationWatch:
        """`with session.watch_navigation(page) as watch: await page.goto(url)`; then
        `watch.blocked_reason()` says whether any hop of that navigation was refused."""
        return NavigationWatch(self, page)

    def close(self) -> None:
        """End the capture: cut every connection it opened; its login is refused from now on."""
        if self.closed:
            return
        self.closed = True
        self._cut()
        if self._on_close is not None:
            self._on_close(self)

    # -- what the proxy calls -------------------------------------------------------------

    async def admit(self, target: Target) -> list[IPAddress]:
        """The addresses the proxy may connect to for `target`; raises Refused with the reason."""
        if self.closed:
            raise Refused("no capture is in progress")
        if self._exceeded:
            raise Refused("download budget exceeded")
        reason = self.rules.target_refusal(target)
        if reason is None:
            addresses, reason = await self._resolve(target)
            if reason is None:
                return addresses
        self.record_refusal(target, reason)
        raise Refused(reason)

    def check_open(self) -> None:
        """For a connection this session already admitted: raises Refused once it is over."""
        if self.closed:
            raise Refused("no capture is in progress")
        if self._exceeded:
            raise Refused("download budget exceeded")

    async def _resolve(self, target: Target) -> tuple[list[IPAddress], str | None]:
        # One DNS answer per name for the whole capture: every connection of the page goes to
        # addresses of the first answer (DNS cannot rebind mid-capture), and DNS is asked once.
        # The verdict is not kept: it depends on the port, which each request names anew.
        addresses = self._resolved.get(target.host)
        if addresses is None:
            addresses = await self.rules.lookup(target, self._resolver)
            if len(self._resolved) < 10000:
                self._resolved[target.host] = addresses
        return self.rules.judge(target, addresses)

    def record_refusal(self, target: Target, reason: str) -> None:
        self.blocked_requests += 1
        self._refusals[(target.host, target.port)] = reason
        log.warning("egress guard refused %s: %s", target.authority, reason)

    def record_redirect(self, url: str, location: str) -> None:
        if len(self._redirects) < 10000:
            self._redirects[url] = location

    def count(self, received: int) -> bool:
        """Count bytes received from the network before they are passed on to the browser.

        False once they would take the page over its budget: then they are not passed on, and
        all of the page's traffic is cut. `bytes_transferred` counts only bytes passed on.
        """
        if self._exceeded:
            return False
        if self.bytes_transferred + received <= self.max_download_bytes:
            self.bytes_transferred += received
            return True
        self._exceeded = True
        log.warning(
            "egress guard: download budget of %d bytes exceeded; cutting the page's traffic",
            self.max_download_bytes,
        )
        self._cut()
        return False

    def track(self, transport: asyncio.BaseTransport) -> None:
        if self.closed:
            _abort(transport)
            return
        self._transports.add(transport)

    def untrack(self, transport: asyncio.BaseTransport) -> None:
        self._transports.discard(transport)

    def _refuse_key(self, url: str, reason: str) -> None:
        self.blocked_requests += 1
        try:
            target = parse_url(url)
        except InvalidTarget:
            log.warning("egress guard refused a URL: %s", reason)
            return
        self._refusals[(target.host, target.port)] = reason
        log.warning("egress guard refused %s: %s", target.authority, reason)

    def _cut(self) -> None:
        for transport in list(self._transports):
            _abort(transport)
        self._transports.clear()


def _abort(transport: asyncio.BaseTransport) -> None:
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()

"""The egress guard: every browser request goes through an in-process forward proxy that
resolves, classifies and pins each destination, enforces the capture's NetworkRules and counts
its download budget. A request belongs to the capture whose proxy login it carries; the
browser's own requests carry none and are refused.

    async with EgressGuard() as guard:
        browser = await chromium.launch(
            proxy=guard.browser_proxy, args=[*flags, *guard.launch_args()]
        )
        with guard.session(rules, max_download_bytes=limit, upstream=credentials) as session:
            context = await browser.new_context(proxy=guard.context_proxy(session.login))
            page = await context.new_page()
            await session.preflight(url)  # CaptureError(BLOCKED_BY_POLICY) when refused
            with session.watch_navigation(page) as navigation:
                response = await page.goto(url)  # a refusal is a 403 response or an error
            reason = session.first_blocked_reason([url, *navigation.urls])  # -> exit 3
            session.download_exceeded  # -> exit 5
"""

from kubeshot_capture.guard.addresses import (
    IPAddress,
    IPNetwork,
    classify_address,
    embedded_ipv4,
    refusal_reason,
)
from kubeshot_capture.guard.logins import LOGIN_URL, Logins, ProxyLogin, parse_basic
from kubeshot_capture.guard.proxy import Connector, EgressGuard, open_connection
from kubeshot_capture.guard.rules import CompiledRules, Resolver, system_resolver
from kubeshot_capture.guard.session import EgressSession, NavigationWatch, RequestLike
from kubeshot_capture.guard.targets import (
    InvalidTarget,
    Target,
    normalise_host,
    parse_authority,
    parse_ipv4,
    parse_url,
)

__all__ = [
    "LOGIN_URL",
    "CompiledRules",
    "Connector",
    "EgressGuard",
    "EgressSession",
    "IPAddress",
    "IPNetwork",
    "InvalidTarget",
    "Logins",
    "NavigationWatch",
    "ProxyLogin",
    "RequestLike",
    "Resolver",
    "Target",
    "classify_address",
    "embedded_ipv4",
    "normalise_host",
    "open_connection",
    "parse_authority",
    "parse_basic",
    "parse_ipv4",
    "parse_url",
    "refusal_reason",
    "system_resolver",
]

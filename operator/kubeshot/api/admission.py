"""Admission: may these capture options run under this policy? Pure, used by every entry point.

The gateway answers 403 before any browser work, the operator fails the CaptureJob with
PolicyViolation, and the engine re-checks before it captures (defence in depth).
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from kubeshot.api.capture import CaptureOptions, normalise_domain
from kubeshot.api.policy import ScreenshotPolicySpec
from kubeshot.api.reasons import CaptureError, FailureReason


def domain_matches(host: str, suffixes: list[str]) -> bool:
    """Whether host is one of the domains or a subdomain of one (both IDNA-normalised)."""
    return any(host == s or host.endswith("." + s) for s in suffixes)


def violations(options: CaptureOptions, policy: ScreenshotPolicySpec) -> list[str]:
    """Every way the options break the policy, in words a caller understands.

    Ports and addresses are the egress guard's to judge: they depend on where a name resolves
    (addresses in `allowedCIDRs` are reachable on any port).
    """
    found: list[str] = []
    features, limits, network = policy.features, policy.limits, policy.network
    if options.format not in features.allowed_formats:
        allowed = ", ".join(f.value for f in features.allowed_formats)
        found.append(f"format {options.format.value} is not allowed (allowed: {allowed})")
    if options.custom_java_script is not None and not features.allow_custom_java_script:
        found.append("customJavaScript is not allowed by the policy")
    if options.html is not None and not features.allow_html_input:
        found.append("html input is not allowed by the policy")
    if options.viewport.width > limits.max_viewport.width:
        found.append(f"viewport width {options.viewport.width} > {limits.max_viewport.width}")
    if options.viewport.height > limits.max_viewport.height:
        found.append(f"viewport height {options.viewport.height} > {limits.max_viewport.height}")
    if options.timeout_seconds is not None and options.timeout_seconds > limits.timeout_seconds:
        found.append(f"timeoutSeconds {options.timeout_seconds} > {limits.timeout_seconds}")
    if options.url is not None:
        parts = urlsplit(options.url)
        host = parts.hostname or ""
        with contextlib.suppress(ValueError):  # an address literal: the guard classifies it
            host = normalise_domain(host)
        if network.blocked_domains and domain_matches(host, network.blocked_domains):
            found.append(f"domain {host} is blocked by the policy")
        elif network.allowed_domains and not domain_matches(host, network.allowed_domains):
            found.append(f"domain {host} is not in the policy's allowed domains")
    return found


def admit(options: CaptureOptions, policy: ScreenshotPolicySpec) -> None:
    """Raise CaptureError(PolicyViolation) naming every violation; return when admitted."""
    found = violations(options, policy)
    if found:
        raise CaptureError(FailureReason.POLICY_VIOLATION, "; ".join(found))


def effective_timeout(options: CaptureOptions, policy: ScreenshotPolicySpec) -> int:
    """Seconds this capture may take: the caller's limit capped by the policy's."""
    limit = policy.limits.timeout_seconds
    return min(options.timeout_seconds, limit) if options.timeout_seconds else limit

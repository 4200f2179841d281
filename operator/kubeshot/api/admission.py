"""Admission: may these capture options run under this policy? Pure, used by every entry point.

The gateway answers 403 before any browser work, the operator fails the CaptureJob with
PolicyViolation, and the engine re-checks before it captures (defence in depth).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from urllib.parse import urlsplit

from kubeshot.api.capture import (
    MAX_CAPTURE_PIXELS,
    OVER_PIXEL_BUDGET,
    CaptureOptions,
    normalise_domain,
)
from kubeshot.api.policy import ScreenshotPolicySpec
from kubeshot.api.reasons import CaptureError, FailureReason


def matching_domain(host: str, domains: Sequence[str]) -> str | None:
    """The first of the domains that host is or is a subdomain of (both IDNA-normalised)."""
    for domain in domains:
        if host == domain or host.endswith("." + domain):
            return domain
    return None


def domain_matches(host: str, domains: Sequence[str]) -> bool:
    """Whether host is one of the domains or a subdomain of one (both IDNA-normalised)."""
    return matching_domain(host, domains) is not None


def rendered_size(options: CaptureOptions, policy: ScreenshotPolicySpec) -> tuple[int, int]:
    """The largest image, in device pixels, the options can make under the policy: the viewport
    times deviceScaleFactor, and for fullPage the policy's maxFullPageHeight (the engine cuts
    longer pages there; a page's height is not known before it loads)."""
    height = options.viewport.height
    if options.full_page:
        height = max(height, policy.limits.max_full_page_height)
    scale = options.device_scale_factor
    return round(options.viewport.width * scale), round(height * scale)


def pixel_budget_fields(
    options: CaptureOptions, policy: ScreenshotPolicySpec, budget: int = MAX_CAPTURE_PIXELS
) -> tuple[list[str], str] | None:
    """The fields that make an image capture larger than `budget` device pixels, with the
    reason in words; None within the budget (and for pdf and html, which are not rasterised)."""
    if not options.format.is_image:
        return None
    width, height = rendered_size(options, policy)
    if width * height <= budget:
        return None
    fields = ["viewport"]
    if options.device_scale_factor != 1.0:
        fields.append("deviceScaleFactor")
    if options.full_page:
        fields.append("fullPage")
    if options.device is not None:  # the device set the viewport and scale the caller left out
        fields.append("device")
    what = f"viewport {options.viewport.width}x{options.viewport.height}{_of_device(options)}"
    if options.full_page:
        what += f" with fullPage (up to maxFullPageHeight {policy.limits.max_full_page_height})"
    if options.device_scale_factor != 1.0:
        what += f" at deviceScaleFactor {options.device_scale_factor:g}"
    return fields, (
        f"{what} renders up to {width}x{height} = {width * height} {OVER_PIXEL_BUDGET} {budget}; "
        f"lower {' or '.join(fields)}"
    )


def _of_device(options: CaptureOptions) -> str:
    return "" if options.device is None else f" (device {options.device!r})"


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
    device = _of_device(options)
    if options.viewport.width > limits.max_viewport.width:
        found.append(
            f"viewport width {options.viewport.width}{device} > {limits.max_viewport.width}"
        )
    if options.viewport.height > limits.max_viewport.height:
        found.append(
            f"viewport height {options.viewport.height}{device} > {limits.max_viewport.height}"
        )
    if options.timeout_seconds is not None and options.timeout_seconds > limits.timeout_seconds:
        found.append(f"timeoutSeconds {options.timeout_seconds} > {limits.timeout_seconds}")
    too_large = pixel_budget_fields(options, policy)
    if too_large is not None:
        found.append(too_large[1])
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

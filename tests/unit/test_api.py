"""The shared models: what they accept, what they refuse, and the words they refuse it with."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubeshot.api import (
    CaptureError,
    CaptureJobSpec,
    CaptureOptions,
    ExitCode,
    FailureReason,
    ScreenshotPolicy,
    ScreenshotPolicySpec,
    is_object_name,
)
from kubeshot.api.admission import admit, effective_timeout, violations
from kubeshot.api.crds import capturejob_crd, screenshotpolicy_crd
from kubeshot.api.names import DNS1123_SUBDOMAIN

URL = "https://example.com/"


def refused(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        CaptureOptions.model_validate(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://Example.COM", "https://example.com/"),
        ("http://bücher.example/x?y=1", "http://xn--bcher-kva.example/x?y=1"),
        ("http://example.com.:8080/a#frag", "http://example.com:8080/a"),
        ("http://[::1]:81/", "http://[::1]:81/"),
        ("http://0x7f.1/", "http://0x7f.1/"),
    ],
)
def test_urls_are_normalised(url: str, expected: str) -> None:
    assert CaptureOptions(url=url).url == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme must be http or https"),
        ("FILE:///etc/passwd", "scheme must be http or https"),
        ("javascript:alert(1)", "scheme must be http or https"),
        ("gopher://x/", "scheme must be http or https"),
        ("//example.com/", "scheme must be http or https"),
        ("http://user:pw@example.com/", "must not carry credentials"),
        ("http://example.com@127.0.0.1/", "must not carry credentials"),
        ("http:\\\\localhost/", "backslashes"),
        ("http://exa mple.com/", "not a valid domain"),
        ("http://", "no host"),
        ("http://example.com:99999/", "port is invalid"),
        ("http://-bad-.com/", "not a valid domain"),
        ("https://example.com/" + "a" * 2100, "at most 2048 characters"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    assert message in refused({"url": url})


CLIP = {"x": 0, "y": 0, "width": 10, "height": 10}
CLIP_800x600_CORNER = {"x": 700, "y": 550, "width": 100, "height": 51}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "exactly one of url and html"),
        ({"url": URL, "html": "<p>"}, "exactly one of url and html"),
        ({"url": URL, "quality": 50}, "quality applies to jpeg and webp only"),
        ({"url": URL, "format": "jpeg", "quality": 0}, "greater than or equal to 1"),
        ({"url": URL, "pdf": {"landscape": True}}, "pdf options apply to format pdf only"),
        ({"url": URL, "format": "pdf", "fullPage": True}, "fullPage applies to image formats"),
        ({"url": URL, "fullPage": True, "selector": "p"}, "cannot be combined"),
        ({"url": URL, "format": "pdf", "selector": "p"}, "selector does not apply to pdf"),
        ({"url": URL, "format": "jpeg", "omitBackground": True}, "jpeg has no transparency"),
        ({"url": URL, "format": "html", "deviceScaleFactor": 2}, "image formats only"),
        ({"url": URL, "format": "gif"}, "format"),
        ({"url": URL, "viewport": {"width": 0, "height": 10}}, "viewport.width"),
        ({"url": URL, "headers": {"Host": "evil"}}, "may not be set"),
        ({"html": "<p>", "headers": {"X-Key": "k"}}, "headers apply to url input only"),
        ({"url": URL, "headers": {"X-A": "b\r\nX-B: c"}}, "line break"),
        ({"url": URL, "headers": {"bad name": "x"}}, "invalid header name"),
        ({"url": URL, "headers": {f"x-{i}": "v" for i in range(40)}}, "at most 32"),
        ({"url": URL, "locale": "not a locale"}, "BCP 47"),
        ({"url": URL, "timezone": "Mars/Olympus"}, "unknown IANA time zone"),
        ({"url": URL, "geolocation": {"latitude": 91, "longitude": 0}}, "latitude"),
        ({"url": URL, "customCSS": "a" * 70000}, "customCSS"),
        ({"url": URL, "delayMs": 60000}, "delayMs"),
        ({"url": URL, "unknownOption": True}, "Extra inputs are not permitted"),
        ({"url": URL, "cookies": [{"name": "a;b", "value": "c"}]}, "cookies.0.name"),
        # Page actions: each bounded, and only where it means something.
        ({"url": URL, "scrollToLoad": True}, "scrollToLoad applies to fullPage image captures"),
        ({"url": URL, "format": "html", "scrollToLoad": True}, "scrollToLoad applies to"),
        ({"url": URL, "hideSelectors": ["p"] * 33}, "at most 32"),
        ({"url": URL, "hideSelectors": [""]}, "hideSelectors.0"),
        ({"url": URL, "hideSelectors": ["a" * 1025]}, "hideSelectors.0"),
        ({"url": URL, "clickSelectors": [{"selector": "#a"}] * 11}, "at most 10"),
        ({"url": URL, "clickSelectors": ["#a"]}, "clickSelectors.0"),
        ({"url": URL, "clickSelectors": [{"selector": "#a", "force": True}]}, "force"),
        ({"url": URL, "clip": {"x": 0, "y": 0, "width": 0, "height": 10}}, "clip.width"),
        ({"url": URL, "clip": {"x": -1, "y": 0, "width": 10, "height": 10}}, "clip.x"),
        ({"url": URL, "clip": {"x": 0, "y": 0, "width": 10}}, "clip.height"),
        ({"url": URL, "clip": {"x": 1200, "y": 0, "width": 100, "height": 10}}, "within the view"),
        (
            {"url": URL, "viewport": {"width": 800, "height": 600}, "clip": CLIP_800x600_CORNER},
            "within the viewport",
        ),
        ({"url": URL, "format": "pdf", "clip": CLIP}, "clip applies to image formats only"),
        ({"url": URL, "fullPage": True, "clip": CLIP}, "clip cannot be combined"),
        ({"url": URL, "selector": "p", "clip": CLIP}, "clip cannot be combined"),
        ({"url": URL, "waitForSelectorState": "hidden"}, "waitForSelectorState needs"),
        ({"url": URL, "waitForSelector": "p", "waitForSelectorState": "gone"}, "visible"),
        ({"url": URL, "bestAttempt": "sometimes"}, "bestAttempt"),
    ],
)
def test_invalid_options_name_the_field(raw: dict[str, Any], message: str) -> None:
    assert message in refused(raw)


def test_page_actions_within_their_bounds_are_accepted() -> None:
    raw = {
        "url": URL,
        "fullPage": True,
        "scrollToLoad": True,
        "hideSelectors": ["#ad", ".banner, .popup"],
        "clickSelectors": [{"selector": "#more"}, {"selector": "#consent", "optional": True}],
        "waitForSelector": "#spinner",
        "waitForSelectorState": "detached",
        "bestAttempt": True,
    }
    options = CaptureOptions.model_validate(raw)
    assert options.click_selectors[1].optional and not options.click_selectors[0].optional
    assert CaptureOptions.model_validate(options.to_wire()) == options
    clip = {"x": 1180, "y": 620, "width": 100, "height": 100}  # the default viewport's corner
    assert CaptureOptions.model_validate({"url": URL, "clip": clip}).clip is not None
    pdf = CaptureOptions.model_validate({"url": URL, "format": "pdf", "scrollToLoad": True})
    assert pdf.scroll_to_load
    # Page actions run our fixed scripts: a policy without customJavaScript allows them.
    admit(options, ScreenshotPolicySpec())


def test_wire_round_trip_keeps_camel_case() -> None:
    raw = {
        "url": URL,
        "format": "pdf",
        "pdf": {"format": "Letter", "landscape": True, "pageRanges": "1-2"},
        "customCSS": "body{}",
        "waitForSelector": "#ready",
    }
    wire = CaptureOptions.model_validate(raw).to_wire()
    assert wire["customCSS"] == "body{}" and wire["pdf"]["pageRanges"] == "1-2"
    assert CaptureOptions.model_validate(wire).to_wire() == wire


def test_job_spec_splits_into_options() -> None:
    job = CaptureJobSpec.model_validate({"url": URL, "policyRef": "strict", "retries": 1})
    assert job.policy_ref == "strict"
    assert job.capture_options() == CaptureOptions(url=URL)


def test_policy_defaults_are_secure() -> None:
    spec = ScreenshotPolicySpec()
    assert spec.network.block_private_networks is True
    assert spec.network.allowed_ports == [80, 443]
    assert spec.network.ignore_https_errors is False
    assert spec.features.allow_custom_java_script is False
    assert spec.limits.memory_bytes == 1024**3
    assert spec.limits.max_download_bytes == 50 * 1024**2


def test_policy_document_and_domains() -> None:
    doc = ScreenshotPolicy.model_validate(
        {
            "apiVersion": "kubeshot.dev/v1alpha1",
            "kind": "ScreenshotPolicy",
            "metadata": {"name": "intranet"},
            "spec": {
                "network": {"allowedDomains": ["Bücher.Example."], "allowedCIDRs": ["10.1.2.3/16"]}
            },
        }
    )
    assert doc.name == "intranet"
    assert doc.spec.network.allowed_domains == ["xn--bcher-kva.example"]
    assert doc.spec.network.allowed_cidrs == ["10.1.0.0/16"]
    with pytest.raises(ValidationError, match="both allowed and blocked"):
        ScreenshotPolicySpec.model_validate(
            {"network": {"allowedDomains": ["a.com"], "blockedDomains": ["A.com"]}}
        )
    with pytest.raises(ValidationError, match="at least 64Mi"):
        ScreenshotPolicySpec.model_validate({"limits": {"memory": "1Mi"}})


def test_admission_lists_every_violation() -> None:
    policy = ScreenshotPolicySpec.model_validate(
        {
            "features": {"allowedFormats": ["png"]},
            "limits": {"timeoutSeconds": 10, "maxViewport": {"width": 800, "height": 600}},
            "network": {"blockedDomains": ["evil.example"], "allowedDomains": []},
        }
    )
    options = CaptureOptions.model_validate(
        {
            "url": "https://www.evil.example/",
            "format": "pdf",
            "customJavaScript": "1",
            "viewport": {"width": 801, "height": 600},
            "timeoutSeconds": 11,
        }
    )
    found = violations(options, policy)
    assert len(found) == 5, found
    with pytest.raises(CaptureError) as info:
        admit(options, policy)
    assert info.value.reason is FailureReason.POLICY_VIOLATION
    assert info.value.reason.exit_code == ExitCode.BLOCKED


def test_allowed_domains_are_suffix_matches() -> None:
    policy = ScreenshotPolicySpec.model_validate({"network": {"allowedDomains": ["example.com"]}})
    admit(CaptureOptions(url="https://a.b.example.com/"), policy)
    with pytest.raises(CaptureError):
        admit(CaptureOptions(url="https://notexample.com/"), policy)
    with pytest.raises(CaptureError):
        admit(CaptureOptions(url="https://example.com.evil.net/"), policy)


def test_timeout_is_capped_by_the_policy() -> None:
    policy = ScreenshotPolicySpec()
    assert effective_timeout(CaptureOptions(url=URL), policy) == 60
    assert effective_timeout(CaptureOptions(url=URL, timeoutSeconds=5), policy) == 5


@pytest.mark.parametrize(
    ("reason", "exit_code", "http"),
    [
        (FailureReason.INVALID_SPEC, 2, 400),
        (FailureReason.BLOCKED_BY_POLICY, 3, 403),
        (FailureReason.POLICY_VIOLATION, 3, 403),
        (FailureReason.NAVIGATION_FAILED, 4, 502),
        (FailureReason.TARGET_HTTP_ERROR, 4, 502),
        (FailureReason.TIMEOUT, 4, 504),
        (FailureReason.MEMORY_LIMIT_EXCEEDED, 5, 422),
        (FailureReason.DOWNLOAD_LIMIT_EXCEEDED, 5, 422),
        (FailureReason.RESULT_TOO_LARGE, 5, 422),
        (FailureReason.INTERNAL, 1, 500),
    ],
)
def test_one_error_vocabulary(reason: FailureReason, exit_code: int, http: int) -> None:
    assert reason.exit_code == exit_code
    assert reason.http_status == http
    assert FailureReason.from_exit_code(reason.exit_code).exit_code == exit_code


BAD_NAMES = [".", "..", "", "a/b", "../x", "UPPER", "-a", "a-", "a..b", "a_b", "a" * 254, "a\n"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_object_name_field_is_a_dns_1123_subdomain(name: str) -> None:
    # A name such as "." is folded away in an API path, which then names the whole collection.
    html = {"html": "<p>x</p>"}
    with pytest.raises(ValidationError, match="policyRef"):
        CaptureJobSpec.model_validate({**html, "policyRef": name})
    proxy = {"server": "http://proxy:3128", "credentialsSecretRef": {"name": name}}
    with pytest.raises(ValidationError, match=r"credentialsSecretRef\.name"):
        ScreenshotPolicySpec.model_validate({"network": {"proxy": proxy}})
    with pytest.raises(ValidationError, match="runtimeClassName"):
        ScreenshotPolicySpec.model_validate({"runtime": {"runtimeClassName": name}})
    assert not is_object_name(name)


def test_valid_object_names_pass() -> None:
    for name in ("default", "a", "team-a.policy-1", "x" * 253):
        assert CaptureJobSpec.model_validate({"html": "x", "policyRef": name}).policy_ref == name
        assert is_object_name(name)
    bad_key = {"name": "px", "usernameKey": "a/b"}
    proxy = {"server": "http://proxy:3128", "credentialsSecretRef": bad_key}
    with pytest.raises(ValidationError, match="usernameKey"):
        ScreenshotPolicySpec.model_validate({"network": {"proxy": proxy}})


def test_the_crds_carry_the_name_patterns() -> None:
    job = capturejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    policy = screenshotpolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = policy["properties"]["spec"]["properties"]
    secret_ref = spec["network"]["properties"]["proxy"]["properties"]["credentialsSecretRef"]
    fields = [
        job["properties"]["spec"]["properties"]["policyRef"],
        secret_ref["properties"]["name"],
        spec["runtime"]["properties"]["runtimeClassName"],
    ]
    for field in fields:
        assert (field["pattern"], field["maxLength"]) == (DNS1123_SUBDOMAIN, 253)

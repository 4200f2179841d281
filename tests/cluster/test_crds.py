"""The kubeshot CRDs (crds/) against a real API server: they install, teach through
`kubectl explain`, reject invalid objects with clear messages, show printer columns, keep status
apart from spec, and store what they are given."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.cluster.conftest import Kubectl

GROUP = "kubeshot.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

pytestmark = pytest.mark.usefixtures("kubeshot_crds")


def capture_job(namespace: str, name: str = "job", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "CaptureJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec or {"url": "https://example.com/", "format": "png"},
    }


def assert_subset(expected: Any, actual: Any, path: str = "") -> None:
    """Every field of `expected` is in `actual` with the same value (defaults may be added)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} was dropped by the API server"
            assert_subset(value, actual[key], f"{path}.{key}")
    else:
        assert expected == actual, f"{path}: sent {expected!r}, stored {actual!r}"


def test_crds_are_established_namespaced_with_status_subresource(
    kubectl: Kubectl, kubeshot_crds: list[str]
) -> None:
    assert sorted(kubeshot_crds) == [f"capturejobs.{GROUP}", f"screenshotpolicies.{GROUP}"]
    for name in kubeshot_crds:
        crd = kubectl.json("get", "crd", name)
        assert crd["spec"]["scope"] == "Namespaced"
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
        assert version["served"]
        assert version["storage"]
        assert "status" in version.get("subresources", {})
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions.get("NonStructuralSchema", "False") == "False"


def test_explain_shows_field_descriptions(kubectl: Kubectl) -> None:
    out = kubectl("explain", "capturejob.spec").stdout
    assert "DESCRIPTION:" in out
    assert "FIELDS:" in out
    fields = out.split("FIELDS:", 1)[1]
    for field in ("url", "html", "format", "fullPage", "viewport", "policyRef", "retries"):
        lines = fields.splitlines()
        (index,) = [i for i, line in enumerate(lines) if line.strip().startswith(f"{field}\t")]
        description = lines[index + 1].strip()
        assert description, f"spec.{field} has no description"
        assert "<" not in description, f"spec.{field} has no description"

    enum = kubectl("explain", "capturejob.spec.format").stdout
    for value in ("png", "jpeg", "webp", "pdf", "html"):
        assert value in enum


@pytest.mark.parametrize(
    ("spec", "messages"),
    [
        pytest.param(
            {"url": "https://example.com/", "html": "<p>hi</p>", "format": "png"},
            ["exactly one", "url", "html"],
            id="url-and-html",
        ),
        pytest.param({"format": "png"}, ["exactly one", "url", "html"], id="neither-url-nor-html"),
        pytest.param(
            {"url": "https://example.com/", "format": "gif"},
            ["spec.format", "Unsupported value", '"gif"', '"png"'],
            id="format-not-in-enum",
        ),
        pytest.param(
            {"url": "https://example.com/", "format": "png", "quality": 80},
            ["quality applies to jpeg and webp only"],
            id="quality-with-png",
        ),
        pytest.param(
            {"html": "<p>hi</p>", "format": "png", "headers": {"X-Key": "k"}},
            ["headers apply to url input only"],
            id="headers-without-url",
        ),
        pytest.param(
            {"url": "https://example.com/", "format": "png", "viewport": {"width": "wide"}},
            ["spec.viewport.width", "must be of type integer"],
            id="viewport-width-not-integer",
        ),
        pytest.param(
            {"html": "<p>hi</p>", "format": "png", "timezone": "Mars/Olympus_Mons"},
            ["spec.timezone", "Unsupported value", '"Mars/Olympus_Mons"'],
            id="timezone-not-iana",
        ),
        pytest.param(
            {"html": "<p>hi</p>", "format": "png", "device": "Nokia 3310"},
            ["spec.device", "Unsupported value"],
            id="device-unknown",
        ),
    ],
)
def test_invalid_capture_jobs_are_rejected_with_clear_messages(
    kubectl: Kubectl, namespace: str, spec: dict[str, Any], messages: list[str]
) -> None:
    result = kubectl.apply(capture_job(namespace, **spec), check=False)
    assert result.returncode != 0, f"accepted an invalid CaptureJob: {result.stdout}"
    assert "is invalid" in result.stderr
    for message in messages:
        assert message.lower() in result.stderr.lower(), result.stderr
    assert kubectl("get", "capturejobs", "-n", namespace, "-o", "name").stdout == ""


def test_capture_job_spec_is_immutable(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(capture_job(namespace, "fixed", url="https://example.com/", format="png"))
    result = kubectl(
        "patch", "capturejob", "fixed", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"format": "jpeg"}}), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "spec is immutable" in result.stderr
    stored = kubectl.json("get", "capturejob", "fixed", "-n", namespace)
    assert stored["spec"]["format"] == "png"


def test_printer_columns_show_in_get(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(capture_job(namespace, "shot", url="https://example.com/a", format="webp"))
    result = {"contentType": "image/webp", "bytes": 12345, "sha256": "ab" * 32}
    status = {"phase": "Succeeded", "result": result}
    kubectl(
        "patch", "capturejob", "shot", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    header, row = kubectl("get", "capturejobs", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "URL", "FORMAT", "SIZE", "AGE"]
    cells = row.split()
    assert cells[:5] == ["shot", "Succeeded", "https://example.com/a", "webp", "12345"]


def test_status_subresource_is_separate_from_spec(kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(capture_job(namespace, "job", url="https://example.com/", format="png"))
    before = kubectl.json("get", "capturejob", "job", "-n", namespace)

    # Through the main resource, status is ignored...
    kubectl(
        "patch", "capturejob", "job", "-n", namespace, "--type=merge",
        "-p", json.dumps({"status": {"phase": "Succeeded"}}),
    )  # fmt: skip
    after_main = kubectl.json("get", "capturejob", "job", "-n", namespace)
    assert after_main.get("status", {}).get("phase") != "Succeeded"

    # ...through /status it is stored, while spec changes sent there are ignored.
    kubectl(
        "patch", "capturejob", "job", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Running"}, "spec": {"format": "pdf"}}),
    )  # fmt: skip
    after_status = kubectl.json("get", "capturejob", "job", "-n", namespace)
    assert after_status["status"]["phase"] == "Running"
    assert after_status["spec"] == before["spec"]
    assert after_status["metadata"]["generation"] == before["metadata"]["generation"]


def test_screenshot_policy_and_capture_job_round_trip_unchanged(
    kubectl: Kubectl, namespace: str
) -> None:
    policy_spec: dict[str, Any] = {
        "network": {
            "allowedDomains": ["example.com", "example.org"],
            "blockedDomains": ["ads.example.com"],
            "allowedCIDRs": ["203.0.113.0/24"],
            "blockPrivateNetworks": True,
            "allowedPorts": [80, 443, 8443],
            "ignoreHTTPSErrors": False,
        },
        "limits": {"memory": "768Mi", "timeoutSeconds": 45, "maxConcurrentJobs": 2},
        "features": {
            "allowedFormats": ["png", "pdf"],
            "allowCustomJavaScript": False,
            "allowHTMLInput": True,
        },
        "runtime": {"nodeSelector": {"kubeshot.dev/capture": "true"}},
    }
    job_spec: dict[str, Any] = {
        "url": "https://example.com/page?q=1",
        "format": "jpeg",
        "quality": 80,
        "fullPage": True,
        "viewport": {"width": 1280, "height": 720},
        "policyRef": "strict",
        "retries": 2,
    }
    policy = {
        "apiVersion": API_VERSION,
        "kind": "ScreenshotPolicy",
        "metadata": {"name": "strict", "namespace": namespace},
        "spec": policy_spec,
    }
    kubectl.apply(policy)
    kubectl.apply(capture_job(namespace, "roundtrip", **job_spec))

    stored_policy = kubectl.json("get", "screenshotpolicy", "strict", "-n", namespace)
    stored_job = kubectl.json("get", "capturejob", "roundtrip", "-n", namespace)
    assert_subset(policy_spec, stored_policy["spec"], "spec")  # names what was dropped or changed
    assert_subset(job_spec, stored_job["spec"], "spec")
    # The schemas declare no server-side defaults: what is stored is exactly what was sent.
    assert stored_policy["spec"] == policy_spec
    assert stored_job["spec"] == job_spec

"""The Kubernetes client's checks of what it sends and what it accepts back: pure parts."""

from __future__ import annotations

import pytest

from kubeshot.kube import InvalidPath, UnexpectedKind, checked_kind, expected_kinds, resource_path

NS = "/api/v1/namespaces/team-a"
KUBESHOT = "/apis/kubeshot.dev/v1alpha1/namespaces/team-a"


@pytest.mark.parametrize(
    ("method", "path", "kinds"),
    [
        ("GET", f"{KUBESHOT}/screenshotpolicies/default", {"ScreenshotPolicy"}),
        ("GET", f"{KUBESHOT}/screenshotpolicies", {"ScreenshotPolicyList"}),
        ("PATCH", f"{KUBESHOT}/capturejobs/shot/status", {"CaptureJob"}),
        ("POST", f"{KUBESHOT}/capturejobs", {"CaptureJob"}),
        ("GET", f"{NS}/pods", {"PodList"}),
        ("DELETE", f"{NS}/pods/shot-1", {"Pod", "Status"}),
        ("POST", f"{NS}/events", {"Event"}),
        (
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/np",
            {"NetworkPolicy"},
        ),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/op", {"Lease"}),
        ("GET", "/api/v1/namespaces", {"NamespaceList"}),
        ("GET", "/api/v1/namespaces/team-a", {"Namespace"}),
    ],
)
def test_each_request_expects_its_kind(method: str, path: str, kinds: set[str]) -> None:
    assert expected_kinds(method, path) == kinds


@pytest.mark.parametrize(
    "path",
    [
        f"{KUBESHOT}/screenshotpolicies/.",  # folded into the list URL by URL normalisation
        f"{KUBESHOT}/screenshotpolicies/..",
        f"{KUBESHOT}/screenshotpolicies/",
        f"{KUBESHOT}/screenshotpolicies/a%2Fb",
        f"{KUBESHOT}/screenshotpolicies/%2E",
        f"{NS}/pods/shot-1/exec",  # a subresource whose answer is not the object
        f"{NS}/configmaps/x",  # a kind this client never asks for
        "/version",
    ],
)
def test_paths_that_address_something_else_are_refused(path: str) -> None:
    with pytest.raises(InvalidPath):
        expected_kinds("GET", path)


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "100%"])
def test_resource_paths_refuse_names_that_are_no_object(name: str) -> None:
    with pytest.raises(InvalidPath):
        resource_path("kubeshot.dev/v1alpha1", "screenshotpolicies", "team-a", name)
    with pytest.raises(InvalidPath):
        resource_path("v1", "pods", name)


def test_an_answer_of_another_kind_is_refused() -> None:
    listing = {"kind": "ScreenshotPolicyList", "items": []}
    with pytest.raises(
        UnexpectedKind, match="answered 'ScreenshotPolicyList', not ScreenshotPolicy"
    ):
        checked_kind(listing, frozenset({"ScreenshotPolicy"}), "GET x")
    for answer in ({}, None, [], {"kind": None}):
        with pytest.raises(UnexpectedKind):
            checked_kind(answer, frozenset({"ScreenshotPolicy"}), "GET x")
    policy = {"kind": "ScreenshotPolicy", "spec": {}}
    assert checked_kind(policy, frozenset({"ScreenshotPolicy"}), "GET x") is policy

"""`helm install --wait` with only the values a user must set; every pod Ready; `helm test`."""

from __future__ import annotations

from tests.e2e.conftest import NAMESPACE, RELEASE, Helm, Kubectl, Release


def _ready(pod: dict[str, object]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []  # type: ignore[union-attr]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_helm_install_waits_until_every_pod_is_ready(release: Release, kubectl: Kubectl) -> None:
    assert "STATUS: deployed" in release.install.stdout, release.install.stdout
    pods = kubectl.items("pods", "-l", f"app.kubernetes.io/instance={RELEASE}")
    by_component = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in pods}
    assert sorted(by_component) == ["gateway", "operator"], [p["metadata"]["name"] for p in pods]
    for component, pod in by_component.items():
        assert _ready(pod), f"{component} pod not Ready: {pod['status']}"
        # The restricted Pod Security Standard is enforced in the namespace: the pods exist.
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    claim = kubectl.get("pvc", f"{RELEASE}-results")
    assert claim["status"]["phase"] == "Bound"
    assert kubectl.get("secret", f"{RELEASE}-auth") is not None
    crds = kubectl.json("get", "crd", "capturejobs.kubeshot.dev", "screenshotpolicies.kubeshot.dev")
    assert len(crds["items"]) == 2
    assert kubectl.get("screenshotpolicy", "default") is not None


def test_helm_test_captures_a_page_through_the_gateway_service(
    release: Release, helm: Helm
) -> None:
    # The hook checks the PNG itself (its signature, 640x360, the sha256 header); a pod that
    # passed is deleted (hook-succeeded), one that failed stays for `kubectl logs`.
    done = helm("test", RELEASE, "--namespace", NAMESPACE, "--timeout", "300s")
    assert f"TEST SUITE:     {RELEASE}-test-capture" in done.stdout, done.stdout
    assert "Phase:          Succeeded" in done.stdout, done.stdout

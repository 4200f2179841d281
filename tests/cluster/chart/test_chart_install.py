"""`helm install` and `helm upgrade` into the session's control plane: what they create, the pods
the controllers make from it pass the namespace's restricted Pod Security admission, the generated
token survives upgrades, and NOTES tell the next step with commands that work."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.chart.conftest import Release, secret_value
from tests.support import wait_for


def objects(kubectl: Any, namespace: str, kind: str) -> list[str]:
    items = kubectl.json("get", kind, "-n", namespace)["items"]
    return sorted(i["metadata"]["name"] for i in items)


def assert_serves_tls_for(kubectl: Any, namespace: str, fullname: str, tmp_path: Path) -> None:
    """The generated certificate: signed by its CA, for the gateway Service and 127.0.0.1."""
    secret = f"{fullname}-gateway-tls"
    for key in ("tls.crt", "ca.crt"):
        (tmp_path / key).write_text(secret_value(kubectl, namespace, secret, key))
    verify = ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt")]
    subprocess.run(verify, check=True, capture_output=True)
    names = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "tls.crt"), "-noout", "-ext", "subjectAltName"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert f"DNS:{fullname}-gateway.{namespace}.svc" in names
    assert "IP Address:127.0.0.1" in names


def test_install_creates_the_release(
    install: Callable[..., Release], kubectl: Any, namespace: str, tmp_path: Path
) -> None:
    release = install()
    full = release.fullname
    assert objects(kubectl, namespace, "deployments") == [f"{full}-gateway", f"{full}-operator"]
    services = objects(kubectl, namespace, "services")
    assert services == [
        f"{full}-gateway",
        f"{full}-gateway-metrics",
        f"{full}-operator",  # warm capture pods' assignments
        f"{full}-operator-metrics",
    ]
    assert objects(kubectl, namespace, "networkpolicies") == [f"{full}-gateway", f"{full}-operator"]
    assert objects(kubectl, namespace, "poddisruptionbudgets") == [
        f"{full}-gateway",
        f"{full}-operator",
    ]
    assert objects(kubectl, namespace, "persistentvolumeclaims") == [f"{full}-results"]
    assert objects(kubectl, namespace, "screenshotpolicies") == ["default"]
    for name in (f"{full}-operator", f"{full}-operator-discovery", f"{full}-gateway"):
        kubectl("get", "clusterrole", name)
    token = secret_value(kubectl, namespace, f"{full}-auth", "token")
    signing = secret_value(kubectl, namespace, f"{full}-auth", "signingSecret")
    assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
    assert re.fullmatch(r"[A-Za-z0-9]{64}", signing)
    assert_serves_tls_for(kubectl, namespace, full, tmp_path)

    # No scheduler runs here, but the ReplicaSet controller creates the pods: they are admitted
    # by the namespace's `restricted` Pod Security level (a violation would leave none).
    def pods() -> list[str] | None:
        items = kubectl.json("get", "pods", "-n", namespace)["items"]
        components = sorted(i["metadata"]["labels"]["app.kubernetes.io/component"] for i in items)
        return components if components == ["gateway", "operator"] else None

    wait_for(pods, timeout=30, what="the operator and gateway pods")
    events = kubectl.json("get", "events", "-n", namespace)["items"]
    refused = [e["message"] for e in events if "violates PodSecurity" in e.get("message", "")]
    assert not refused, refused


def test_upgrade_keeps_the_generated_token_and_applies_changes(
    install: Callable[..., Release], kubectl: Any, namespace: str
) -> None:
    release = install()
    secret = f"{release.fullname}-auth"
    token = secret_value(kubectl, namespace, secret, "token")
    signing = secret_value(kubectl, namespace, secret, "signingSecret")
    tls = f"{release.fullname}-gateway-tls"
    certificate = secret_value(kubectl, namespace, tls, "tls.crt")

    changed = {"operator": {"verbose": True}, "gateway": {"rateLimit": {"capture": "9/second"}}}
    release.upgrade(changed)
    release.upgrade({"operator": {"verbose": True}}, "--reuse-values")

    assert secret_value(kubectl, namespace, secret, "token") == token
    assert secret_value(kubectl, namespace, secret, "signingSecret") == signing
    assert secret_value(kubectl, namespace, tls, "tls.crt") == certificate
    operator = kubectl.json("get", "deployment", f"{release.fullname}-operator", "-n", namespace)
    assert operator["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "operator",
        "--verbose",
    ]
    gateway = kubectl.json("get", "deployment", f"{release.fullname}-gateway", "-n", namespace)
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RATE_LIMIT_CAPTURE"] == "9/second"
    history = release.helm("history", release.name, "-n", namespace, "-o", "json").stdout
    assert history.count('"status":"deployed"') == 1
    assert history.count('"revision"') == 3


def test_existing_secret_is_used_and_nothing_generated(
    install: Callable[..., Release], kubectl: Any, namespace: str
) -> None:
    kubectl(
        "create", "secret", "generic", "platform-auth", "-n", namespace,
        "--from-literal=bearer=s3cret-token", "--from-literal=hmac=k1:signing",
    )  # fmt: skip
    release = install(
        {
            "auth": {
                "existingSecret": "platform-auth",
                "tokenKey": "bearer",
                "signingSecretKey": "hmac",
            }
        }
    )
    secrets = [s for s in objects(kubectl, namespace, "secrets") if not s.startswith("sh.helm.")]
    assert sorted(secrets) == sorted(["platform-auth", f"{release.fullname}-gateway-tls"])
    assert "platform-auth" in release.install.stdout  # NOTES show where the token is


def test_notes_tell_how_to_get_the_token_and_capture(
    install: Callable[..., Release], kubectl: Any, namespace: str
) -> None:
    release = install()
    notes = release.install.stdout
    assert "NOTES:" in notes
    command = next(line.strip() for line in notes.splitlines() if "KUBESHOT_TOKEN=" in line)
    # Run the printed command (with the test cluster's kubeconfig) and compare with the Secret.
    inner = command.removeprefix("export KUBESHOT_TOKEN=$(").removesuffix(")")
    kubectl_args = shlex.split(inner.split(" | ")[0])[1:]
    encoded = kubectl(*kubectl_args).stdout
    printed = subprocess.run(
        ["base64", "-d"], input=encoded, capture_output=True, text=True, check=True
    ).stdout
    assert printed == secret_value(kubectl, namespace, f"{release.fullname}-auth", "token")
    ca_command = next(line.strip() for line in notes.splitlines() if "ca\\.crt" in line)
    ca_args = shlex.split(ca_command.split(" | ")[0])[1:]
    printed_ca = subprocess.run(
        ["base64", "-d"], input=kubectl(*ca_args).stdout, capture_output=True, text=True
    ).stdout
    tls = f"{release.fullname}-gateway-tls"
    assert printed_ca == secret_value(kubectl, namespace, tls, "ca.crt")
    assert "--cacert kubeshot-ca.crt" in notes
    assert "/v1/screenshot" in notes
    assert "kind: CaptureJob" in notes
    assert f"port-forward service/{release.fullname}-gateway" in notes


def test_uninstall_removes_cluster_rbac_but_keeps_crds(
    install: Callable[..., Release], kubectl: Any, namespace: str, kubeshot_crds: list[str]
) -> None:
    release = install()
    release.helm("uninstall", release.name, "-n", namespace, "--wait")
    gone = kubectl("get", "clusterrole", f"{release.fullname}-operator", check=False)
    assert gone.returncode != 0
    for crd in kubeshot_crds:  # Helm never deletes what it installed from crds/
        kubectl("get", "crd", crd)

"""What the chart tells the components is what they read: every environment variable the chart
sets is a setting of the component, the rendered values parse into its settings object, and the
images run the commands and the user the chart and the operator expect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kubeshot import logs
from kubeshot.gateway.settings import Settings
from kubeshot.operator.settings import OperatorSettings
from kubeshot.store.settings import StoreSettings
from kubeshot.tracing import TracingSettings
from tests.cluster.chart.conftest import VALUES_DIR, Helm
from tests.conftest import ROOT, need

VALUES_FILES = [None, *sorted(VALUES_DIR.glob("*.yaml"))]


def _env_names(model: type[Settings | TracingSettings | StoreSettings]) -> set[str]:
    names: set[str] = set()
    for field in model.model_fields.values():
        alias = field.validation_alias
        names.update([alias] if isinstance(alias, str) else getattr(alias, "choices", []))
    return names


# What both daemons read besides their own settings: the log format and OpenTelemetry's variables.
COMMON_ENV = {logs.FORMAT_ENV} | _env_names(TracingSettings)
# The result store's settings, one definition read by both (the chart renders them once).
STORE_ENV = _env_names(StoreSettings)


def gateway_env_names() -> set[str]:
    return _env_names(Settings) | COMMON_ENV


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda v: v.stem if v else "default")
def test_gateway_environment_is_read_by_its_settings(helm: Helm, values: Path | None) -> None:
    rendered = helm.template(values)
    env = rendered.env("ks-kubeshot-gateway")
    unknown = set(env) - gateway_env_names()
    assert not unknown, f"the gateway reads no such settings: {unknown}"
    plain = {k: v for k, v in env.items() if isinstance(v, str) and k not in COMMON_ENV}
    # Secrets (secretKeyRef) and downward-API values arrive at run time; stand-ins here.
    plain.update({"AUTH_TOKEN": "t", "URL_SIGNING_SECRET": "s", "KUBESHOT_NAMESPACE": "kubeshot"})
    settings = Settings(**plain)
    assert settings.host == ["0.0.0.0"]
    assert not settings.plain_http_allowed  # HTTPS only, unless TLS or a trusted proxy says so
    if settings.tls:
        assert str(settings.tls_cert).startswith("/etc/kubeshot/tls/")
    ports = {
        p["name"]: p["containerPort"]
        for p in rendered.get("Deployment", "ks-kubeshot-gateway")["spec"]["template"]["spec"][
            "containers"
        ][0]["ports"]
    }
    assert settings.upload_port == ports["upload"]


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda v: v.stem if v else "default")
def test_operator_environment_is_read_by_its_settings(helm: Helm, values: Path | None) -> None:
    rendered = helm.template(values)
    if "ks-kubeshot-operator" not in rendered.kinds()["Deployment"]:
        pytest.skip("no operator in this values set")
    env = rendered.env("ks-kubeshot-operator")
    fields = {f"KUBESHOT_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    unknown = set(env) - fields - COMMON_ENV - STORE_ENV
    assert not unknown, f"the operator reads no such settings: {unknown}"
    plain = {
        k.removeprefix("KUBESHOT_OPERATOR_").lower(): v
        for k, v in env.items()
        if isinstance(v, str) and k not in COMMON_ENV | STORE_ENV
    }
    as_json = {"namespaces", "gateway_pod_labels", "dns_pod_labels", "operator_pod_labels"}
    parsed = {k: json.loads(v) if k in as_json else v for k, v in plain.items()}
    store = {k: v for k, v in env.items() if k in STORE_ENV}
    settings = OperatorSettings(**parsed, store=StoreSettings(**store))
    # The very store the gateway is given.
    gateway_env = rendered.env("ks-kubeshot-gateway")
    assert settings.store == StoreSettings(
        **{k: gateway_env[k] for k in STORE_ENV & set(gateway_env)}
    )
    gateway = rendered.get("Deployment", "ks-kubeshot-gateway")
    template = gateway["spec"]["template"]
    assert settings.gateway_pod_labels.items() <= template["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    assert settings.upload_port == ports["upload"]  # capture pods' NetworkPolicy allows this port
    operator = rendered.get("Deployment", "ks-kubeshot-operator")["spec"]["template"]
    assert settings.operator_pod_labels.items() <= operator["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in operator["spec"]["containers"][0]["ports"]}
    assert settings.assignment_port == ports["assignment"]
    lease = rendered.get("Role", "ks-kubeshot-operator-lease")
    assert [r["resourceNames"] for r in lease["rules"] if "resourceNames" in r] == [
        [settings.lease_name]
    ]


def dockerfile(path: str) -> str:
    return (ROOT / path).read_text()


def test_images_run_what_the_chart_and_the_operator_start(helm: Helm) -> None:
    operator_image = dockerfile("operator/Dockerfile")
    capture_image = dockerfile("capture-pod/Dockerfile")
    # One image, two entrypoints: `kubeshot` with the chart's args.
    assert 'ENTRYPOINT ["kubeshot"]' in operator_image
    rendered = helm.template()
    for name, command in [("ks-kubeshot-operator", "operator"), ("ks-kubeshot-gateway", "serve")]:
        spec = rendered.get("Deployment", name)["spec"]["template"]["spec"]
        assert spec["containers"][0]["args"][0] == command
        assert spec["securityContext"]["runAsUser"] == 10001
    # The capture pod: the operator's command, as the operator's default user.
    assert 'CMD ["python", "-m", "kubeshot_capture"]' in capture_image
    assert OperatorSettings().run_as_user == 10001
    for text in (operator_image, capture_image):
        assert "USER 10001:10001" in text
        assert "--uid 10001" in text
        # Chromium's binary, not Debian's /usr/bin/chromium wrapper (it reads /etc/chromium.d).
        assert "KUBESHOT_CHROMIUM=/usr/lib/chromium/chromium" in text
    runtime_stage = capture_image.split("\nFROM ")[-1]
    install = runtime_stage[runtime_stage.index("apt-get install") :].split("&&")[0]
    assert "chromium" in install.split()  # Debian's Chromium, in the image the pods run


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for path in ("operator/Dockerfile", "capture-pod/Dockerfile"):
        for match in re.finditer(r"^COPY (?!--from)(.+) \S+$", dockerfile(path), re.M):
            copied.update(match.group(1).split())
    for source in copied:
        top = source.split("/")[0].rstrip("/")
        assert top in allowed, f"{source} is copied but excluded by .dockerignore"


def test_e2e_script_is_shellcheck_clean() -> None:
    need(shutil.which("shellcheck"), "shellcheck is not installed (make setup installs it)")
    done = subprocess.run(
        ["shellcheck", str(ROOT / "hack" / "e2e-kind.sh")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_e2e_script_values_render(helm: Helm, tmp_path: Path) -> None:
    """The values hack/e2e-kind.sh gives the e2e suite (tests/e2e) pass the schema and the
    chart's checks: only the images; TLS, the auth Secret and the default policy are the chart's."""
    script = (ROOT / "hack" / "e2e-kind.sh").read_text()
    block = script.split('cat >"$WORK/values.yaml" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    values = block.replace("$IMAGE_TAG", "e2e")
    assert "$" not in values, values
    path = tmp_path / "e2e-values.yaml"
    path.write_text(values)
    rendered = helm.template(path, release="kubeshot", namespace="kubeshot")
    gateway = rendered.get("Deployment", "kubeshot-gateway")["spec"]["template"]["spec"]
    assert gateway["containers"][0]["image"] == "kubeshot/kubeshot:e2e"
    assert gateway["containers"][0]["imagePullPolicy"] == "Never"
    volumes = {v["name"]: v for v in gateway["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "kubeshot-gateway-tls"
    env = rendered.env("kubeshot-operator")
    assert env["KUBESHOT_OPERATOR_CAPTURE_IMAGE"] == "kubeshot/capture:e2e"
    assert env["KUBESHOT_OPERATOR_IMAGE_PULL_POLICY"] == "Never"
    assert rendered.get("ScreenshotPolicy")["metadata"]["namespace"] == "kubeshot"
    assert sorted(rendered.kinds()["Secret"]) == ["kubeshot-auth", "kubeshot-gateway-tls"]
    # The same suite as on the node tier, with KUBECONFIG pointing at kind.
    assert 'KUBESHOT_E2E_VALUES="$WORK/values.yaml" .venv/bin/pytest -m e2e' in script
    assert rendered.get("Service", "kubeshot-gateway")["spec"]["ports"][0]["port"] == 443

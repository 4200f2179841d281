"""Chart tests: the real helm (from testenv) on charts/kubeshot, and the session's control plane.

`helm` renders and lints without a cluster; `install` puts a release into the test's namespace
(CRDs come from the session's `kubeshot_crds`, so releases use --skip-crds) and uninstalls it
afterwards, removing its cluster-scoped RBAC. `chart_operator` runs `kubeshot operator` as a local
process authenticated only by a token of the chart's own operator ServiceAccount, with the
environment of the chart's own Deployment.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.operator.conftest import Operator, Operators
from tests.cluster.operator.conftest import uploads as uploads  # re-exported fixture
from tests.conftest import ROOT
from tests.support import free_port

CHART = ROOT / "charts" / "kubeshot"
VALUES_DIR = Path(__file__).parent / "values"
KUBESHOT = Path(sys.executable).parent / "kubeshot"
# Rendered without a cluster, the chart cannot look up where the API server is (the `kubernetes`
# Service's endpoints) and refuses to render unless told, as `helm template` users must tell it.
OFFLINE_API_SERVER = {
    "networkPolicy": {"apiServerCIDRs": ["192.0.2.10/32"], "apiServerPorts": [6443]}
}
# What a real cluster's `kubernetes` Service leads to; the test control plane's apiserver writes
# no endpoints (it listens on loopback), so installs get one of these, for the test's duration.
API_SERVER_ENDPOINT = ("192.0.2.20", 6443)


class Helm:
    """The testenv's helm with private config/cache folders, optionally bound to a cluster."""

    def __init__(self, binary: Path, home: Path, kubeconfig: Path | None = None) -> None:
        self.binary = binary
        self.home = home
        self.kubeconfig = kubeconfig
        self._rendered: dict[str, Rendered] = {}
        self.env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)

    def bound(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False
            )
        return proc

    def values_args(self, values: dict[str, Any] | Path | None) -> list[str]:
        if values is None:
            return []
        if isinstance(values, Path):
            return ["-f", str(values)]
        path = self.home / f"values-{secrets.token_hex(4)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return ["-f", str(path)]

    def template(
        self,
        values: dict[str, Any] | Path | None = None,
        *args: str,
        namespace: str = "kubeshot",
        release: str = "ks",
        check: bool = True,
        offline: bool = True,
    ) -> Rendered:
        """`helm template`; unless offline=False with the API server named (OFFLINE_API_SERVER),
        which the values given override."""
        key = json.dumps([str(values) if isinstance(values, Path) else values, args, namespace,
                          release, offline], sort_keys=True, default=str)  # fmt: skip
        if key in self._rendered:
            return self._rendered[key]
        proc = self(
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            *(self.values_args(OFFLINE_API_SERVER) if offline else []),
            *self.values_args(values),
            *args,
            check=check,
        )
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d] if proc.returncode == 0 else []
        self._rendered[key] = Rendered(docs, proc)  # the chart does not change during a session
        return self._rendered[key]


@dataclass
class Rendered:
    """`helm template` output, decoded."""

    docs: list[dict[str, Any]]
    proc: subprocess.CompletedProcess[str]

    def kinds(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for doc in self.docs:
            out.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
        return out

    def get(self, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
        found = [
            d
            for d in self.docs
            if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)
        ]
        assert len(found) == 1, f"{kind} {name}: {len(found)} found in {self.kinds()}"
        return found[0]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def env(self, deployment: str) -> dict[str, Any]:
        container = self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.fixture(scope="session")
def helm(testenv_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(testenv_bin_dir / "helm", tmp_path_factory.mktemp("helm"))


@dataclass
class Release:
    name: str
    namespace: str
    fullname: str
    install: subprocess.CompletedProcess[str]
    helm: Helm
    history: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def upgrade(self, values: dict[str, Any] | None = None, *args: str) -> str:
        proc = self.helm(
            "upgrade",
            self.name,
            str(CHART),
            "--namespace",
            self.namespace,
            "--skip-crds",
            *self.helm.values_args(values),
            *args,
        )
        self.history.append(proc)
        return proc.stdout

    @property
    def operator_sa(self) -> str:
        return f"{self.fullname}-operator"

    @property
    def gateway_sa(self) -> str:
        return f"{self.fullname}-gateway"


@pytest.fixture
def api_server_endpoints(control_plane: Any) -> Iterator[tuple[str, int]]:
    """An EndpointSlice of the `kubernetes` Service (API_SERVER_ENDPOINT), as every real cluster
    has one, for the chart to look up; removed after the test (the node tier writes its own)."""
    address, port = API_SERVER_ENDPOINT
    name = f"kubernetes-test-{secrets.token_hex(3)}"
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "kubeshot-tests",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }
    status, created = control_plane.request("POST", path, body)
    assert status == 201, created
    try:
        yield API_SERVER_ENDPOINT
    finally:
        control_plane.request("DELETE", f"{path}/{name}")


@pytest.fixture
def install(
    helm: Helm,
    kubeconfig: Path,
    namespace: str,
    kubeshot_crds: list[str],
    api_server_endpoints: tuple[str, int],
) -> Iterator[Callable[..., Release]]:
    """install(values) → a Release of the chart in the test's namespace; uninstalled afterwards."""
    bound = helm.bound(kubeconfig)
    releases: list[Release] = []

    def run(values: dict[str, Any] | Path | None = None, *args: str) -> Release:
        name = f"ks{secrets.token_hex(3)}"  # cluster-scoped RBAC names must not collide
        proc = bound(
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--skip-crds",
            *bound.values_args(values),
            *args,
        )
        release = Release(name, namespace, f"{name}-kubeshot", proc, bound)
        releases.append(release)
        return release

    yield run
    for release in releases:
        bound("uninstall", release.name, "--namespace", namespace, "--wait", check=False)


def service_account_token(kubectl: Any, namespace: str, account: str) -> str:
    """A TokenRequest for the ServiceAccount (what the kubelet would mount into its pod)."""
    proc = kubectl("create", "token", account, "-n", namespace, "--duration=1h")
    return str(proc.stdout.strip())


def deployment_env(kubectl: Any, namespace: str, name: str) -> dict[str, str]:
    """The plain `value` environment of a Deployment's first container, as installed."""
    deployment = kubectl.json("get", "deployment", name, "-n", namespace)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def secret_value(kubectl: Any, namespace: str, name: str, key: str) -> str:
    secret = kubectl.json("get", "secret", name, "-n", namespace)
    return base64.b64decode(secret["data"][key]).decode()


@pytest.fixture
def chart_operator(
    kubectl: Any, namespace: str, tmp_path: Path, uploads: Any
) -> Iterator[Callable[..., Operator]]:
    """Start `kubeshot operator` as the chart's operator ServiceAccount of a Release.

    The environment is the chart Deployment's own, with the pod-only parts replaced: the
    /metrics and assignment ports are free loopback ports, the identity a fixed name, uploads
    go to a local stand-in for the gateway, and sweeps are fast. Its only credential is the
    SA's token.
    """
    operators = Operators(tmp_path)

    def start(release: Release, **overrides: object) -> Operator:
        token = service_account_token(kubectl, release.namespace, release.operator_sa)
        config = tmp_path / f"operator-{len(operators.started)}.kubeconfig"
        kubectl.as_token(token, config)
        env = deployment_env(kubectl, release.namespace, f"{release.fullname}-operator")
        port = free_port()
        env.update(
            {
                "KUBESHOT_OPERATOR_IDENTITY": f"test-{len(operators.started)}",
                "KUBESHOT_OPERATOR_HTTP_HOST": "127.0.0.1",
                "KUBESHOT_OPERATOR_HTTP_PORT": str(port),
                "KUBESHOT_OPERATOR_ASSIGNMENT_HOST": "127.0.0.1",
                "KUBESHOT_OPERATOR_ASSIGNMENT_PORT": str(free_port()),
                "KUBESHOT_OPERATOR_UPLOAD_URL": uploads.url,
                "KUBESHOT_OPERATOR_RESYNC_SECONDS": "0.5",
                "KUBESHOT_OPERATOR_LEASE_DURATION_SECONDS": "3",
                "KUBESHOT_OPERATOR_RETRY_BACKOFF_SECONDS": "0.2",
            }
        )
        env.update({f"KUBESHOT_OPERATOR_{k.upper()}": str(v) for k, v in overrides.items()})
        base = {k: v for k, v in os.environ.items() if k not in {"KUBECONFIG"}}
        full_env = {**base, **env, "KUBECONFIG": str(config), "PYTHONUNBUFFERED": "1"}
        return operators.launch(full_env, port)

    yield start
    operators.stop_all()


def can_i(control_plane: Any, account: str, *args: str) -> bool:
    """What `kubectl auth can-i ARGS --as=system:serviceaccount:NS:NAME` answers, asked of the
    API server directly (a SubjectAccessReview; much faster than a kubectl per question).

    ARGS: VERB RESOURCE[.GROUP][/NAME] [--subresource=S] [-n NS | -A]; account: "ns:name".
    """
    sa_namespace, sa_name = account.split(":")
    verb, target, *rest = args
    resource, _, name = target.partition("/")
    plural, _, group = resource.partition(".")
    attributes: dict[str, str] = {"verb": verb, "resource": plural, "group": group}
    if name:
        attributes["name"] = name
    flags = iter(rest)
    for flag in flags:
        if flag == "-n":
            attributes["namespace"] = next(flags)
        elif flag.startswith("--subresource="):
            attributes["subresource"] = flag.split("=", 1)[1]
        elif flag != "-A":
            raise ValueError(f"unknown flag {flag}")
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{sa_namespace}:{sa_name}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        },
    }
    status, body = control_plane.request(
        "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review
    )
    assert status == 201, body
    return bool(body["status"].get("allowed"))


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)

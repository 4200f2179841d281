"""Cluster tier: a real etcd + kube-apiserver + kube-controller-manager, started once per session.

The control plane starts only when a test asks for one of these fixtures (`control_plane`,
`kubeconfig`, `kubectl`, `namespace`, `kubeshot_crds`), never for tests that don't. Binaries come
from `make testenv` (testenv/build.sh) or from $KUBESHOT_TESTENV_BIN.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, need
from tests.support import controlplane

CRD_DIR = ROOT / "crds"
KUBESHOT_CRDS = ("kubeshot.dev_screenshotpolicies.yaml", "kubeshot.dev_capturejobs.yaml")
_startup_seconds: list[float] = []  # for the terminal summary


class Kubectl:
    """The built kubectl, bound to the test cluster's admin kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path, cache_dir: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        # A discovery/OpenAPI cache of this session's own, never ~/.kube/cache: a cluster of an
        # earlier session may have had the same port.
        self.cache_dir = cache_dir

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl ARGS`; with check=True a non-zero exit fails the test, showing stderr."""
        proc = subprocess.run(
            [
                str(self.binary),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.cache_dir}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False
            )
        return proc

    def as_token(self, token: str, kubeconfig: Path) -> Kubectl:
        """A kubectl that authenticates with `token` only (e.g. a ServiceAccount's), no cert.

        Writes a kubeconfig with this cluster's server and CA to `kubeconfig`.
        """
        admin = json.loads(self.kubeconfig.read_text())
        config = {
            **admin,
            "users": [{"name": "token", "user": {"token": token}}],
            "contexts": [
                {"name": "token", "context": {"cluster": "kubeshot-testenv", "user": "token"}}
            ],
            "current-context": "token",
        }
        kubeconfig.write_text(json.dumps(config))
        kubeconfig.chmod(0o600)
        return Kubectl(self.binary, kubeconfig, self.cache_dir)

    def json(self, *args: str) -> Any:
        """`kubectl ARGS -o json`, decoded."""
        return json.loads(self(*args, "-o", "json").stdout)

    def apply(
        self, manifest: dict[str, Any] | str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of one manifest (a dict is sent as JSON)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self("apply", "-f", "-", *args, input=text, check=check)


@pytest.fixture(scope="session")
def testenv_bin_dir() -> Path:
    bin_dir = controlplane.find_bin_dir()
    missing = controlplane.missing_binaries(bin_dir)
    need(not missing, f"cluster binaries missing in {bin_dir}: {missing}; run `make testenv`")
    return bin_dir


@pytest.fixture(scope="session")
def control_plane(testenv_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running controlplane.ControlPlane: `.server`, `.kubeconfig`, `.request()`, ..."""
    cp = controlplane.ControlPlane(testenv_bin_dir, tmp_path_factory.mktemp("controlplane"))
    started = time.monotonic()
    cp.start()
    _startup_seconds.append(time.monotonic() - started)
    try:
        yield cp
    finally:
        cp.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in _startup_seconds:
        terminalreporter.write_line(f"cluster tier: control plane ready in {seconds:.1f}s")


@pytest.fixture(scope="session")
def kubeconfig(control_plane: Any) -> Path:
    """Path of the admin (system:masters) kubeconfig of the session's control plane."""
    return Path(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def kubectl(testenv_bin_dir: Path, kubeconfig: Path) -> Kubectl:
    return Kubectl(testenv_bin_dir / "kubectl", kubeconfig, kubeconfig.parent / "kubectl-cache")


@pytest.fixture
def namespace(control_plane: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test, enforcing the `restricted` Pod Security Standard.

    Capture pods must meet `restricted`, so every test namespace enforces it; a test that needs
    less relabels its namespace. Deleted (without waiting) after the test.
    """
    # generateName must be a DNS label prefix: lower-case letters, digits and dashes.
    test_name = "".join(c if c.isalnum() else "-" for c in request.node.name[:40].lower())
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "generateName": f"t-{test_name.strip('-')}-",
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "kubeshot.dev/test": "true",
            },
        },
    }
    status, created = control_plane.request("POST", "/api/v1/namespaces", body)
    assert status == 201, created
    name: str = created["metadata"]["name"]
    try:
        yield name
    finally:
        control_plane.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture(scope="session")
def kubeshot_crds(control_plane: Any, kubectl: Kubectl) -> list[str]:
    """The kubeshot CRDs from crds/, applied, Established and published in the OpenAPI v3
    document (which `kubectl explain` and client-side validation read); returns their names."""
    files = [CRD_DIR / name for name in KUBESHOT_CRDS]
    need(all(f.exists() for f in files), f"CRDs not generated yet in {CRD_DIR} (make crds)")
    args = [arg for f in files for arg in ("-f", str(f))]
    kubectl("apply", "--server-side", *args)
    crds = kubectl.json("get", *args)["items"]
    names = [crd["metadata"]["name"] for crd in crds]
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
    # The OpenAPI v3 document of a new group is published a moment after Established.
    wanted = [
        (f"apis/{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        for crd in crds
        for version in crd["spec"]["versions"]
        if version["served"]
    ]
    deadline = time.monotonic() + 60
    while not all(_openapi_has(control_plane, path, kind) for path, kind in wanted):
        assert time.monotonic() < deadline, f"OpenAPI v3 never published {wanted}"
        time.sleep(0.2)
    return names


def _openapi_has(control_plane: Any, group_version_path: str, kind: str) -> bool:
    document = control_plane.get(f"/openapi/v3/{group_version_path}")
    schemas = (document or {}).get("components", {}).get("schemas", {})
    return any(name.endswith(f".{kind}") for name in schemas)

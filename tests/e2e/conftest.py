"""End to end: the Helm-installed release on any cluster, checked as its users check it.

The suite takes a cluster, installs charts/kubeshot with `helm install --wait` and then works only
through what a user has: kubectl, helm, the chart's Secrets, and the gateway Service reached with
`kubectl port-forward` (as the chart's NOTES say). Which cluster:

- `KUBECONFIG` set: that cluster (kind through `make e2e-kind`, or any other). The images must be
  there already; `KUBESHOT_E2E_VALUES` names a values file with their names (the only values a
  user must set besides the chart's defaults), and `kubectl` and `helm` come from PATH.
- otherwise, on this machine: the node tier (testenv/node.py) beside the test control plane,
  started by the same fixtures as tests/cluster/node, with the operator image
  (`testenv/image.sh --operator`) imported beside the capture image. Nothing of kubeshot runs
  on the host: the operator, the gateway and the capture pods are the chart's pods.

The suite is one lifecycle, in file order: install (test_1), captures (test_2), NetworkPolicies
(test_3), restarts (test_4), upgrade and uninstall (test_5); then releases of their own, each
removed with its CRDs at its end: replicas (test_6), warm capture pods (test_7). It runs in a
pytest session of its own (`pytest -m e2e`, `make test-e2e`): tests/conftest.py keeps it out of a
session with the other tiers, whose control plane and node it would otherwise duplicate.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

# The node tier's fixtures, for a session that runs the e2e suite alone (see the docstring).
from tests.cluster.conftest import control_plane as control_plane
from tests.cluster.conftest import testenv_bin_dir as testenv_bin_dir
from tests.cluster.node.conftest import capture_image_archive as capture_image_archive
from tests.cluster.node.conftest import node as node
from tests.cluster.node.conftest import nodes
from tests.conftest import ROOT, need
from tests.support import free_port, wait_for

CHART = ROOT / "charts" / "kubeshot"
RELEASE = "kubeshot"
NAMESPACE = "kubeshot"  # the release's; examples/ are applied here, as docs/helm.md says
PAGES_NAMESPACE = "kubeshot-e2e-pages"
CRDS = ("capturejobs.kubeshot.dev", "screenshotpolicies.kubeshot.dev")
WAIT = 300  # seconds for one thing to happen (a rollout, a capture)
POLL = 0.5  # seconds between two looks (most look through kubectl)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The first test's setup brings up the cluster, the images and the release (minutes on a
    # busy 2-core machine), past the default per-test timeout.
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(1200))


# ------------------------------------------------------------------------------ the tools


class Kubectl:
    """kubectl bound to the suite's kubeconfig."""

    def __init__(self, binary: str, kubeconfig: Path, cache_dir: Path) -> None:
        self.argv = [binary, f"--kubeconfig={kubeconfig}", f"--cache-dir={cache_dir}"]

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.argv, *args], input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}", pytrace=False
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str = NAMESPACE) -> Any:
        """One object, or None when it does not exist."""
        proc = self("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr:
                return None
            pytest.fail(f"kubectl get {kind} {name}: {proc.stderr}", pytrace=False)
        return json.loads(proc.stdout)

    def items(self, kind: str, *selectors: str, namespace: str | None = NAMESPACE) -> list[Any]:
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        items: list[Any] = self.json("get", kind, *scope, *selectors)["items"]
        return items

    def apply(self, *manifests: dict[str, Any], namespace: str = NAMESPACE) -> None:
        text = "\n---\n".join(json.dumps(m) for m in manifests)
        self("apply", "-n", namespace, "-f", "-", input=text)

    def secret(self, name: str, key: str, namespace: str = NAMESPACE) -> bytes:
        secret = self.get("secret", name, namespace)
        assert secret is not None, f"no Secret {name} in {namespace}"
        return base64.b64decode(secret["data"][key])


class Helm:
    def __init__(self, binary: str, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(
        self, *args: str, check: bool = True, timeout: float = WAIT + 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
                pytrace=False,
            )
        return proc


# ------------------------------------------------------------------------------ the cluster


@dataclass
class Target:
    """The cluster under test and what the suite knows about it beyond its kubeconfig."""

    name: str
    kubeconfig: Path
    kubectl: Kubectl
    helm: Helm
    values: Path
    # Addresses that listen (so that "blocked" means the policy, not a missing listener) and
    # that capture pods must never reach: on the node tier, the metadata address and a private
    # canary inside the node's network namespace.
    forbidden_listeners: dict[str, str] = field(default_factory=dict)


def _write_values(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Target:
    work = tmp_path_factory.mktemp("e2e")
    external = os.environ.get("KUBECONFIG")
    if external:
        kubectl, helm = shutil.which("kubectl"), shutil.which("helm")
        need(kubectl and helm, "KUBECONFIG is set: kubectl and helm must be on PATH")
        assert kubectl is not None and helm is not None
        values = os.environ.get("KUBESHOT_E2E_VALUES")
        return Target(
            f"the cluster of KUBECONFIG={external}",
            Path(external),
            Kubectl(kubectl, Path(external), work / "kubectl-cache"),
            Helm(helm, Path(external), work / "helm"),
            Path(values) if values else _write_values(work / "values.yaml", {}),
        )
    return _node_tier(request, work)


def _node_tier(request: pytest.FixtureRequest, work: Path) -> Target:
    need(os.geteuid() == 0, "without KUBECONFIG the suite runs on the node tier, which needs root")
    node = request.getfixturevalue("node")
    bin_dir: Path = request.getfixturevalue("testenv_bin_dir")
    # The operator image (the operator's and the gateway's), beside the capture image.
    built = subprocess.run(
        ["bash", str(ROOT / "testenv" / "image.sh"), "--operator"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, f"testenv/image.sh --operator failed:\n{built.stderr[-5000:]}"
    operator_archive, _capture = built.stdout.strip().splitlines()[-2:]
    node.import_images([Path(operator_archive)])
    kubeconfig = Path(node.control_plane.kubeconfig)
    # Both images carry the chart's default names (testenv/image.sh): a user of a cluster
    # without a registry sets only the pull policy.
    values = {
        "image": {"pullPolicy": "Never"},
        "operator": {"captureImage": {"pullPolicy": "Never"}},
    }
    forbidden = {
        "metadata": node.listen(nodes.METADATA_ADDRESS, 80),
        "canary": node.listen(nodes.PRIVATE_CANARY, 0),
    }
    request.addfinalizer(lambda: [sock.close() for sock in forbidden.values()])
    return Target(
        "the node tier (testenv/node.py)",
        kubeconfig,
        Kubectl(str(bin_dir / "kubectl"), kubeconfig, work / "kubectl-cache"),
        Helm(str(bin_dir / "helm"), kubeconfig, work / "helm"),
        _write_values(work / "values.yaml", values),
        {name: "{}:{}".format(*sock.getsockname()) for name, sock in forbidden.items()},
    )


@pytest.fixture(scope="session")
def kubectl(target: Target) -> Kubectl:
    _ran_on.append(target.name)
    return target.kubectl


_ran_on: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name in _ran_on:
        terminalreporter.write_line(f"e2e: ran on {name}")


@pytest.fixture(scope="session")
def helm(target: Target) -> Helm:
    return target.helm


# ------------------------------------------------------------------------------ the release


@dataclass
class Release:
    install: subprocess.CompletedProcess[str]
    uninstalled: bool = False


@pytest.fixture(scope="session")
def release(target: Target, kubectl: Kubectl, helm: Helm) -> Iterator[Release]:
    """`helm install --wait` into a namespace enforcing the restricted Pod Security Standard;
    at the end, whatever a failed test left is removed as users remove it."""
    kubectl.apply(namespace_manifest(NAMESPACE), namespace=NAMESPACE)
    install = helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", str(target.values),
        "--wait", "--timeout", f"{WAIT}s",
    )  # fmt: skip
    state = Release(install)
    yield state
    if not state.uninstalled:
        helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        kubectl("delete", "crd", *CRDS, "--ignore-not-found", check=False)
    kubectl("delete", "namespace", NAMESPACE, PAGES_NAMESPACE, "--ignore-not-found",
            "--wait=false", check=False)  # fmt: skip


def namespace_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": dict(RESTRICTED)},
    }


# ------------------------------------------------------------------------------ pages


@dataclass
class Pages:
    """Pages in the cluster that capture pods may reach once a policy opens them, and a private
    canary that nothing opens: both plain HTTP servers in pods (the capture image's Python)."""

    url: str  # the page (a Service name)
    cidrs: list[str]  # what a ScreenshotPolicy must allow for it: its Service and pod addresses
    port: int
    canary: str  # host:port of the canary pod

    def policy_network(self, network: dict[str, Any]) -> dict[str, Any]:
        """A ScreenshotPolicy's `network`, opened for the pages."""
        return {
            **network,
            "allowedCIDRs": [*network.get("allowedCIDRs", []), *self.cidrs],
            "allowedPorts": sorted({*network.get("allowedPorts", [80, 443]), self.port}),
        }


PAGE_HTML = """<!doctype html>
<html><head><title>kubeshot e2e</title></head>
<body style="margin:0;background:#f4efe6;font-family:sans-serif">
<h1 style="padding:24px;color:#20335c">kubeshot end to end</h1>
<p style="padding:0 24px">Served in the cluster, captured by a capture pod.</p>
</body></html>
"""


def _page_server(name: str, image: str, pull_policy: str) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "http",
                                "image": image,
                                "imagePullPolicy": pull_policy,
                                "command": [
                                    "python",
                                    "-m",
                                    "http.server",
                                    "8080",
                                    "--directory",
                                    "/pages",
                                ],
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True,
                                },
                                "volumeMounts": [{"name": "pages", "mountPath": "/pages"}],
                            }
                        ],
                        "volumes": [{"name": "pages", "configMap": {"name": "e2e-pages"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
        },
    ]


@pytest.fixture(scope="session")
def capture_image(release: Release, kubectl: Kubectl) -> tuple[str, str]:
    """The capture image and pull policy the operator runs capture pods with."""
    deployment = kubectl.get("deployment", f"{RELEASE}-operator")
    env = container_env(deployment)
    return env["KUBESHOT_OPERATOR_CAPTURE_IMAGE"], env["KUBESHOT_OPERATOR_IMAGE_PULL_POLICY"]


@pytest.fixture(scope="session")
def pages(kubectl: Kubectl, capture_image: tuple[str, str]) -> Pages:
    image, pull_policy = capture_image
    kubectl.apply(namespace_manifest(PAGES_NAMESPACE), namespace=PAGES_NAMESPACE)
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-pages"},
        "data": {"index.html": PAGE_HTML},
    }
    manifests = [config, *_page_server("e2e-pages", image, pull_policy),
                 *_page_server("e2e-canary", image, pull_policy)]  # fmt: skip
    kubectl.apply(*manifests, namespace=PAGES_NAMESPACE)
    for name in ("e2e-pages", "e2e-canary"):
        kubectl("rollout", "status", f"deployment/{name}", "-n", PAGES_NAMESPACE,
                f"--timeout={WAIT}s", timeout=WAIT + 30)  # fmt: skip

    def pod_ip(name: str) -> str:
        pods = kubectl.items("pods", "-l", f"app.kubernetes.io/name={name}",
                             namespace=PAGES_NAMESPACE)  # fmt: skip
        ips = [p["status"].get("podIP") for p in pods if p["status"].get("phase") == "Running"]
        assert len(ips) == 1 and ips[0], f"{name}: {ips}"
        return str(ips[0])

    service = kubectl.get("service", "e2e-pages", PAGES_NAMESPACE)
    host = f"e2e-pages.{PAGES_NAMESPACE}.svc.cluster.local"
    return Pages(
        url=f"http://{host}:8080/index.html",
        cidrs=[f"{service['spec']['clusterIP']}/32", f"{pod_ip('e2e-pages')}/32"],
        port=8080,
        canary=f"{pod_ip('e2e-canary')}:8080",
    )


# ------------------------------------------------------------------------------ examples/


def pointed_at(document: dict[str, Any], pages: Pages) -> dict[str, Any]:
    """An examples/ document, pointed at the pages this cluster can reach: CaptureJobs capture
    the in-cluster page instead of a public site, and the `default` policy opens it."""
    if document["kind"] == "CaptureJob" and "url" in document["spec"]:
        document["spec"]["url"] = pages.url
    if document["kind"] == "ScreenshotPolicy" and document["metadata"]["name"] == "default":
        network = document["spec"].get("network", {})
        document["spec"]["network"] = pages.policy_network(network)
    return document


@pytest.fixture(scope="session")
def examples(
    kubectl: Kubectl, pages: Pages, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """`kubectl apply -f examples/` in the release's namespace (as docs/helm.md shows), with
    every CaptureJob finished; returns the finished jobs."""
    folder = tmp_path_factory.mktemp("examples")
    names = []
    for source in sorted((ROOT / "examples").glob("*.yaml")):
        documents = [pointed_at(d, pages) for d in yaml.safe_load_all(source.read_text()) if d]
        names += [d["metadata"]["name"] for d in documents if d["kind"] == "CaptureJob"]
        (folder / source.name).write_text(yaml.safe_dump_all(documents))
    # Policies first, as a user would wait for them: a job whose policy is missing fails.
    kubectl("apply", "-n", NAMESPACE, "-f", str(folder / "screenshotpolicy.yaml"))
    kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", "screenshotpolicy", "--all",
            "--timeout=120s", timeout=150)  # fmt: skip
    kubectl("apply", "-n", NAMESPACE, "-f", str(folder))
    assert names, "examples/ has no CaptureJob"
    return [wait_finished(kubectl, name) for name in names]


# ------------------------------------------------------------------------------ the gateway


class Gateway:
    """The gateway Service through `kubectl port-forward`, over HTTPS with the chart's CA (of
    the suite's release unless another is named)."""

    def __init__(
        self, kubectl: Kubectl, work: Path, release: str = RELEASE, namespace: str = NAMESPACE
    ) -> None:
        self.kubectl = kubectl
        self.work = work
        self.release, self.namespace = release, namespace
        self.ca = work / "kubeshot-ca.crt"
        self.ca.write_bytes(kubectl.secret(f"{release}-gateway-tls", "ca.crt", namespace))
        self.token = kubectl.secret(f"{release}-auth", "token", namespace).decode()
        self.context = ssl.create_default_context(cafile=str(self.ca))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.connect()

    def connect(self) -> None:
        """(Re)start the port-forward: it follows one pod, so a restarted gateway needs a new
        one, as a user's `kubectl port-forward` would."""
        self.close()
        port = free_port()
        log = (self.work / "port-forward.log").open("ab")
        self.proc = subprocess.Popen(
            [
                *self.kubectl.argv,
                "port-forward",
                "-n",
                self.namespace,
                f"service/{self.release}-gateway",
                f"{port}:443",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"https://127.0.0.1:{port}"

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.work / "port-forward.log"
            ).read_text()
            with contextlib.suppress(OSError):
                return self.request("GET", "/healthz", token=False)[0] == 200
            return False

        wait_for(healthy, 60, "the gateway through kubectl port-forward", POLL)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def request(
        self, method: str, path: str, body: Any = None, *, token: bool = True, timeout: float = 200
    ) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as answer:
                return answer.status, dict(answer.headers), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def artifact(self, job: dict[str, Any]) -> bytes:
        """A finished CaptureJob's artifact, downloaded as a caller does."""
        url = job["status"]["result"].get("url") or (
            "/v1/captures/" + job["metadata"]["uid"].replace("-", "") + "/artifact"
        )
        status, _, body = self.request("GET", urllib.parse.urlsplit(url).path)
        assert status == 200, f"GET {url}: {status} {body[:300]!r}"
        return body


@pytest.fixture(scope="session")
def gateway(
    release: Release, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    served = Gateway(kubectl, tmp_path_factory.mktemp("gateway"))
    yield served
    served.close()


# ------------------------------------------------------------------------------ CaptureJobs


def job_phase(kubectl: Kubectl, name: str) -> str:
    job = kubectl.get("capturejob", name) or {}
    return str((job.get("status") or {}).get("phase") or "")


def wait_finished(kubectl: Kubectl, name: str, timeout: float = WAIT) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job = kubectl.get("capturejob", name)
        phase = ((job or {}).get("status") or {}).get("phase")
        return job if phase in {"Succeeded", "Failed"} else None

    job: dict[str, Any] = wait_for(finished, timeout, f"CaptureJob {name} to finish", POLL)
    return job


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    """The first container's environment: name -> value (or valueFrom)."""
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: {data[:32]!r}"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ------------------------------------------------------------------------------ diagnostics


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed e2e test carries the cluster's state: pods, jobs, events, the chart's logs."""
    report = yield
    if report.failed and call.when in {"setup", "call"}:
        kubectl = getattr(item, "funcargs", {}).get("kubectl")
        if isinstance(kubectl, Kubectl):
            # A test module with a release of its own names it (test_6_replicas).
            module = getattr(item, "module", None)
            namespace = getattr(module, "NAMESPACE", NAMESPACE)
            release = getattr(module, "RELEASE", RELEASE)
            report.sections.append(("cluster state", _diagnostics(kubectl, namespace, release)))
    return report


def _diagnostics(kubectl: Kubectl, namespace: str, release: str) -> str:
    commands = [
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "capturejobs,screenshotpolicies,networkpolicies,pvc", "-n", namespace),
        ("get", "events", "-n", namespace, "--sort-by=.lastTimestamp"),
        ("logs", "-n", namespace, f"deployment/{release}-operator", "--tail=80"),
        ("logs", "-n", namespace, "-l", "app.kubernetes.io/component=gateway", "--tail=80"),
    ]
    out = []
    for args in commands:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc = kubectl(*args, check=False, timeout=30)
            out.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    return "\n".join(out)

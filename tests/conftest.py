"""Shared test plumbing: tier markers by folder, `need()` for tier prerequisites, the
`chromium` fixture and `s3_server`, a real S3-compatible server (the rest is in tests/support.py).

With CI=true a missing prerequisite fails the tier instead of skipping it, so a green CI means
the tier really ran.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, listening, wait_for

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_TIERS = ("unit", "browser", "gateway", "cluster", "e2e")
_deselected_e2e: list[int] = []


def need(condition: object, reason: str) -> None:
    """Skip (or, in CI, fail) the current test when a tier prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary the engine, the gateway's workers and Playwright drive."""
    from kubeshot_capture.browser import chromium_executable

    path = chromium_executable()
    need(
        path, "Chromium not found: install Debian's chromium (make setup) or set KUBESHOT_CHROMIUM"
    )
    return str(path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in _TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        if parts[:2] == ("cluster", "node"):  # the node tier builds on the cluster tier
            item.add_marker(pytest.mark.node)
    # The node tier last: once its kubelet and scheduler run, pods run, and the rest of the
    # cluster tier (which plays the kubelet itself) must not share a session with them.
    items.sort(key=lambda item: item.get_closest_marker("node") is not None)


class _E2EAlone:
    """The e2e suite brings up a control plane and a node of its own (or takes KUBECONFIG's
    cluster) and installs the chart cluster-wide: it runs in a session of its own
    (`pytest -m e2e`), never beside the tiers that share their control plane. Runs after `-m`
    and `-k` have selected (trylast), on what is left."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        e2e = [item for item in items if item.get_closest_marker("e2e")]
        if e2e and len(e2e) < len(items):
            config.hook.pytest_deselected(items=e2e)
            items[:] = [item for item in items if not item.get_closest_marker("e2e")]
            _deselected_e2e.append(len(e2e))


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_E2EAlone(), "kubeshot-e2e-alone")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for count in _deselected_e2e:
        terminalreporter.write_line(
            f"e2e: {count} tests deselected; the suite runs in a session of its own: "
            "pytest -m e2e (make test runs it after the other tiers)"
        )


S3_ACCESS_KEY = "s3-test-access-key-0123"
S3_SECRET_KEY = "s3-test-secret-key-0123456789abcdef"
S3_BUCKET = "kubeshot-results"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key_file: Path
    secret_key_file: Path
    data: Path
    """The posix backend's directory: one directory per bucket, one file per object."""

    def store_env(self, prefix: str) -> dict[str, str]:
        """The environment of a gateway's (and the operator's) store in this server's bucket,
        under `prefix`, as the chart sets it."""
        return {
            "KUBESHOT_STORE": "s3",
            "KUBESHOT_S3_ENDPOINT": self.endpoint,
            "KUBESHOT_S3_BUCKET": self.bucket,
            "KUBESHOT_S3_PREFIX": prefix,
            "KUBESHOT_S3_ACCESS_KEY_ID_FILE": str(self.access_key_file),
            "KUBESHOT_S3_SECRET_ACCESS_KEY_FILE": str(self.secret_key_file),
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server, versitygw (testenv/s3, built by testenv/build.sh), on
    127.0.0.1: its posix backend in a temporary directory (metadata in sidecar files), root
    credentials from the environment, one bucket. Its credentials are files, as from a Secret."""
    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@contextlib.contextmanager
def run_s3_server(work: Path, host: str = "127.0.0.1") -> Iterator[S3Server]:
    """versitygw on `host` (a free port), its data under `work`, one bucket: see s3_server."""
    binary = subprocess.run(
        ["bash", str(ROOT / "testenv" / "build.sh"), "--print-s3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    need(os.access(binary, os.X_OK), f"no S3 server at {binary} (testenv/build.sh)")
    (work / "data").mkdir()
    (work / "meta").mkdir()
    (work / "access-key-id").write_text(S3_ACCESS_KEY)
    (work / "secret-access-key").write_text(S3_SECRET_KEY)
    port = free_port(host)
    env = {"ROOT_ACCESS_KEY_ID": S3_ACCESS_KEY, "ROOT_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    backend = ["posix", "--sidecar", str(work / "meta"), str(work / "data")]
    process = subprocess.Popen(
        [binary, "--port", f"{host}:{port}", "--quiet", *backend],
        env={"PATH": os.environ.get("PATH", ""), **env},
        stdout=(work / "s3.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: listening(port, host), 30, "versitygw to listen")
        server = S3Server(
            f"http://{host}:{port}",
            S3_BUCKET,
            work / "access-key-id",
            work / "secret-access-key",
            work / "data",
        )
        _create_bucket(server)
        yield server
    finally:
        process.terminate()
        process.wait(10)


def _create_bucket(server: S3Server) -> None:
    from botocore.session import get_session

    client = get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
    )
    client.create_bucket(Bucket=server.bucket)

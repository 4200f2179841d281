"""One version, from pyproject.toml through the package metadata: the CLI, kubeshot_build_info,
the operator's default capture image, the images testenv builds and the chart's appVersion."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib

import pytest
import yaml
from prometheus_client import generate_latest

import kubeshot
from kubeshot.cli import main
from kubeshot.gateway.metrics import Metrics
from kubeshot.operator.settings import CAPTURE_REPOSITORY, OperatorSettings
from tests.conftest import ROOT

PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_metadata_is_pyprojects_version() -> None:
    # An editable install keeps the metadata of its last `pip install`: reinstall after a bump.
    assert importlib.metadata.version("kubeshot") == PYPROJECT_VERSION, "run `make setup`"
    assert kubeshot.__version__ == PYPROJECT_VERSION


def test_kubeshot_version_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"kubeshot {PYPROJECT_VERSION}\n"
    # And as users run it: the console script's module.
    run = subprocess.run(
        [sys.executable, "-m", "kubeshot.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert run.stdout == f"kubeshot {PYPROJECT_VERSION}\n"


def test_build_info_carries_it() -> None:
    gateway = Metrics().exposition().decode()
    import kubeshot.operator.metrics  # noqa: F401 - the operator's metrics, in the default registry

    operator = generate_latest().decode()
    for text in (gateway, operator):
        (line,) = [x for x in text.splitlines() if x.startswith("kubeshot_build_info{")]
        assert f'version="{PYPROJECT_VERSION}"' in line
        assert line.endswith(" 1.0")


def test_the_default_capture_image_is_tagged_with_it() -> None:
    image = OperatorSettings.model_fields["capture_image"].default
    assert image == f"{CAPTURE_REPOSITORY}:{PYPROJECT_VERSION}"


def test_testenv_names_the_capture_image_as_the_operator_does() -> None:
    """testenv/image.sh's own capture_ref (its functions, run by bash) names the image the
    operator's default points at, so capture pods run the image the tests built."""
    script = ROOT / "testenv" / "image.sh"
    functions = subprocess.run(
        ["sed", "-n", "/^project_version() {/,/^}/p;/^capture_ref() {/,/^}/p", str(script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "project_version()" in functions and "capture_ref()" in functions
    run = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; die() {{ echo "$*" >&2; exit 1; }}\n{functions}\n'
         'capture_ref'],
        capture_output=True,
        text=True,
        timeout=30,
        env={"ROOT": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == OperatorSettings.model_fields["capture_image"].default


def test_the_charts_app_version_is_it() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "kubeshot" / "Chart.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT_VERSION, "run `make chart` (hack/chartgen.py)"

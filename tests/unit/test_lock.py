"""The lock: uv.lock resolves pyproject.toml's dependencies, and each requirements file that pip
installs (the virtualenv's, the capture image's, the operator image's) is what `make lock`
exports from it, so nothing installs an unpinned or stale dependency. Offline: uv checks the lock
against pyproject.toml and exports from the lock alone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from uv import find_uv_bin

from tests.conftest import ROOT

UV = find_uv_bin()
# `make lock`'s exports, as the Makefile runs them: `$(BIN)/uv export <args> -o <file>`.
EXPORTS = [
    shlex.split(args)
    for args in re.findall(r"^\t\$\(BIN\)/uv export (.+)$", (ROOT / "Makefile").read_text(), re.M)
]


def output_of(args: list[str]) -> str:
    return args[args.index("-o") + 1]


def uv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [UV, *args],
        cwd=ROOT,
        env={**os.environ, "UV_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_lock_exports_a_requirements_file_per_install() -> None:
    assert {output_of(args) for args in EXPORTS} == {
        "requirements-dev.txt",
        "capture-pod/requirements.txt",
        "operator/requirements.txt",
    }


def test_uv_lock_is_up_to_date_with_pyproject() -> None:
    checked = uv("lock", "--check")
    assert checked.returncode == 0, (
        f"pyproject.toml's dependencies changed without `make lock`:\n{checked.stderr}"
    )


@pytest.mark.parametrize("args", EXPORTS, ids=output_of)
def test_each_requirements_file_is_its_export_of_uv_lock(args: list[str], tmp_path: Path) -> None:
    assert "--frozen" in args  # from the lock as it is, never a new resolution
    checked_in = output_of(args)
    exported = tmp_path / "requirements.txt"
    run = uv("export", *[str(exported) if arg == checked_in else arg for arg in args])
    assert run.returncode == 0, run.stderr
    assert (
        exported.read_text().replace(str(exported), checked_in) == (ROOT / checked_in).read_text()
    ), f"{checked_in} is not uv.lock's export: run `make lock`"


@pytest.mark.parametrize("args", EXPORTS, ids=output_of)
def test_each_requirements_file_is_installed_with_its_hashes(args: list[str]) -> None:
    # `make setup` installs the virtualenv's, each image's Dockerfile its own.
    consumers = [ROOT / "Makefile", ROOT / "capture-pod/Dockerfile", ROOT / "operator/Dockerfile"]
    install = f"--require-hashes -r {output_of(args)}"
    assert any(install in consumer.read_text() for consumer in consumers)

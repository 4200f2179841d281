"""Shared test plumbing: tier markers by folder, `need()` for tier prerequisites and the
`chromium` fixture (the rest is in tests/support.py).

With CI=true a missing prerequisite fails the tier instead of skipping it, so a green CI means
the tier really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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

"""Shared test plumbing: tier markers by folder, and `need()` for tier prerequisites.

With CI=true a missing prerequisite fails the tier instead of skipping it, so a green CI means
the tier really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_TIERS = ("unit", "browser", "gateway", "cluster")


def need(condition: object, reason: str) -> None:
    """Skip (or, in CI, fail) the current test when a tier prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


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

"""The checked-in CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeshot.api import CROSS_FIELD_RULES
from kubeshot.cli.crds import rendered

CRDS = Path(__file__).resolve().parents[2] / "crds"


def test_checked_in_crds_match_the_models() -> None:
    expected = rendered()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CRDS.glob("*.yaml")}
    assert sorted(on_disk) == sorted(expected), "run `make crds`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} drifted from kubeshot.api: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)] if isinstance(node, dict) else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk(value, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("name", sorted(rendered()))
def test_schemas_are_structural(name: str) -> None:
    doc = yaml.safe_load(rendered()[name])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node, path
        assert "default" not in node, f"{path}: defaults belong to the models"
        if "properties" in node:
            assert node.get("type") == "object", path
            assert node.get("description"), f"{path} lacks a description (kubectl explain)"


def test_cel_rules_come_from_the_model() -> None:
    doc = yaml.safe_load(rendered()["kubeshot.dev_capturejobs.yaml"])
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = spec["x-kubernetes-validations"]
    assert [r["rule"] for r in rules[:-1]] == [r.cel for r in CROSS_FIELD_RULES]
    assert [r["message"] for r in rules[:-1]] == [r.message for r in CROSS_FIELD_RULES]
    assert rules[-1]["rule"] == "self == oldSelf"


def test_yaml_1_1_booleans_are_quoted_for_go_yaml() -> None:
    # go-yaml (kubectl, helm) reads an unquoted `y` as true: `clip.required: [x, y]` broke the CRD.
    from kubeshot.cli.crds import render

    text = render({"required": ["x", "y", "n", "on", "off", "width"]})
    for word in ("y", "n", "on", "off"):
        assert f'- "{word}"' in text
    assert "- x\n" in text and "- width\n" in text

"""The example manifests under examples/ are valid against the models (the CRDs' source)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeshot.api import CaptureJobSpec, ScreenshotPolicySpec
from kubeshot.api.admission import admit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def documents(name: str) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def test_example_policies_and_jobs_are_valid_and_admitted() -> None:
    policies = {
        d["metadata"]["name"]: ScreenshotPolicySpec.model_validate(d["spec"])  # type: ignore[index]
        for d in documents("screenshotpolicy.yaml")
    }
    jobs = documents("capturejob.yaml")
    assert jobs
    for document in jobs:
        spec = CaptureJobSpec.model_validate(document["spec"])
        admit(spec.capture_options(), policies[spec.policy_ref or "default"])


@pytest.mark.parametrize("name", ["screenshotpolicy.yaml", "capturejob.yaml"])
def test_examples_name_their_kind(name: str) -> None:
    for document in documents(name):
        assert document["apiVersion"] == "kubeshot.dev/v1alpha1"

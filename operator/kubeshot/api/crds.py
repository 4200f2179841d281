"""CustomResourceDefinitions generated from the models: the CRD can never disagree with the code.

The checked-in files under crds/ are the output of `kubeshot crds --write crds/`; a unit test
fails when they drift from what this module generates.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

from kubeshot.api.capture import CROSS_FIELD_RULES
from kubeshot.api.job import CaptureJobSpec, CaptureJobStatus
from kubeshot.api.policy import ScreenshotPolicySpec, ScreenshotPolicyStatus

GROUP = "kubeshot.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Schema = dict[str, Any]
# JSON Schema keywords a structural CRD schema cannot carry; allOf holds the cross-field rules,
# which the CRD carries as CEL.
_DROP = {"title", "default", "additionalProperties", "writeOnly", "readOnly", "examples", "allOf"}


def crd_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema made structural: $refs inlined, optionals unwrapped.

    Defaults stay in the models (applied when a spec is used) and are named in the descriptions,
    so that the API server stores exactly what the user wrote.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} in a CRD")
        merged = {**options[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        return _structural(merged, defs)
    out: Schema = {}
    description = node.get("description", "").strip()
    default = node.get("default")
    if default not in (None, [], {}) and not isinstance(default, dict):
        text = json.dumps(default) if not isinstance(default, str) else default
        description = f"{description} Default: {text}.".strip()
    if description:
        out["description"] = " ".join(description.split())
    for key, value in node.items():
        if key in _DROP or key == "description":
            continue
        if key == "properties":
            out["properties"] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = _structural(value, defs)
        else:
            out[key] = copy.deepcopy(value)
    if node.get("type") == "object" and "properties" not in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _structural(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "number" and "format" not in out:
        out["format"] = "double"
    return out


def _top_level(spec: Schema, status: Schema, description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    schema: Schema,
    columns: list[Schema],
) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "kubeshot",
                "app.kubernetes.io/part-of": "kubeshot",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["kubeshot"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def capturejob_crd() -> Schema:
    spec = crd_schema(CaptureJobSpec)
    spec["x-kubernetes-validations"] = [
        {"rule": rule.cel, "message": rule.message} for rule in CROSS_FIELD_RULES
    ] + [
        # A capture is a request, not a desired state: once admitted, editing it would make the
        # job's status describe something else. Create a new CaptureJob instead.
        {"rule": "self == oldSelf", "message": "spec is immutable; create a new CaptureJob"}
    ]
    schema = _top_level(
        spec,
        crd_schema(CaptureJobStatus),
        "A capture of a web page, run in a short-lived, locked-down pod under a ScreenshotPolicy.",
    )
    return _crd(
        kind="CaptureJob",
        plural="capturejobs",
        # Not "cj": kubectl resolves that to the built-in CronJobs (found by tests/e2e).
        short_names=["cjob"],
        schema=schema,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "URL", "type": "string", "jsonPath": ".spec.url"},
            {"name": "Format", "type": "string", "jsonPath": ".spec.format"},
            {"name": "Size", "type": "integer", "jsonPath": ".status.result.bytes"},
            {
                "name": "Reason",
                "type": "string",
                "jsonPath": ".status.failure.reason",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def screenshotpolicy_crd() -> Schema:
    schema = _top_level(
        crd_schema(ScreenshotPolicySpec),
        crd_schema(ScreenshotPolicyStatus),
        "What the capture pods of this policy may do: network, limits, features, runtime.",
    )
    return _crd(
        kind="ScreenshotPolicy",
        plural="screenshotpolicies",
        short_names=["shotpolicy"],
        schema=schema,
        columns=[
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Active", "type": "integer", "jsonPath": ".status.activeJobs"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def all_crds() -> dict[str, Schema]:
    """File name → CRD document."""
    return {
        f"{GROUP}_capturejobs.yaml": capturejob_crd(),
        f"{GROUP}_screenshotpolicies.yaml": screenshotpolicy_crd(),
    }

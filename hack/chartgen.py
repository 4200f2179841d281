#!/usr/bin/env python3
"""Generate the chart's values.schema.json and docs/helm.md's values reference from values.yaml.

Chart.yaml's appVersion is written too, from pyproject.toml's version: the one source of the
release's version (the CLI, the images and kubeshot_build_info read it from the package metadata).

values.yaml is the one source: each value's prose comment becomes its schema `description` and its
entry in docs/helm.md (between the `values:begin` and `values:end` markers; the rest of that file
is prose). The types and bounds are below; `defaultPolicy.spec` is the ScreenshotPolicy CRD's own
spec schema (crds/), closed with `additionalProperties: false` so typos fail at install.

    python hack/chartgen.py          # write both files
    python hack/chartgen.py --check  # exit 1 when either is out of date (the chart tests run this)
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "kubeshot"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
DOCS = ROOT / "docs" / "helm.md"
CHART_YAML = CHART / "Chart.yaml"
PYPROJECT = ROOT / "pyproject.toml"
_APP_VERSION = re.compile(r"^appVersion:.*$", re.MULTILINE)
POLICY_CRD = ROOT / "crds" / "kubeshot.dev_screenshotpolicies.yaml"
BEGIN = "<!-- values:begin -->"
END = "<!-- values:end -->"

Schema = dict[str, Any]

# --- value comments ------------------------------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9]*):(?P<rest>.*)$")


def value_comments(text: str) -> dict[str, str]:
    """`a.b.c` → the prose comment block above that key (blank lines end a block)."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped[1:].removeprefix(" "))
            continue
        match = _KEY.match(line)
        if match is None:  # a list item or a continuation of a value
            block = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match["key"]])
        comments[path] = "\n".join(block).strip()
        stack.append((indent, match["key"]))
        block = []
    return comments


def _prose(comment: str) -> str:
    """The comment's prose, without its indented `For example:` YAML snippet."""
    lines = []
    for line in comment.splitlines():
        if line.startswith("  "):
            continue
        lines.append(line)
    return " ".join(lines).strip()


# --- schema --------------------------------------------------------------------------------------


def obj(properties: dict[str, Schema], **extra: Any) -> Schema:
    return {"type": "object", "additionalProperties": False, "properties": properties, **extra}


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def integer(minimum: int | None = None, maximum: int | None = None) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


BOOL: Schema = {"type": "boolean"}
PORT = integer(1, 65535)
DNS_LABEL = string(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
K8S_NAME = string(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
OPTIONAL_NAME = {"oneOf": [string(maxLength=0), K8S_NAME]}
STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
# Kubernetes objects passed through as they are (the API server validates them).
K8S_OBJECT: Schema = {"type": "object"}
K8S_LIST: Schema = {"type": "array", "items": {"type": "object"}}
RATE = string(pattern=r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day|month|year)s?\s*$")
FRACTION: Schema = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
INT_OR_PERCENT = {"oneOf": [integer(0), string(pattern=r"^\d+%$")]}
PDB = obj(
    {
        "enabled": BOOL,
        "maxUnavailable": INT_OR_PERCENT,
        "minAvailable": {"oneOf": [integer(0), string(pattern=r"^(\d+%?)?$")]},
    }
)
SERVICE_ACCOUNT = obj({"create": BOOL, "name": OPTIONAL_NAME, "annotations": STRING_MAP})
RESOURCES = obj(
    {
        "requests": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "limits": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "claims": K8S_LIST,
    }
)


def _when(condition: dict[str, Schema], then: dict[str, Schema]) -> Schema:
    """JSON Schema's if/then: when these properties match `condition`, they must match `then`."""
    required = sorted(condition)
    return {
        "if": {"properties": condition, "required": required},
        "then": {"properties": then, "required": sorted(then)},
    }


MORE_THAN_ONE_REPLICA = [
    {"replicaCount": {"minimum": 2}},
    {
        "autoscaling": {
            "properties": {"enabled": {"const": True}, "maxReplicas": {"minimum": 2}},
            "required": ["enabled", "maxReplicas"],
        }
    },
    {
        "keda": {
            "properties": {"enabled": {"const": True}, "maxReplicaCount": {"minimum": 2}},
            "required": ["enabled", "maxReplicaCount"],
        }
    },
]
SHARED_STATE: dict[str, Schema] = {
    "store": {"properties": {"type": {"const": "s3"}}, "required": ["type"]},
    "redis": {"properties": {"enabled": {"const": True}}, "required": ["enabled"]},
}


def image(digest: bool = True) -> Schema:
    return obj(
        {
            "registry": string(pattern=r"^([a-zA-Z0-9.-]+(:\d+)?)?$"),
            "repository": string(minLength=1, pattern=r"^[a-z0-9]+([._/-][a-z0-9]+)*$"),
            "tag": string(pattern=r"^([\w][\w.-]{0,127})?$"),
            "digest": string(pattern=r"^(sha256:[0-9a-f]{64})?$"),
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        required=["repository"],
    )


def pod_placement() -> dict[str, Schema]:
    return {
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "nodeSelector": STRING_MAP,
        "tolerations": K8S_LIST,
        "affinity": K8S_OBJECT,
        "topologySpreadConstraints": K8S_LIST,
        "priorityClassName": string(),
    }


def env_list() -> Schema:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": string(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")},
        },
    }


def closed(schema: Any) -> Any:
    """A copy of a CRD schema in which every object with properties rejects unknown keys."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if "properties" in schema and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def policy_spec_schema() -> Schema:
    crd = yaml.safe_load(POLICY_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    spec = copy.deepcopy(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    spec.pop("description", None)
    return dict(closed(spec))


def schema_body() -> Schema:
    namespaces = {"type": "array", "items": DNS_LABEL, "uniqueItems": True}
    return obj(
        {
            "nameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?)?$"),
            "fullnameOverride": string(pattern=r"^([a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?)?$"),
            "commonLabels": STRING_MAP,
            "imagePullSecrets": {
                "type": "array",
                "items": obj({"name": K8S_NAME}, required=["name"]),
            },
            "image": image(),
            "auth": obj(
                {
                    "existingSecret": OPTIONAL_NAME,
                    "tokenKey": string(pattern=r"^[-._a-zA-Z0-9]+$"),
                    "signingSecretKey": string(pattern=r"^[-._a-zA-Z0-9]+$"),
                    "tokensSecret": OPTIONAL_NAME,
                }
            ),
            "operator": obj(
                {
                    "enabled": BOOL,
                    "replicaCount": integer(0, 10),
                    "watchNamespaces": namespaces,
                    "verbose": BOOL,
                    "resyncSeconds": {"type": "number", "exclusiveMinimum": 0},
                    "leaseDurationSeconds": {"type": "number", "minimum": 1},
                    "metricsPort": PORT,
                    "assignmentPort": PORT,
                    "captureImage": image(),
                    "dns": obj({"namespace": DNS_LABEL, "podLabels": STRING_MAP}),
                    "extraEnv": env_list(),
                    "resources": RESOURCES,
                    "serviceAccount": SERVICE_ACCOUNT,
                    "podDisruptionBudget": PDB,
                    **pod_placement(),
                }
            ),
            "gateway": obj(
                {
                    "enabled": BOOL,
                    "replicaCount": integer(0, 100),
                    "backend": {"enum": ["kubernetes", "local"]},
                    "watchNamespaces": namespaces,
                    "port": PORT,
                    "uploadPort": PORT,
                    "metricsPort": PORT,
                    "httpsOnly": BOOL,
                    "trustedProxies": {
                        "type": "array",
                        "items": string(pattern=r"^[0-9a-fA-F:.]+/\d{1,3}$"),
                    },
                    "rateLimit": obj(
                        {"enabled": BOOL, "capture": RATE, "signed": RATE, "read": RATE}
                    ),
                    "signedUrlMaxTTL": integer(1),
                    "resultTTLSeconds": integer(1),
                    "extraEnv": env_list(),
                    "tls": obj(
                        {
                            "enabled": BOOL,
                            "secretName": OPTIONAL_NAME,
                            "certManager": obj(
                                {
                                    "enabled": BOOL,
                                    "issuerRef": obj(
                                        {
                                            "name": string(),
                                            "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                                            "group": string(minLength=1),
                                        }
                                    ),
                                    "extraDnsNames": {"type": "array", "items": string()},
                                    "duration": string(pattern=r"^(\d+(h|m|s))+$"),
                                    "renewBefore": string(pattern=r"^(\d+(h|m|s))+$"),
                                }
                            ),
                        }
                    ),
                    "service": obj(
                        {
                            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                            "port": {"oneOf": [PORT, string(maxLength=0)]},
                            "annotations": STRING_MAP,
                        }
                    ),
                    "ingress": obj(
                        {
                            "enabled": BOOL,
                            "className": string(),
                            "annotations": STRING_MAP,
                            "host": string(pattern=r"^([a-z0-9*]([-a-z0-9.]*[a-z0-9])?)?$"),
                            "tls": obj(
                                {
                                    "enabled": BOOL,
                                    "secretName": OPTIONAL_NAME,
                                    "clusterIssuer": string(),
                                }
                            ),
                        }
                    ),
                    "store": obj(
                        {
                            "type": {"enum": ["filesystem", "s3"]},
                            "download": {"enum": ["gateway", "presigned"]},
                            "s3": obj(
                                {
                                    "endpoint": string(pattern=r"^(https?://[^\s]+)?$"),
                                    "bucket": string(
                                        pattern=r"^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$"
                                    ),
                                    "prefix": string(),
                                    "region": string(minLength=1),
                                    "credentialsSecret": OPTIONAL_NAME,
                                    "peers": K8S_LIST,
                                }
                            ),
                        },
                        allOf=[
                            _when(
                                {"type": {"const": "s3"}},
                                {"s3": {"properties": {"bucket": string(minLength=3)}}},
                            ),
                            _when({"download": {"const": "presigned"}}, {"type": {"const": "s3"}}),
                        ],
                    ),
                    "redis": obj(
                        {
                            "enabled": BOOL,
                            "urlSecret": OPTIONAL_NAME,
                            "urlSecretKey": string(minLength=1),
                            "port": PORT,
                            "peers": K8S_LIST,
                        },
                        allOf=[
                            _when({"enabled": {"const": True}}, {"urlSecret": string(minLength=1)})
                        ],
                    ),
                    "persistence": obj(
                        {
                            "enabled": BOOL,
                            "existingClaim": OPTIONAL_NAME,
                            "storageClassName": string(),
                            "accessModes": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "enum": [
                                        "ReadWriteOnce",
                                        "ReadWriteMany",
                                        "ReadWriteOncePod",
                                    ]
                                },
                            },
                            "size": string(pattern=r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$"),
                            "keep": BOOL,
                        }
                    ),
                    "resources": RESOURCES,
                    "serviceAccount": SERVICE_ACCOUNT,
                    "podDisruptionBudget": PDB,
                    **pod_placement(),
                    "autoscaling": obj(
                        {
                            "enabled": BOOL,
                            "minReplicas": integer(1, 100),
                            "maxReplicas": integer(1, 100),
                            "targetCPUUtilizationPercentage": integer(1, 1000),
                            "queueDepthPerPod": integer(0, 10000),
                        }
                    ),
                    "keda": obj(
                        {
                            "enabled": BOOL,
                            # 0 would stop every gateway: nothing would report a queue to wake on
                            "minReplicaCount": integer(1, 100),
                            "maxReplicaCount": integer(1, 100),
                            "serverAddress": string(pattern=r"^(https?://[^\s]+)?$"),
                            "queueDepthThreshold": integer(1, 10000),
                            "pollingInterval": integer(1, 3600),
                            "cooldownPeriod": integer(0, 86400),
                        }
                    ),
                },
                # More than one replica (by replicaCount, the HPA or KEDA) shares its state: the
                # store must be S3 and Redis configured.
                allOf=[_when(more, SHARED_STATE) for more in MORE_THAN_ONE_REPLICA],
            ),
            "networkPolicy": obj(
                {
                    "enabled": BOOL,
                    "apiServerCIDRs": {
                        "type": "array",
                        "items": string(pattern=r"^[0-9a-fA-F:.]+/\d{1,3}$"),
                    },
                    "apiServerPorts": {"type": "array", "items": PORT},
                    "gatewayIngressFrom": K8S_LIST,
                    "metricsFrom": K8S_LIST,
                }
            ),
            "defaultPolicy": obj(
                {"enabled": BOOL, "namespaces": namespaces, "spec": policy_spec_schema()}
            ),
            "metrics": obj(
                {
                    "prometheusRule": obj(
                        {
                            "enabled": BOOL,
                            "labels": STRING_MAP,
                            "runbookBaseUrl": string(pattern=r"^https?://[^\s#]+$"),
                            "errorRatio": FRACTION,
                            "queueSaturation": FRACTION,
                            "jobWaitSeconds": integer(1, 86400),
                            "leaderlessFor": string(pattern=r"^(\d+(s|m|h))+$"),
                        }
                    ),
                    "grafanaDashboard": obj(
                        {
                            "enabled": BOOL,
                            "namespace": {"oneOf": [string(maxLength=0), DNS_LABEL]},
                            "labels": STRING_MAP,
                            "annotations": STRING_MAP,
                        }
                    ),
                }
            ),
            "serviceMonitor": obj(
                {
                    "enabled": BOOL,
                    "interval": string(pattern=r"^(\d+(ms|s|m|h))+$"),
                    "scrapeTimeout": string(pattern=r"^(\d+(ms|s|m|h))+$"),
                    "labels": STRING_MAP,
                }
            ),
            "telemetry": obj(
                {
                    "logFormat": string(enum=["json", "text"]),
                    "otlpEndpoint": string(maxLength=2048, pattern=r"^(https?://[^\s]+)?$"),
                    "collectorPeers": K8S_LIST,
                }
            ),
        }
    )


def _describe(schema: Schema, comments: dict[str, str], prefix: str = "") -> None:
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        if comments.get(path):
            sub["description"] = _prose(comments[path])
        if prefix.startswith("defaultPolicy.spec") or path == "defaultPolicy.spec":
            continue  # the CRD's own descriptions
        _describe(sub, comments, f"{path}.")


def build_schema(values_text: str) -> Schema:
    schema: Schema = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "kubeshot chart values",
        "description": "Generated by hack/chartgen.py from values.yaml and crds/. Do not edit.",
        **schema_body(),
    }
    _describe(schema, value_comments(values_text))
    return schema


# --- docs ----------------------------------------------------------------------------------------


def _leaves(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, default) of every documented value: mappings are descended unless empty."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _OPAQUE:
            out.append((path, _SECTION))
            out.extend(_leaves(value, f"{path}."))
        else:
            out.append((path, value))
    return out


_SECTION = object()
# Maps whose keys are data, not settings (documented as one value).
_OPAQUE = {
    "operator.resources",
    "gateway.resources",
    "operator.dns.podLabels",
    "defaultPolicy.spec",
    "metrics.grafanaDashboard.labels",
}


def _default(value: Any) -> str:
    text = json.dumps(value)
    return f"`{text}`"


def build_docs(values_text: str) -> str:
    comments = value_comments(values_text)
    values = yaml.safe_load(values_text)
    lines = [
        BEGIN,
        "<!-- Generated by `python hack/chartgen.py` from the comments in",
        "     charts/kubeshot/values.yaml; edit those. A chart test fails when this is stale. -->",
        "",
    ]
    for path, default in _leaves(values):
        comment = comments.get(path, "")
        depth = path.count(".")
        if default is _SECTION:
            level = "#" * min(3 + depth, 5)
            lines += [f"{level} `{path}`", "", comment, ""]
            continue
        lines += [f"{'#' * min(4 + depth, 6)} `{path}`", "", f"Default: {_default(default)}", ""]
        prose, example = [], []
        for line in comment.splitlines():
            (example if line.startswith("  ") else prose).append(line)
        lines.append(" ".join(prose).strip())
        lines.append("")
        if example:
            lines += ["```yaml", *[e[2:] for e in example], "```", ""]
    lines += [END]
    return "\n".join(lines)


def with_values_reference(document: str, reference: str) -> str:
    """docs/helm.md with the block between the markers replaced (appended when missing)."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        return head + reference + tail
    return document.rstrip() + "\n\n## Values\n\n" + reference + "\n"


def undocumented(values_text: str) -> list[str]:
    """Values (sections included) without a comment above them."""
    comments = value_comments(values_text)
    values = yaml.safe_load(values_text)
    return [path for path, _ in _leaves(values) if not comments.get(path)]


def project_version() -> str:
    """pyproject.toml's version: the release the chart's images default to."""
    return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])


def with_app_version(chart_yaml: str, version: str) -> str:
    """Chart.yaml with `appVersion` set to `version` (the line must exist)."""
    if not _APP_VERSION.search(chart_yaml):
        raise ValueError("charts/kubeshot/Chart.yaml has no appVersion line")
    return _APP_VERSION.sub(f'appVersion: "{version}"', chart_yaml, count=1)


def outputs() -> dict[Path, str]:
    text = VALUES.read_text()
    return {
        CHART_YAML: with_app_version(CHART_YAML.read_text(), project_version()),
        SCHEMA: json.dumps(build_schema(text), indent=2) + "\n",
        DOCS: with_values_reference(DOCS.read_text() if DOCS.exists() else "", build_docs(text)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a file is out of date")
    args = parser.parse_args(argv)
    missing = undocumented(VALUES.read_text())
    if missing:
        print(f"values without a comment: {', '.join(missing)}", file=sys.stderr)
        return 1
    stale = []
    for path, text in outputs().items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run python hack/chartgen.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

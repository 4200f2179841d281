"""The Kubernetes vocabulary of kubeshot, shared by the operator and the gateway: API paths,
label and annotation keys, object names, and how a CaptureJob's phase, policy, format and
result-store id are read from its body."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from kubeshot.api import CaptureOptions, Format, Phase
from kubeshot.api.crds import API_VERSION, GROUP
from kubeshot.kube import resource_path

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
APP = "kubeshot"
CAPTURE_COMPONENT = "capture"
MANAGER = "kubeshot-operator"
GATEWAY = "kubeshot-gateway"

# Job names may be 253 characters long, label values only 63: pods find their job by its uid.
JOB_UID = f"{GROUP}/job-uid"
POLICY = f"{GROUP}/policy"
ATTEMPT = f"{GROUP}/attempt"
CALLER = f"{GROUP}/caller"
JOB_NAME_ANNOTATION = f"{GROUP}/job"
# A warm capture pod (made ahead of its job, docs/operator.md "Warm capture pods"), and the hash
# of the pod template it was built from (a pod of an older template is never claimed).
WARM = f"{GROUP}/warm"
WARM_TEMPLATE = f"{GROUP}/warm-template"

# The policy of a CaptureJob without policyRef (and of a request that names none).
DEFAULT_POLICY = "default"
_DEFAULT_FORMAT: Format = CaptureOptions.model_fields["format"].default

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _fits(text: str) -> bool:
    return len(text) <= 63 and _LABEL_VALUE.match(text) is not None


def label_value(text: str) -> str:
    """A valid label value standing for text: text itself when it fits, else a hashed prefix."""
    if _fits(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    prefix = re.sub(r"[^A-Za-z0-9]+$", "", text[:50])
    return f"{prefix}-{digest}" if prefix else digest


def caller_label(caller: str) -> str:
    """The `kubeshot.dev/caller` label of a caller's jobs: its token's name, or a hash of it
    when the name is no valid label value (jobs are found by it: never to change)."""
    return caller if caller and _fits(caller) else hashlib.sha256(caller.encode()).hexdigest()[:32]


def dns_name(*parts: str, limit: int = 253) -> str:
    """parts joined by dashes; shortened with a hash when longer than limit."""
    text = "-".join(parts)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11].rstrip('-.')}-{digest}"


# What selects the capture pods of every policy (the operator's pod watch and sweep).
CAPTURE_PODS = {COMPONENT: CAPTURE_COMPONENT, MANAGED_BY: MANAGER}


def capture_labels(policy: str) -> dict[str, str]:
    """Labels every capture pod of a policy carries (its NetworkPolicy selects on them)."""
    return {NAME: APP, **CAPTURE_PODS, POLICY: label_value(policy)}


def jobs_path(namespace: str, name: str | None = None) -> str:
    return resource_path(API_VERSION, "capturejobs", namespace, name)


def policies_path(namespace: str, name: str | None = None) -> str:
    return resource_path(API_VERSION, "screenshotpolicies", namespace, name)


def network_policies_path(namespace: str, name: str | None = None) -> str:
    return resource_path("networking.k8s.io/v1", "networkpolicies", namespace, name)


def job_phase(job: Mapping[str, Any]) -> Phase:
    """The phase a CaptureJob's status says; Pending when it says none (or no known one)."""
    try:
        return Phase((job.get("status") or {}).get("phase") or Phase.PENDING)
    except ValueError:
        return Phase.PENDING


def job_policy(job: Mapping[str, Any]) -> str:
    """The name of the ScreenshotPolicy a CaptureJob runs under."""
    return str((job.get("spec") or {}).get("policyRef") or DEFAULT_POLICY)


def job_format(job: Mapping[str, Any]) -> Format | None:
    """The format the job asked for (None for one no caller could have asked for): it, not what
    the pod reports, says what the artifact is and how it is served."""
    try:
        return Format((job.get("spec") or {}).get("format") or _DEFAULT_FORMAT)
    except ValueError:
        return None


def store_id(job: Mapping[str, Any]) -> str:
    """Where a job's artifact is kept in the result store: its uid, as 32 hex digits."""
    return str(job["metadata"]["uid"]).replace("-", "")


def opted_in(secret: Mapping[str, Any] | None, label: str) -> bool:
    """Whether a Secret lets kubeshot use it: it carries `label` with the value "true" (a
    Secret that is missing and one that has not opted in are alike to every caller)."""
    labels = ((secret or {}).get("metadata") or {}).get("labels") or {}
    return labels.get(label) == "true"


def secret_text(secret: Mapping[str, Any], key: str) -> str | None:
    """The text under `key` of a Secret's data as the API server answers it; None when absent.
    ValueError when it is not base64 of UTF-8 text (a Secret is its namespace's to write)."""
    data = secret.get("data") or {}
    if key not in data:
        return None
    return base64.b64decode(str(data[key]), validate=True).decode("utf-8")

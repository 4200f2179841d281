"""Label and annotation keys the operator puts on what it creates, and how values are made safe."""

from __future__ import annotations

import hashlib
import re

GROUP = "kubeshot.dev"

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
APP = "kubeshot"
CAPTURE_COMPONENT = "capture"
MANAGER = "kubeshot-operator"

# Job names may be 253 characters long, label values only 63: pods find their job by its uid.
JOB_UID = f"{GROUP}/job-uid"
POLICY = f"{GROUP}/policy"
ATTEMPT = f"{GROUP}/attempt"
JOB_NAME_ANNOTATION = f"{GROUP}/job"

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """A valid label value standing for text: text itself when it fits, else a hashed prefix."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    prefix = re.sub(r"[^A-Za-z0-9]+$", "", text[:50])
    return f"{prefix}-{digest}" if prefix else digest


def dns_name(*parts: str, limit: int = 253) -> str:
    """parts joined by dashes; shortened with a hash when longer than limit."""
    text = "-".join(parts)
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"{text[: limit - 11].rstrip('-.')}-{digest}"


def capture_labels(policy: str) -> dict[str, str]:
    """Labels every capture pod of a policy carries (its NetworkPolicy selects on them)."""
    return {
        NAME: APP,
        COMPONENT: CAPTURE_COMPONENT,
        MANAGED_BY: MANAGER,
        POLICY: label_value(policy),
    }

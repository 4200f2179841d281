"""The operator's view of a CaptureJob: what Kopf's index keeps of it between events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from kubeshot.api import CaptureJobStatus, Phase
from kubeshot.api.crds import API_VERSION
from kubeshot.kube import names
from kubeshot.tracing import REQUEST_ID_ANNOTATION, TRACEPARENT_ANNOTATION

PolicyKey = tuple[str, str]  # (namespace, policy name)


@dataclass(frozen=True)
class JobView:
    """What the operator keeps of a CaptureJob between events."""

    namespace: str
    name: str
    uid: str
    policy: str
    created: str
    generation: int | None
    version: str = ""
    """The resourceVersion seen: the Running write's compare-and-swap starts from it."""
    status: CaptureJobStatus = field(default_factory=CaptureJobStatus, repr=False)
    """Compared: Kopf's index keeps a job's old view while the new one compares equal."""
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Those the operator reads: the gateway's traceparent and request id (tracing, logs)."""

    @property
    def key(self) -> PolicyKey:
        return (self.namespace, self.policy)

    @property
    def order(self) -> tuple[str, str]:
        """First come, first served: creation time, then name (for jobs of the same second)."""
        return (self.created, self.name)

    @property
    def phase(self) -> Phase:
        return self.status.phase

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobView:
        meta = body.get("metadata", {})
        try:
            status = CaptureJobStatus.model_validate(body.get("status") or {})
        except ValidationError:  # never as the operator wrote it: its phase, if any, alone
            status = CaptureJobStatus(phase=names.job_phase(body))
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            policy=names.job_policy(body),
            created=str(meta.get("creationTimestamp", "")),
            generation=meta.get("generation"),
            version=str(meta.get("resourceVersion") or ""),
            status=status,
            spec=dict(body.get("spec") or {}),
            annotations={
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k in (TRACEPARENT_ANNOTATION, REQUEST_ID_ANNOTATION) and isinstance(v, str)
            },
        )

    def body(self) -> dict[str, Any]:
        """Enough of the job's body to name it (in Events) and to rebuild the view from it."""
        return {
            "apiVersion": API_VERSION,
            "kind": "CaptureJob",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
                "creationTimestamp": self.created,
                "generation": self.generation,
                "annotations": dict(self.annotations),
            },
            "spec": dict(self.spec),
            "status": self.status.to_wire(),
        }

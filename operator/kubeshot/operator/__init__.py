"""The kubeshot operator: CaptureJobs and ScreenshotPolicies reconciled into capture pods.

Pure builders (`building`), pure lifecycle decisions (`lifecycle`, `queueing` over `views` of
the jobs), one Reconciler of CaptureJobs (`reconciling`) with ScreenshotPolicies (`policies`),
a job's Secrets (`credentials`) and its pod's NetworkPolicy (`confinement`) beside it, thin
Kopf handlers (`handlers`), and the process around them (`running`: leader Lease, sweeper,
/metrics and /healthz).
"""

from kubeshot.operator.building import (
    JobRef,
    PolicyRef,
    build_network_policy,
    build_pod,
    build_request,
    build_secret,
)
from kubeshot.operator.settings import OperatorSettings

__all__ = [
    "JobRef",
    "OperatorSettings",
    "PolicyRef",
    "build_network_policy",
    "build_pod",
    "build_request",
    "build_secret",
]

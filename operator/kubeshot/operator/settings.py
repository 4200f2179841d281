"""The operator's configuration: one pydantic-settings object, read from `KUBESHOT_OPERATOR_*`.

`kubeshot operator` flags override the environment; everything else has a production default.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeshot import __version__
from kubeshot.store.settings import StoreSettings

CAPTURE_REPOSITORY = "ghcr.io/kubeshot/capture"
"""Where the capture image is published; its default tag is this package's version (testenv/
image.sh reads this line and pyproject.toml's version to name the image it builds)."""


class OperatorSettings(BaseSettings):
    """Everything `kubeshot operator` can be told."""

    model_config = SettingsConfigDict(
        env_prefix="KUBESHOT_OPERATOR_", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- what to watch ---------------------------------------------------------------------
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces (or globs, `!` excludes) to reconcile; all namespaces when empty."""

    # --- capture pods ----------------------------------------------------------------------
    capture_image: str = f"{CAPTURE_REPOSITORY}:{__version__}"
    """Image of the capture pods (`python -m kubeshot_capture`)."""
    image_pull_policy: str = Field(default="IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    """Pull policy of the capture image."""
    run_as_user: int = Field(default=10001, ge=1)
    """Non-root user id of the capture container (the image's `capture` user)."""
    cpu_request: str = "250m"
    """CPU request of a capture pod when its policy sets no CPU limit."""
    pod_deadline_grace_seconds: int = Field(default=30, ge=0, le=600)
    """Seconds a pod may run beyond the capture timeout (browser start, upload)."""
    termination_grace_seconds: int = Field(default=5, ge=0, le=60)
    """Grace period of a capture pod: the engine closes its browser on SIGTERM."""

    # --- the gateway the pods upload to ----------------------------------------------------
    upload_url: str = Field(
        default="http://kubeshot-gateway.kubeshot.svc:8081/v1/internal/uploads",
        pattern=r"^https?://",
    )
    """Base of the gateway's upload endpoint; a pod PUTs to `<base>/<namespace>/<job>`."""
    gateway_namespace: str = "kubeshot"
    """Namespace of the gateway pods (capture pods may reach them on the upload port only)."""
    gateway_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "kubeshot",
            "app.kubernetes.io/component": "gateway",
        }
    )
    """Labels selecting the gateway pods."""
    gateway_cidrs: list[str] = Field(default_factory=list)
    """Where the gateway runs outside the cluster (a VM, the node tier's host): capture pods may
    reach these CIDRs on the upload port instead of the gateway pods selected above."""
    store: StoreSettings = Field(default_factory=StoreSettings)
    """The result store, as the gateway's (KUBESHOT_STORE, KUBESHOT_S3_*, unprefixed): with S3,
    pods upload to the bucket with a POST policy the operator signs (its keys sign, nothing
    more: they never reach a pod), and not to the gateway."""
    # --- warm capture pods (docs/operator.md "Warm capture pods") ---------------------------
    assignment_url: str = Field(
        default="http://kubeshot-operator.kubeshot.svc:8082/v1/assignments",
        pattern=r"^https?://",
    )
    """Base of the operator's assignment endpoint as warm pods reach it: a warm pod asks
    `<base>/<namespace>/<pod>` for its job."""
    assignment_host: str = "0.0.0.0"  # noqa: S104 - warm pods in every watched namespace ask
    """Address the assignment endpoint listens on."""
    assignment_port: int = Field(default=8082, ge=0, le=65535)
    """Port the assignment endpoint listens on (0: a free port, printed at start)."""
    operator_namespace: str = "kubeshot"
    """Namespace of the operator pods (warm pods may reach them on the assignment port only)."""
    operator_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {
            "app.kubernetes.io/name": "kubeshot",
            "app.kubernetes.io/component": "operator",
        }
    )
    """Labels selecting the operator pods."""
    operator_cidrs: list[str] = Field(default_factory=list)
    """Where the operator runs outside the cluster: warm pods may reach these CIDRs on the
    assignment port instead of the operator pods selected above."""
    dns_namespace: str = "kube-system"
    """Namespace of the cluster DNS pods."""
    dns_pod_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    """Labels selecting the cluster DNS pods."""

    # --- lifecycle -------------------------------------------------------------------------
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    """Wait before the first retry of a retriable failure; doubles with every attempt."""
    retry_backoff_max_seconds: float = Field(default=300.0, ge=0)
    """Longest wait between attempts."""
    resync_seconds: float = Field(default=10.0, gt=0)
    """How often lost pods, due retries and expired jobs are looked for."""
    batch_window_seconds: float = Field(default=0.02, ge=0)
    """Kopf's batching window: how long bursts of events on one object are merged."""

    # --- leadership ------------------------------------------------------------------------
    lease_name: str = "kubeshot-operator"
    """Lease that elects the one active replica."""
    lease_namespace: str = "kube-system"
    """Namespace of the Lease."""
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    """A leader that has not renewed for this long is replaced."""
    identity: str | None = None
    """This replica's name in the Lease (default: host name and a random suffix)."""

    # --- observability ---------------------------------------------------------------------
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from the kubelet/Prometheus
    """Address of the /metrics and /healthz server."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    """Port of the /metrics and /healthz server (0: a free port, printed at start)."""

    @field_validator("gateway_cidrs", "operator_cidrs")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(c, strict=True)) for c in cidrs]

    @model_validator(mode="after")
    def _store_reachable(self) -> OperatorSettings:
        if self.store.store == "s3":
            self.store.upload_peers()  # ValueError when the pods' way to the bucket is unknown
        return self

    @field_validator("upload_url", "assignment_url")
    @classmethod
    def _strip_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @property
    def upload_port(self) -> int:
        return _port_of(self.upload_url)

    def upload_url_for(self, namespace: str, name: str) -> str:
        return f"{self.upload_url}/{namespace}/{name}"

    @property
    def assignment_port_of_url(self) -> int:
        """The port warm pods reach the operator on (a Service may map it to assignment_port)."""
        return _port_of(self.assignment_url)

    def assignment_url_for(self, namespace: str, pod: str) -> str:
        return f"{self.assignment_url}/{namespace}/{pod}"


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)

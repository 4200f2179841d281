"""ScreenshotPolicy: what the capture pods of a policy may do."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from kubeshot.api._base import Model, describe_validation_error
from kubeshot.api.capture import MAX_VIEWPORT_SIDE, Format, normalise_domain
from kubeshot.api.names import DataKey, ObjectName
from kubeshot.api.quantity import QUANTITY_PATTERN, quantity_bytes

MiB = 1024 * 1024
Port = Annotated[int, Field(ge=1, le=65535)]
Domain = Annotated[str, Field(min_length=1, max_length=253)]


PROXY_CREDENTIALS_LABEL = "kubeshot.dev/proxy-credentials"
"""The label (value "true") by which a Secret lets the operator hand it to capture pods."""


class SecretKeyRef(Model):
    """A Secret in the policy's namespace holding proxy credentials.

    The operator reads it only when it carries the label `kubeshot.dev/proxy-credentials: "true"`:
    whoever may write a ScreenshotPolicy cannot send any other Secret of the namespace to a proxy.
    """

    name: ObjectName
    """Name of the Secret; it must be labelled `kubeshot.dev/proxy-credentials: "true"`."""
    username_key: DataKey = "username"
    """Key of the user name in the Secret."""
    password_key: DataKey = "password"  # noqa: S105 - the name of a key, not a password
    """Key of the password in the Secret."""


class ProxyConfig(Model):
    """An upstream HTTP proxy every capture request is chained through."""

    server: str = Field(pattern=r"^https?://[^/\s]+/?$", max_length=2048)
    """Proxy URL, e.g. http://proxy.corp:3128."""
    credentials_secret_ref: SecretKeyRef | None = None
    """Secret with the proxy user name and password (kept out of the policy itself)."""


class ProxyCredentials(Model):
    """Resolved upstream proxy credentials, handed to the engine, never logged."""

    server: str = Field(pattern=r"^https?://[^/\s]+/?$", max_length=2048)
    """Proxy URL."""
    username: str | None = None
    """Proxy user name."""
    password: SecretStr | None = None
    """Proxy password."""


class NetworkRules(Model):
    """Where a capture may connect. Enforced by the in-process egress guard and a NetworkPolicy."""

    allowed_domains: list[Domain] = Field(default_factory=list, max_length=1000)
    """When set, only these domains and their subdomains may be reached (suffix match, IDNA)."""
    blocked_domains: list[Domain] = Field(default_factory=list, max_length=1000)
    """Domains and their subdomains that may never be reached (suffix match, IDNA)."""
    allowed_cidrs: list[str] = Field(default_factory=list, alias="allowedCIDRs", max_length=256)
    """Ranges opened although private, e.g. an intranet (10.20.0.0/16); reachable on any port."""
    block_private_networks: bool = True
    """Refuse private, loopback, link-local, CGNAT, metadata and other special addresses."""
    allowed_ports: list[Port] = Field(default_factory=lambda: [80, 443], min_length=1)
    """Destination ports a capture may connect to (outside the allowedCIDRs ranges)."""
    proxy: ProxyConfig | None = None
    """Upstream proxy: when set, capture pods may reach only the proxy."""
    ignore_https_errors: bool = Field(default=False, alias="ignoreHTTPSErrors")
    """Accept invalid TLS certificates. Off by default: turn on only for known test targets."""

    @field_validator("allowed_domains", "blocked_domains")
    @classmethod
    def _normalise_domains(cls, domains: list[str]) -> list[str]:
        return [normalise_domain(d) for d in domains]

    @field_validator("allowed_cidrs")
    @classmethod
    def _check_cidrs(cls, cidrs: list[str]) -> list[str]:
        return [str(ipaddress.ip_network(c, strict=False)) for c in cidrs]

    def allowed_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c) for c in self.allowed_cidrs]


class MaxViewport(Model):
    """The largest viewport a capture may ask for."""

    width: int = Field(default=3840, ge=1, le=MAX_VIEWPORT_SIDE)
    """Largest viewport width in CSS pixels."""
    height: int = Field(default=2160, ge=1, le=MAX_VIEWPORT_SIDE)
    """Largest viewport height in CSS pixels."""


class Limits(Model):
    """Resource limits of each capture."""

    memory: str = Field(default="1Gi", pattern=QUANTITY_PATTERN)
    """Memory limit of a capture (the pod's limit; the local worker's limit)."""
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN)
    """CPU limit of a capture pod, e.g. "1" or "500m"."""
    timeout_seconds: int = Field(default=60, ge=1, le=900)
    """Wall-clock limit of one capture, navigation included."""
    max_download_bytes: int = Field(default=50 * MiB, ge=1024)
    """All bytes the page may fetch, every subresource included."""
    max_result_bytes: int = Field(default=25 * MiB, ge=1024)
    """Largest artifact a capture may return."""
    max_viewport: MaxViewport = Field(default_factory=MaxViewport)
    """Largest viewport."""
    max_full_page_height: int = Field(default=16384, ge=1, le=65535)
    """Tallest full-page screenshot, in CSS pixels; a taller page is cut to this height."""
    max_concurrent_jobs: int = Field(default=4, ge=1, le=10000)
    """CaptureJobs of this policy that run at once; more wait in a FIFO queue."""

    @field_validator("memory")
    @classmethod
    def _memory_floor(cls, memory: str) -> str:
        if quantity_bytes(memory) < 64 * MiB:
            raise ValueError("memory must be at least 64Mi")
        return memory

    @property
    def memory_bytes(self) -> int:
        return quantity_bytes(self.memory)


class Features(Model):
    """Which capture features callers of this policy may use."""

    allowed_formats: list[Format] = Field(default_factory=lambda: list(Format), min_length=1)
    """Output formats callers may ask for."""
    allow_custom_java_script: bool = Field(default=False, alias="allowCustomJavaScript")
    """Let callers run their own JavaScript in the page. Off by default."""
    allow_html_input: bool = Field(default=True, alias="allowHTMLInput")
    """Let callers send HTML to render instead of a URL."""


class Toleration(Model):
    """A Kubernetes toleration for capture pods."""

    key: str | None = None
    """Taint key."""
    operator: str | None = Field(default=None, pattern="^(Exists|Equal)$")
    """Exists or Equal."""
    value: str | None = None
    """Taint value."""
    effect: str | None = Field(default=None, pattern="^(NoSchedule|PreferNoSchedule|NoExecute)$")
    """Taint effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class Runtime(Model):
    """Where and how capture pods run."""

    runtime_class_name: ObjectName | None = None
    """RuntimeClass for capture pods, e.g. gvisor, for a sandbox below the container."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels capture pods must run on."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations of capture pods."""
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    """How long finished CaptureJobs of this policy are kept (a job's own TTL wins)."""
    warm_pods: int = Field(default=0, ge=0, le=50)
    """Capture pods the operator keeps started (Chromium launched, waiting for one job each):
    a job then starts in about a second instead of a cold pod's few. Each costs an idle
    Chromium's memory; see docs/operator.md "Warm capture pods"."""
    warm_idle_seconds: int = Field(default=600, ge=30, le=86400)
    """An unused warm pod exits after this long and is replaced by a fresh one."""


class ScreenshotPolicySpec(Model):
    """What capture pods of this policy may do. A CaptureJob without policyRef uses `default`."""

    network: NetworkRules = Field(default_factory=NetworkRules)
    """Network rules."""
    limits: Limits = Field(default_factory=Limits)
    """Resource limits."""
    features: Features = Field(default_factory=Features)
    """Allowed features."""
    runtime: Runtime = Field(default_factory=Runtime)
    """Pod placement and runtime."""

    @model_validator(mode="after")
    def _domains_consistent(self) -> ScreenshotPolicySpec:
        both = set(self.network.allowed_domains) & set(self.network.blocked_domains)
        if both:
            raise ValueError(f"domains both allowed and blocked: {sorted(both)}")
        return self


class Condition(Model):
    """A Kubernetes status condition."""

    type: str
    """Condition type, e.g. Ready."""
    status: str = Field(pattern="^(True|False|Unknown)$")
    """True, False or Unknown."""
    reason: str = ""
    """Machine-readable reason."""
    message: str = ""
    """Human-readable message."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The generation this condition was set for."""


class ScreenshotPolicyStatus(Model):
    """What the operator observed of a ScreenshotPolicy."""

    conditions: list[Condition] = Field(default_factory=list)
    """Ready when the NetworkPolicy for this policy exists and matches it."""
    observed_generation: int | None = None
    """The generation last reconciled."""
    active_jobs: int = 0
    """CaptureJobs of this policy running now."""
    network_policy_name: ObjectName | None = None
    """The NetworkPolicy that confines this policy's capture pods."""


def _default_metadata() -> dict[str, object]:
    return {"name": "default"}


class ScreenshotPolicy(Model):
    """A ScreenshotPolicy document (apiVersion/kind/metadata/spec), as in a policy YAML file."""

    api_version: str = Field(default="kubeshot.dev/v1alpha1", pattern=r"^kubeshot\.dev/v1alpha1$")
    """kubeshot.dev/v1alpha1."""
    kind: str = Field(default="ScreenshotPolicy", pattern="^ScreenshotPolicy$")
    """ScreenshotPolicy."""
    metadata: dict[str, object] = Field(default_factory=_default_metadata)
    """Object metadata; `name` names the policy."""
    spec: ScreenshotPolicySpec = Field(default_factory=ScreenshotPolicySpec)
    """The policy."""

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "default"))


def load_policy_file(path: Path) -> list[ScreenshotPolicy]:
    """Every ScreenshotPolicy document of a YAML file (empty documents skipped); ValueError
    naming the file and each offending field when it is not one."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        return [ScreenshotPolicy.model_validate(d) for d in documents]
    except ValidationError as exc:
        problems = describe_validation_error(exc, "(document)")
        raise ValueError(f"{path}: not a valid ScreenshotPolicy: {problems}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a valid ScreenshotPolicy: {exc}") from exc

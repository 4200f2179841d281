"""The gateway's configuration: one pydantic-settings object read from the environment.

The security settings keep the seed's names (`AUTH_TOKEN`, `HTTPS_ONLY`, `RATE_LIMIT_CAPTURE`, ...);
everything else is prefixed `KUBESHOT_`. `kubeshot serve` flags override the environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from limits import parse as parse_rate_limit
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from kubeshot.api.capture import MAX_CAPTURE_PIXELS
from kubeshot.store.settings import StoreSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Never passed on to capture workers (and so never visible to a page's browser).
SECRET_ENVIRONMENT = (
    "AUTH_TOKEN",
    "URL_SIGNING_SECRET",
    "PROXY_USERNAME",
    "PROXY_PASSWORD",
    "TOKENS_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "KUBESHOT_REDIS_URL",
)


# What one capture worker may take at most by default: the default policy's memory limit.
WORKER_MEMORY = 2**30
MAX_DEFAULT_WORKERS = 16


def _available_memory() -> int | None:
    """Bytes this process could still use: MemAvailable, or less under a cgroup limit."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit.isdigit():
                found.append(int(limit) - int(g.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _available_cpus() -> int:
    """CPUs this process may run on, fewer under a cgroup CPU quota (a pod's CPU limit)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def default_workers(cpus: int | None = None, memory: int | None = None) -> int:
    """Capture workers this machine can carry: one per CPU this process may use (a capture
    is CPU-bound in Chromium; more workers than cores only queue inside the kernel), no more
    than `WORKER_MEMORY` each fits in the available memory, at least one."""
    if cpus is None:
        cpus = _available_cpus()
    if memory is None:
        memory = _available_memory()
    fitting = cpus if memory is None else min(cpus, memory // WORKER_MEMORY)
    return max(1, min(fitting, MAX_DEFAULT_WORKERS))


def _alias(name: str) -> AliasChoices:
    """Read `name` from the environment, or the field's own name when passed as a keyword."""
    return AliasChoices(name)


class Settings(StoreSettings):
    """Everything `kubeshot serve` can be told. Defaults are the secure choice. The result store's
    settings are the operator's too: kubeshot.store.settings defines them."""

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=True,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    # --- listening -------------------------------------------------------------------------
    # NoDecode: KUBESHOT_HOST is "ADDR[,ADDR...]" (the chart sets 0.0.0.0), not JSON.
    host: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1"], validation_alias=_alias("KUBESHOT_HOST")
    )
    """Addresses to listen on. Plain HTTP is allowed only when all of them are loopback."""
    port: int = Field(default=8080, ge=0, le=65535, validation_alias=_alias("KUBESHOT_PORT"))
    """TCP port (HTTPS when a certificate is configured)."""
    tls_cert: Path | None = Field(default=None, validation_alias=_alias("KUBESHOT_TLS_CERT"))
    """PEM certificate chain; with tls_key the gateway serves HTTPS."""
    tls_key: Path | None = Field(default=None, validation_alias=_alias("KUBESHOT_TLS_KEY"))
    """PEM private key of tls_cert."""
    http_redirect_port: int | None = Field(
        default=None, ge=0, le=65535, validation_alias=_alias("KUBESHOT_HTTP_REDIRECT_PORT")
    )
    """With TLS: also listen for plain HTTP on this port, answering only with 308 to HTTPS."""
    upload_port: int = Field(
        default=8081, ge=0, le=65535, validation_alias=_alias("KUBESHOT_UPLOAD_PORT")
    )
    """Kubernetes backend: plain-HTTP port of the internal upload endpoint capture pods PUT
    their artifacts to (nothing else is served there)."""
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, validation_alias=_alias("KUBESHOT_METRICS_PORT")
    )
    """Plain-HTTP port of /metrics (Prometheus), on the same addresses as `port`; nothing else
    is served there, and /metrics is not served on `port` (keep it off the callers' Service)."""

    # --- connections (slowloris) -----------------------------------------------------------
    header_timeout: float = Field(
        default=15.0, gt=0, le=3600, validation_alias=_alias("KUBESHOT_HEADER_TIMEOUT")
    )
    """Seconds a connection has to send a complete request head, counted from its TCP (and TLS)
    handshake or from the end of its previous response; then it is closed. An idle keep-alive
    connection is closed after it too (a proxy in front must close idle upstream connections
    sooner)."""
    body_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias=_alias("KUBESHOT_BODY_TIMEOUT")
    )
    """Seconds a request body may take to arrive in full; then 408 and the connection is
    closed."""
    max_connections_per_address: int = Field(
        default=32, ge=1, validation_alias=_alias("KUBESHOT_MAX_CONNECTIONS_PER_ADDRESS")
    )
    """Open connections one client address may hold (IPv6: one /64); more are answered 503 and
    closed at once. TRUSTED_PROXIES are exempt: their connections carry many clients."""

    # --- HTTPS -----------------------------------------------------------------------------
    https_only: bool = Field(default=True, validation_alias=_alias("HTTPS_ONLY"))
    """Redirect plain-HTTP requests to HTTPS (308) and send HSTS on HTTPS."""
    allow_http_on_loopback: bool = Field(
        default=True, validation_alias=_alias("KUBESHOT_ALLOW_HTTP_ON_LOOPBACK")
    )
    """With HTTPS_ONLY: still serve plain HTTP when the gateway listens on loopback only."""
    trusted_proxies: Annotated[list[Network], NoDecode] = Field(
        default_factory=list, validation_alias=_alias("TRUSTED_PROXIES")
    )
    """Comma-separated CIDRs whose X-Forwarded-Proto / X-Forwarded-For are believed."""
    hsts_max_age: int = Field(
        default=63072000, ge=0, validation_alias=_alias("KUBESHOT_HSTS_MAX_AGE")
    )
    """Strict-Transport-Security max-age in seconds."""

    # --- authentication --------------------------------------------------------------------
    auth_token: SecretStr | None = Field(default=None, validation_alias=_alias("AUTH_TOKEN"))
    """A bearer token (identity `default`, any policy); `kubeshot serve` generates one if none."""
    tokens_file: Path | None = Field(default=None, validation_alias=_alias("TOKENS_FILE"))
    """YAML/JSON file of hashed tokens with name, namespace, allowed policies and rate limit."""
    no_auth: bool = Field(default=False, validation_alias=_alias("KUBESHOT_NO_AUTH"))
    """Run without authentication (logged as a warning). `kubeshot serve --no-auth`."""
    url_signing_secret: SecretStr | None = Field(
        default=None, validation_alias=_alias("URL_SIGNING_SECRET")
    )
    """`SECRET` or `KEYID:SECRET[,KEYID:SECRET...]`; the first key signs, all verify. Unset:
    signed URLs are refused."""
    signed_url_max_ttl: int = Field(
        default=7 * 86400, ge=1, validation_alias=_alias("SIGNED_URL_MAX_TTL")
    )
    """Largest `expires - now` a signed URL may carry, in seconds."""

    # --- rate limits -----------------------------------------------------------------------
    rate_limit_enabled: bool = Field(default=True, validation_alias=_alias("RATE_LIMIT_ENABLED"))
    """Apply the rate limits below (per identity)."""
    rate_limit_capture: str = Field(
        default="5 per second", validation_alias=_alias("RATE_LIMIT_CAPTURE")
    )
    """Captures per token (POST /v1/screenshot, POST /v1/captures); a token's own limit wins."""
    rate_limit_signed: str = Field(
        default="2 per second", validation_alias=_alias("RATE_LIMIT_SIGNED")
    )
    """Signed-URL captures per client address (IPv6: per /64)."""
    rate_limit_signed_global: str = Field(
        default="10 per second", validation_alias=_alias("RATE_LIMIT_SIGNED_GLOBAL")
    )
    """Signed-URL captures of all clients together: signed URLs need no token, so no address
    (or /64) count bounds what many addresses spend together."""
    rate_limit_read: str = Field(
        default="50 per second", validation_alias=_alias("RATE_LIMIT_READ")
    )
    """Other authenticated requests (job status, artifact download) per token."""

    # --- capture ---------------------------------------------------------------------------
    backend: Literal["local", "kubernetes"] = Field(
        default="local", validation_alias=_alias("KUBESHOT_BACKEND")
    )
    """Where captures run."""
    policy_files: list[Path] = Field(
        default_factory=list, validation_alias=_alias("KUBESHOT_POLICY_FILES")
    )
    """ScreenshotPolicy YAML files; the policy named `default` applies when a request names none."""
    ignore_https_errors: bool = Field(default=False, validation_alias=_alias("IGNORE_HTTPS_ERRORS"))
    """Accept invalid TLS certificates of capture targets under the built-in default policy."""
    proxy_server: str | None = Field(default=None, validation_alias=_alias("PROXY_SERVER"))
    """Upstream proxy every capture is chained through, e.g. http://proxy.corp:3128."""
    proxy_username: str | None = Field(default=None, validation_alias=_alias("PROXY_USERNAME"))
    """User name for PROXY_SERVER."""
    proxy_password: SecretStr | None = Field(
        default=None, validation_alias=_alias("PROXY_PASSWORD")
    )
    """Password for PROXY_SERVER."""
    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, validation_alias=_alias("KUBESHOT_MAX_BODY_BYTES")
    )
    """Largest request body; larger gets 413."""
    max_pixels: int = Field(
        default=MAX_CAPTURE_PIXELS,
        ge=1,
        le=MAX_CAPTURE_PIXELS,
        validation_alias=_alias("KUBESHOT_MAX_PIXELS"),
    )
    """Largest image a capture may render, in device pixels (viewport x deviceScaleFactor^2,
    fullPage counted at the policy's maxFullPageHeight); larger is 400 before any browser work.
    At most kubeshot.api's MAX_CAPTURE_PIXELS, which the operator and the engine enforce too."""

    # --- fairness (local backend) ----------------------------------------------------------
    max_captures_per_identity: int = Field(
        default=4, ge=1, validation_alias=_alias("KUBESHOT_MAX_CAPTURES_PER_IDENTITY")
    )
    """Captures one identity (token; signed-URL or open-access client address) may have in
    flight at once, running or waiting, synchronous and asynchronous; more get 429."""
    fair_share: bool = Field(default=True, validation_alias=_alias("KUBESHOT_FAIR_SHARE"))
    """Also hold each identity to its fair share of the capture capacity (workers + queue):
    capacity / (identities with captures in flight + 1), at least 1, so a place is always left
    for a caller with none."""

    # --- kubernetes backend ----------------------------------------------------------------
    namespace: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        validation_alias=_alias("KUBESHOT_NAMESPACE"),
    )
    """Namespace of the CaptureJobs of AUTH_TOKEN, signed-URL and --no-auth callers (tokens of a
    tokens file name their own); the chart sets the gateway's own namespace."""
    # KUBESHOT_MAX_UPLOAD_BYTES: kubeshot.store.settings (the operator's presigned uploads too).
    kube_wait_grace: float = Field(
        default=120.0, gt=0, validation_alias=_alias("KUBESHOT_KUBE_WAIT_GRACE")
    )
    """Seconds a synchronous request waits beyond the capture's timeout (queueing, pod start)."""

    # --- local backend ---------------------------------------------------------------------
    workers: int = Field(
        default_factory=default_workers, ge=1, le=64, validation_alias=_alias("KUBESHOT_WORKERS")
    )
    """Capture worker processes, each with its own Chromium. Default: one per CPU, as many as
    fit in the available memory at 1 GiB each (`default_workers`)."""
    spare_contexts: int = Field(
        default=2, ge=0, le=4, validation_alias=_alias("KUBESHOT_SPARE_CONTEXTS")
    )
    """Browser contexts each worker keeps open ahead of captures (each used once, then closed),
    at most one per 512 MiB of the capture's memory limit. 0: open each on demand."""
    captures_per_worker: int = Field(
        default=50, ge=1, validation_alias=_alias("KUBESHOT_CAPTURES_PER_WORKER")
    )
    """A worker is recycled (fresh process and browser) after this many captures."""
    queue_size: int = Field(default=16, ge=0, validation_alias=_alias("KUBESHOT_QUEUE_SIZE"))
    """Captures that may wait for a worker; more get 503 with Retry-After."""
    queue_timeout: float = Field(
        default=30.0, gt=0, validation_alias=_alias("KUBESHOT_QUEUE_TIMEOUT")
    )
    """Seconds a capture may wait for a worker before 503."""
    worker_start_timeout: float = Field(
        default=60.0, gt=0, validation_alias=_alias("KUBESHOT_WORKER_START_TIMEOUT")
    )
    """Seconds a new worker may take to launch its browser."""
    memory_poll_interval: float = Field(
        default=0.1, gt=0, validation_alias=_alias("KUBESHOT_MEMORY_POLL_INTERVAL")
    )
    """How often a busy worker's memory (PSS of its whole process tree) is measured."""
    shutdown_grace: float = Field(
        default=30.0, ge=0, validation_alias=_alias("KUBESHOT_SHUTDOWN_GRACE")
    )
    """On shutdown, seconds in-flight captures get to finish before they are failed."""

    # --- result store ----------------------------------------------------------------------
    result_dir: Path | None = Field(default=None, validation_alias=_alias("KUBESHOT_RESULT_DIR"))
    """Directory of async-capture artifacts (KUBESHOT_STORE=filesystem); a private temporary
    directory when unset."""
    # KUBESHOT_STORE, KUBESHOT_S3_*, KUBESHOT_STORE_DOWNLOAD: kubeshot.store.settings.
    result_ttl_seconds: int = Field(
        default=3600, ge=1, validation_alias=_alias("KUBESHOT_RESULT_TTL")
    )
    """Async jobs and their artifacts are deleted this long after they finished."""

    # --- state shared by replicas ---------------------------------------------------------
    redis_url: SecretStr | None = Field(default=None, validation_alias=_alias("KUBESHOT_REDIS_URL"))
    """`redis://[USER:PASSWORD@]HOST:PORT[/DB]` (or `rediss://`) of the Redis the gateway replicas
    share: rate limits, each identity's captures in flight, asynchronous jobs (a secret: its
    password is in it; the chart reads it from a Secret). Unset: rate limits and captures in
    flight count in this process, and jobs are kept in SQLite under KUBESHOT_RESULT_DIR."""

    # --- worker isolation (local backend) --------------------------------------------------
    worker_user: str | None = Field(default=None, validation_alias=_alias("KUBESHOT_WORKER_USER"))
    """`USER[:GROUP]` (names or numbers) capture workers and their Chromium run as. Unset: `nobody`
    when the gateway runs as root, else the gateway's own user. `root` keeps root workers (and
    Chromium without its sandbox): only by this explicit choice."""

    @field_validator("host", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return (
            [h.strip() for h in value.split(",") if h.strip()] if isinstance(value, str) else value
        )

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            value = [c.strip() for c in value.split(",") if c.strip()]
        if isinstance(value, list):
            return [ipaddress.ip_network(str(c), strict=False) for c in value]
        return value

    @field_validator("policy_files", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        return [p for p in value.split(",") if p] if isinstance(value, str) else value

    @field_validator(
        "rate_limit_capture", "rate_limit_signed", "rate_limit_signed_global", "rate_limit_read"
    )
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        parse_rate_limit(value)  # ValueError on bad syntax
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://")):
            raise ValueError("KUBESHOT_REDIS_URL must be a redis:// or rediss:// URL")
        return value

    @field_validator("proxy_server")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("PROXY_SERVER must be an http:// or https:// URL")
        return value or None

    @property
    def http_shutdown_timeout(self) -> float:
        """How long the HTTP server waits for handlers on shutdown: longer than the backend's
        grace, so captures still running then are failed with a 503 rather than cut off."""
        return self.shutdown_grace + 10

    @model_validator(mode="after")
    def _metrics_port_of_its_own(self) -> Settings:
        """/metrics never shares a listener with callers or capture pods (0 picks a free one)."""
        others = {
            "KUBESHOT_PORT": self.port,
            "KUBESHOT_HTTP_REDIRECT_PORT": self.http_redirect_port,
        }
        if self.backend == "kubernetes":
            others["KUBESHOT_UPLOAD_PORT"] = self.upload_port
        clash = [name for name, port in others.items() if port and port == self.metrics_port]
        if clash:
            raise ValueError(f"KUBESHOT_METRICS_PORT must differ from {', '.join(clash)}")
        return self

    @property
    def capture_capacity(self) -> int:
        """Captures the local backend holds at once: one per worker, plus its queue."""
        return self.workers + self.queue_size

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def loopback_only(self) -> bool:
        """Whether every listening address is a loopback address."""
        return all(_is_loopback(h) for h in self.host)

    @property
    def plain_http_allowed(self) -> bool:
        # Configuring TLS means HTTPS is wanted, loopback or not.
        return not self.https_only or (
            self.allow_http_on_loopback and self.loopback_only and not self.tls
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

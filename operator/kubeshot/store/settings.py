"""The result store's configuration, one definition for both daemons: the gateway reads and
writes artifacts with it, the operator signs capture pods' uploads to the bucket with it. Both
read the same environment variables (`KUBESHOT_STORE`, `KUBESHOT_S3_*`,
`KUBESHOT_MAX_UPLOAD_BYTES`), so one chart value configures both alike.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from kubeshot.store.s3 import S3Config, UploadSigner

# What a NetworkPolicyPeer may hold (networking.k8s.io/v1).
_PEER_KEYS = {"ipBlock", "namespaceSelector", "podSelector"}


class StoreSettings(BaseSettings):
    """Where artifacts wait for their download, and how large one may be."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=True, populate_by_name=True, extra="ignore", frozen=True
    )

    store: Literal["filesystem", "s3"] = Field(
        default="filesystem", validation_alias=AliasChoices("KUBESHOT_STORE")
    )
    """Where artifacts wait for their download: KUBESHOT_RESULT_DIR, or an S3-compatible bucket
    (what gateway replicas share; capture pods then upload to it directly)."""
    s3_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("KUBESHOT_S3_ENDPOINT")
    )
    """URL of an S3-compatible server (MinIO, Ceph, versitygw...); unset: AWS S3 of the region.
    Capture pods upload to this very URL: it must be reachable from them."""
    s3_bucket: str | None = Field(default=None, validation_alias=AliasChoices("KUBESHOT_S3_BUCKET"))
    """The bucket (it must exist). Required with KUBESHOT_STORE=s3."""
    s3_prefix: str = Field(default="", validation_alias=AliasChoices("KUBESHOT_S3_PREFIX"))
    """Key prefix of the artifacts (`<prefix>/<job id>`); nothing else in the bucket is touched."""
    s3_region: str = Field(default="us-east-1", validation_alias=AliasChoices("KUBESHOT_S3_REGION"))
    """Region the requests are signed for."""
    s3_access_key_id_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("KUBESHOT_S3_ACCESS_KEY_ID_FILE")
    )
    """File holding the access key id (a mounted Secret). Unset with the next: the AWS default
    chain (AWS_* environment, web identity, instance profile)."""
    s3_secret_access_key_file: Path | None = Field(
        default=None, validation_alias=AliasChoices("KUBESHOT_S3_SECRET_ACCESS_KEY_FILE")
    )
    """File holding the secret access key; both files or neither. Masked in every log line."""
    s3_network_peers: list[dict[str, Any]] | None = Field(
        default=None, validation_alias=AliasChoices("KUBESHOT_S3_NETWORK_PEERS")
    )
    """Operator, KUBESHOT_STORE=s3: JSON list of NetworkPolicyPeers (`ipBlock`,
    `namespaceSelector`, `podSelector`) through which capture pods reach the endpoint; their
    NetworkPolicy opens exactly these, on the endpoint URL's port. Unset: the endpoint's address
    when the URL names one by IP; required otherwise."""
    store_download: Literal["gateway", "presigned"] = Field(
        default="gateway", validation_alias=AliasChoices("KUBESHOT_STORE_DOWNLOAD")
    )
    """How callers download an artifact: through the gateway, or (KUBESHOT_STORE=s3) redirected
    (307) to a presigned GET of the bucket, valid 5 minutes: the endpoint must be reachable by
    callers then."""
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices("KUBESHOT_MAX_UPLOAD_BYTES"),
    )
    """Largest artifact a capture pod may upload: the gateway's upload endpoint answers 413
    beyond it; with KUBESHOT_STORE=s3 the bucket refuses it (the presigned POST's
    content-length-range)."""

    @field_validator("s3_network_peers", mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        # JSON text from a keyword too (the environment's is decoded already).
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("s3_network_peers")
    @classmethod
    def _peers(cls, peers: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for peer in peers or []:
            if not peer or set(peer) - _PEER_KEYS:
                raise ValueError(
                    "KUBESHOT_S3_NETWORK_PEERS: each peer holds ipBlock, namespaceSelector"
                    " and/or podSelector only"
                )
        return peers

    @model_validator(mode="after")
    def _store_complete(self) -> StoreSettings:
        if self.store == "s3" and not self.s3_bucket:
            raise ValueError("KUBESHOT_STORE=s3 needs KUBESHOT_S3_BUCKET")
        if self.store_download == "presigned" and self.store != "s3":
            raise ValueError("KUBESHOT_STORE_DOWNLOAD=presigned needs KUBESHOT_STORE=s3")
        if (self.s3_access_key_id_file is None) != (self.s3_secret_access_key_file is None):
            raise ValueError(
                "set both KUBESHOT_S3_ACCESS_KEY_ID_FILE and KUBESHOT_S3_SECRET_ACCESS_KEY_FILE,"
                " or neither"
            )
        return self

    def s3_config(self) -> S3Config:
        """The S3 store's configuration, its keys read from their files now."""
        from kubeshot.store.s3 import S3Config  # aiobotocore: loaded only when used

        assert self.s3_bucket is not None  # refused above without one
        keys = [
            path.read_text().strip() if path is not None else None
            for path in (self.s3_access_key_id_file, self.s3_secret_access_key_file)
        ]
        return S3Config(
            bucket=self.s3_bucket,
            prefix=self.s3_prefix,
            endpoint=self.s3_endpoint,
            region=self.s3_region,
            access_key_id=keys[0],
            secret_access_key=keys[1],
            presigned_downloads=self.store_download == "presigned",
        )

    @functools.cached_property
    def upload_signer(self) -> UploadSigner:
        """What signs capture pods' uploads (made once: its keys are read then)."""
        from kubeshot.store.s3 import UploadSigner

        return UploadSigner(self.s3_config())

    @property
    def s3_port(self) -> int:
        """The TCP port of the endpoint (AWS S3: 443)."""
        parts = urlsplit(self.s3_endpoint or "https://s3.amazonaws.com")
        return parts.port or (80 if parts.scheme == "http" else 443)

    def upload_peers(self) -> list[dict[str, Any]]:
        """The NetworkPolicyPeers of the endpoint (see s3_network_peers); ValueError when they
        are neither configured nor the endpoint's IP address."""
        if self.s3_network_peers is not None:
            return self.s3_network_peers
        try:
            address = ipaddress.ip_address(urlsplit(self.s3_endpoint or "").hostname or "")
        except ValueError:
            raise ValueError(
                "KUBESHOT_STORE=s3 needs KUBESHOT_S3_NETWORK_PEERS (the NetworkPolicyPeers of"
                " the endpoint) unless KUBESHOT_S3_ENDPOINT names it by IP address"
            ) from None
        return [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}]

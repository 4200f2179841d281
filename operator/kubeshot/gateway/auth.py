"""Bearer-token authentication: who is calling, what they may use, how often.

Tokens are kept only as SHA-256 hashes and compared in constant time. A tokens file (YAML or
JSON) lists them:

    tokens:
      - name: ci                      # the identity: rate limits and async jobs belong to it
        sha256: 9f86d08...            # sha256 of the token, hex (`kubeshot serve` prints it)
        namespace: default            # the Kubernetes namespace of its CaptureJobs
        policies: [default, intranet] # ScreenshotPolicies it may name; "*" for all
        rateLimit: 10 per second      # its own capture limit instead of RATE_LIMIT_CAPTURE
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import yaml
from limits import parse as parse_rate_limit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubeshot.api import describe_validation_error

ANY_POLICY = "*"
# Identity names the gateway gives callers itself; a token of the same name would share their
# rate limits, their asynchronous jobs and (kubernetes backend) their CaptureJobs' caller label.
RESERVED_NAMES = {
    "default": "the AUTH_TOKEN identity",
    "signed": "signed-URL callers",
    "anonymous": "callers of a --no-auth gateway",
}
DEFAULT_IDENTITY = "default"


def hash_token(token: str) -> str:
    """The hex SHA-256 a tokens file stores for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenEntry(BaseModel):
    """One token of a tokens file."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    """The identity's name."""
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    """Hex SHA-256 of the token."""
    namespace: str = Field(default="default", min_length=1, max_length=63)
    """Kubernetes namespace of this identity's CaptureJobs."""
    policies: list[str] = Field(default_factory=lambda: [ANY_POLICY], min_length=1)
    """ScreenshotPolicies this identity may use ("*": any)."""
    rate_limit: str | None = Field(default=None, alias="rateLimit")
    """Capture rate limit of this identity, e.g. "10 per second"."""

    @field_validator("sha256", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)
        return value


class TokensFile(BaseModel):
    """A tokens file: a list of tokens with unique names and hashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[TokenEntry] = Field(min_length=1)

    @field_validator("tokens")
    @classmethod
    def _unique(cls, tokens: list[TokenEntry]) -> list[TokenEntry]:
        for token in tokens:
            reserved = RESERVED_NAMES.get(token.name.lower())
            if reserved is not None:
                raise ValueError(
                    f"the token name {token.name!r} is reserved for {reserved}; rename it"
                )
        check_distinct(tokens)
        return tokens


def check_distinct(entries: list[TokenEntry], sources: list[str] | None = None) -> None:
    """ValueError when two entries share a name (case-insensitively: `CI` and `ci` would be
    told apart by nothing but case) or a token. `sources` names where each entry came from."""
    where = sources or ["the tokens file"] * len(entries)
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for index, entry in enumerate(entries):
        first = names.setdefault(entry.name.lower(), index)
        if first != index:
            raise ValueError(
                f"token names must be unique: {entries[first].name!r} ({where[first]}) and "
                f"{entry.name!r} ({where[index]}) name the same identity"
            )
        first = hashes.setdefault(entry.sha256, index)
        if first != index:
            raise ValueError(
                f"the same token is listed twice: as {entries[first].name!r} ({where[first]}) "
                f"and as {entry.name!r} ({where[index]})"
            )


def parse_tokens_file(text: str) -> list[TokenEntry]:
    """Parse a tokens file's text (YAML or JSON); ValueError with the reason when invalid."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"tokens file is not valid YAML: {exc}") from exc
    try:
        return TokensFile.model_validate(document).tokens
    except ValidationError as exc:
        problems = describe_validation_error(exc, "(file)")
        raise ValueError(f"invalid tokens file: {problems}") from None


def load_tokens_file(path: Path) -> list[TokenEntry]:
    """The tokens of a tokens file; ValueError naming the file when it cannot be used."""
    try:
        return parse_tokens_file(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"tokens file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class Identity(BaseModel):
    """Who a request is from, once authenticated."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Token name, `signed` for signed URLs, `anonymous` without authentication."""
    kind: str
    """token, signed or anonymous."""
    namespace: str = "default"
    policies: tuple[str, ...] = (ANY_POLICY,)
    rate_limit: str | None = None
    rate_key: str
    """The key its rate limits are counted under."""

    def may_use(self, policy: str) -> bool:
        return ANY_POLICY in self.policies or policy in self.policies


class Authenticator:
    """Checks bearer tokens against the configured token hashes, in constant time."""

    def __init__(self, entries: list[TokenEntry], *, open_access: bool = False) -> None:
        self._entries = [(bytes.fromhex(e.sha256), _identity(e)) for e in entries]
        self.open_access = open_access

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def authenticate(self, token: str) -> Identity | None:
        """The identity holding this token, or None. Every entry is compared, match or not."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: Identity | None = None
        for digest, identity in self._entries:
            if hmac.compare_digest(presented, digest):
                found = identity
        return found


def _identity(entry: TokenEntry) -> Identity:
    return Identity(
        name=entry.name,
        kind="token",
        namespace=entry.namespace,
        policies=tuple(entry.policies),
        rate_limit=entry.rate_limit,
        rate_key=f"token:{entry.name}",
    )


def parse_authorization(header: str) -> str:
    """The token of an `Authorization: Bearer TOKEN` header; ValueError when malformed."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise ValueError("the Authorization scheme must be Bearer")
    if not token or any(c.isspace() for c in token) or len(token) > 512:
        raise ValueError("malformed bearer token")
    return token

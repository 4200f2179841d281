"""Signed URLs: HMAC-SHA256 over the method, the path and the canonical query.

The canonical query is every parameter but `signature`, each name and value RFC 3986-encoded
(unreserved characters kept, everything else percent-encoded from UTF-8), sorted, joined with
`&`. `expires` (Unix seconds) is required and capped; `keyId` names the key so secrets can be
rotated: `URL_SIGNING_SECRET="new:SECRET2,old:SECRET1"` signs with `new` and accepts both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote

SIGNED_PATH = "/v1/screenshot"
SIGNATURE = "signature"
EXPIRES = "expires"
KEY_ID = "keyId"
RESERVED = frozenset({SIGNATURE, EXPIRES, KEY_ID})
DEFAULT_KEY_ID = "default"
MIN_SECRET_LENGTH = 16
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_EXPIRES = re.compile(r"^[0-9]{1,12}$")


class SignatureError(Exception):
    """A signed URL that must be refused (403)."""


def rfc3986(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Every parameter but `signature`, encoded, sorted by name then value, joined with `&`."""
    pairs = sorted((rfc3986(k), rfc3986(v)) for k, v in params if k != SIGNATURE)
    return "&".join(f"{k}={v}" for k, v in pairs)


def string_to_sign(params: Iterable[tuple[str, str]], path: str = SIGNED_PATH) -> bytes:
    return f"GET\n{path}\n{canonical_query(params)}".encode()


def parse_keys(secret: str) -> dict[str, bytes]:
    """`SECRET` or `KEYID:SECRET,KEYID:SECRET`; the first key is the signing key."""
    keys: dict[str, bytes] = {}
    items = [item.strip() for item in secret.split(",")] if "," in secret else [secret.strip()]
    for item in items:
        key_id, sep, value = item.partition(":")
        if not sep or not _KEY_ID.match(key_id):
            key_id, value = DEFAULT_KEY_ID, item
        if len(value) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"URL signing key {key_id!r} is shorter than {MIN_SECRET_LENGTH} characters"
            )
        if key_id in keys:
            raise ValueError(f"URL signing key id {key_id!r} is listed twice")
        keys[key_id] = value.encode("utf-8")
    return keys


@dataclass(frozen=True)
class UrlSigner:
    """Signs and verifies `/v1/screenshot` query strings. Without keys it refuses everything."""

    keys: dict[str, bytes]
    max_ttl: int = 7 * 86400

    @classmethod
    def from_secret(cls, secret: str | None, max_ttl: int = 7 * 86400) -> UrlSigner:
        return cls(parse_keys(secret) if secret else {}, max_ttl)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def sign(
        self, params: list[tuple[str, str]], expires_in: int, now: float | None = None
    ) -> list[tuple[str, str]]:
        """The parameters with `expires`, `keyId` and `signature` added."""
        if not self.keys:
            raise ValueError("no URL signing secret configured (URL_SIGNING_SECRET)")
        if any(k in RESERVED for k, _ in params):
            raise ValueError(f"the query may not contain {', '.join(sorted(RESERVED))}")
        if not 0 < expires_in <= self.max_ttl:
            raise ValueError(f"expires-in must be between 1 and {self.max_ttl} seconds")
        key_id, key = next(iter(self.keys.items()))
        expires = int((time.time() if now is None else now) + expires_in)
        signed = [*params, (EXPIRES, str(expires)), (KEY_ID, key_id)]
        digest = hmac.new(key, string_to_sign(signed), hashlib.sha256).hexdigest()
        return [*signed, (SIGNATURE, digest)]

    def verify(self, params: list[tuple[str, str]], now: float | None = None) -> None:
        """Return when the parameters carry a valid, unexpired signature; SignatureError if not."""
        if not self.keys:
            raise SignatureError("signed URLs are not enabled on this gateway")
        signatures = [v for k, v in params if k == SIGNATURE]
        if len(signatures) != 1 or not _SIGNATURE.match(signatures[0]):
            raise SignatureError("the URL has no valid signature")
        key_ids = [v for k, v in params if k == KEY_ID]
        key = self.keys.get(key_ids[0]) if len(key_ids) == 1 else None
        if key is None:
            raise SignatureError("the URL is signed with an unknown key")
        expected = hmac.new(key, string_to_sign(params), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signatures[0]):
            raise SignatureError("the signature does not match the URL")
        expires_values = [v for k, v in params if k == EXPIRES]
        if len(expires_values) != 1 or not _EXPIRES.match(expires_values[0]):
            raise SignatureError("the URL has no valid expires parameter")
        expires = int(expires_values[0])
        current = time.time() if now is None else now
        if expires < current:
            raise SignatureError("the signed URL has expired")
        if expires - current > self.max_ttl:
            raise SignatureError(f"the signed URL expires more than {self.max_ttl}s from now")

    def signed_query(self, params: list[tuple[str, str]], expires_in: int) -> str:
        """A complete, encoded query string for `params`, signed."""
        return "&".join(f"{rfc3986(k)}={rfc3986(v)}" for k, v in self.sign(params, expires_in))

"""Which capture a proxy request belongs to: the login its browser context presents.

Every capture's browser context is opened with a proxy login of its own (Playwright's
context-level `proxy={"server", "username", "password"}`); Chromium answers the guard's 407
challenge with it and then sends it with every request of that context (see `LOGIN_URL`). The
guard admits a request only under the session whose login it carries. Requests with no login,
or one that is unknown, wrong or of a capture that ended, belong to no capture: the browser's
own background traffic (update checks, account probes) is among them, and none of it reaches
the network.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Generic, TypeVar

REALM = "kubeshot"
"""The realm of the guard's `Proxy-Authenticate: Basic` challenge."""
LOGIN_URL = "http://login.kubeshot-guard.invalid/"
"""Where a context presents its login before its page's first subresource request.

Chromium answers a 407 challenge with the context's login (through Playwright) for navigations
only: a subresource that meets the challenge first just fails. Once a context has logged in,
it sends the login with every request. A context whose first request is not a navigation (an
`html` capture: `set_content` on about:blank) navigates here first: the guard challenges the
request, then answers it itself with 204 No Content, which leaves the page where it was, never
reaches the network and counts against no budget.
"""

S = TypeVar("S")


@dataclass(frozen=True)
class ProxyLogin:
    """A capture's proxy username (an id, not secret) and password (a random secret)."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls) -> ProxyLogin:
        return cls(f"capture-{secrets.token_hex(8)}", secrets.token_urlsafe(32))

    def header(self) -> bytes:
        """The `Proxy-Authorization` value a client presents (for clients other than Chromium)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode())
        return b"Basic " + token


def parse_basic(values: list[bytes]) -> tuple[str, bytes] | None:
    """(username, password) of the `Proxy-Authorization` header values, or None.

    None when there is no such header, more than one, another scheme than Basic, or a token
    that is not base64 of `user:password`.
    """
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
        username, sep, password = decoded.partition(b":")
        return (username.decode("utf-8"), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None


class Logins(Generic[S]):
    """The logins of the sessions in progress: username -> (password, session)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[bytes, S]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def sessions(self) -> list[S]:
        return [session for _password, session in self._entries.values()]

    def add(self, login: ProxyLogin, session: S) -> None:
        """Admit `login` for `session`; a login serves one session only."""
        if login.username in self._entries:
            raise RuntimeError(f"proxy login {login.username!r} is already in use")
        self._entries[login.username] = (login.password.encode(), session)

    def remove(self, login: ProxyLogin, session: S) -> None:
        """Forget `login` (if it is still `session`'s): later requests carrying it are refused."""
        entry = self._entries.get(login.username)
        if entry is not None and entry[1] is session:
            del self._entries[login.username]

    def lookup(self, values: list[bytes]) -> S | None:
        """The session whose login the `Proxy-Authorization` values carry, or None.

        The password is compared in constant time; the username is an id, not a secret.
        """
        credentials = parse_basic(values)
        if credentials is None:
            return None
        username, password = credentials
        entry = self._entries.get(username)
        if entry is None:
            return None
        expected, session = entry
        return session if hmac.compare_digest(password, expected) else None

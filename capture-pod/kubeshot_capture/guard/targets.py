"""Where a URL or proxy request points: pure parsing, spelled the way a browser reads it.

Chromium normalises URLs before they reach the proxy, but the preflight and API callers hand the
guard raw strings, so hosts are decoded like the WHATWG URL standard (and inet_aton) would:
percent-decoding, IDNA mapping (full-width digits and dots), and the numeric IPv4 spellings
(decimal 2130706433, hex 0x7f000001, octal 0177.0.0.1, short 127.1, trailing dot).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import unquote

from kubeshot_capture.guard.addresses import IPAddress

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
WEB_SCHEMES = frozenset({"http", "https"})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*$")
_DOTS = re.compile("[\u3002\uff0e\uff61]")
_STRIPPED = re.compile(r"[\t\n\r]")
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))


class InvalidTarget(ValueError):
    """A URL or authority the guard cannot read; it is refused."""


@dataclass(frozen=True, slots=True)
class Target:
    """A destination: scheme, normalised host, port, and the address when the host is a literal."""

    scheme: str
    host: str
    """ASCII lower-case host name without trailing dot, or the canonical address text."""
    port: int
    address: IPAddress | None = None

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _ipv4_number(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if not digits:
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not all(c in _DIGITS[base] for c in digits):
        raise InvalidTarget(f"invalid IPv4 number {part!r}")
    return int(digits, base)


def _ends_in_number(parts: list[str]) -> bool:
    last = parts[-1]
    if last.isascii() and last.isdigit():
        return True
    try:
        _ipv4_number(last)
    except InvalidTarget:
        return False
    return True


def parse_ipv4(host: str) -> IPv4Address | None:
    """The address a host spells in any of the browser's IPv4 forms; None if it is a name.

    Raises InvalidTarget when the host looks numeric but is no valid address (as a browser would).
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not parts or not parts[-1] or not _ends_in_number(parts):
        return None
    if len(parts) > 4 or any(p == "" for p in parts):
        raise InvalidTarget(f"invalid IPv4 address {host!r}")
    numbers = [_ipv4_number(p) for p in parts]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise InvalidTarget(f"IPv4 address out of range {host!r}")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return IPv4Address(value)


def normalise_host(raw: str) -> tuple[str, IPAddress | None]:
    """(host, address): the ASCII host name, or the canonical text of a literal address.

    Raises InvalidTarget for anything a browser would not accept as a host, and for host
    names with characters no DNS name can have.
    """
    if raw.startswith("["):
        if not raw.endswith("]") or "%" in raw:
            raise InvalidTarget(f"invalid IPv6 host {raw!r}")
        try:
            v6 = IPv6Address(raw[1:-1])
        except ValueError as exc:
            raise InvalidTarget(f"invalid IPv6 host {raw!r}") from exc
        return v6.compressed, v6
    try:
        text = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError as exc:
        raise InvalidTarget(f"invalid percent-encoding in host {raw!r}") from exc
    if not text.isascii():
        try:
            text = _DOTS.sub(".", text).encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidTarget(f"invalid international host name {raw!r}") from exc
    text = text.lower()
    v4 = parse_ipv4(text)
    if v4 is not None:
        return str(v4), v4
    name = text[:-1] if text.endswith(".") else text
    if not _HOST_NAME.match(name):
        raise InvalidTarget(f"invalid host name {raw!r}")
    return name, None


def _split_host_port(authority: str) -> tuple[str, str | None]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidTarget(f"invalid IPv6 host in {authority!r}")
        rest = authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidTarget(f"invalid authority {authority!r}")
        return authority[: end + 1], (rest[1:] if rest else None)
    host, sep, port = authority.rpartition(":")
    if not sep:
        return authority, None
    return host, port


def _port(text: str | None, scheme: str) -> int:
    if text is None or text == "":
        if scheme not in DEFAULT_PORTS:
            raise InvalidTarget(f"no port for scheme {scheme!r}")
        return DEFAULT_PORTS[scheme]
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise InvalidTarget(f"invalid port {text!r}")
    return int(text)


def parse_authority(authority: str, scheme: str) -> Target:
    """A `host[:port]` authority (a CONNECT target, a Host header) for `scheme`."""
    if not authority or "@" in authority:
        raise InvalidTarget(f"invalid authority {authority!r}")
    host_text, port_text = _split_host_port(authority)
    host, address = normalise_host(host_text)
    return Target(scheme, host, _port(port_text, scheme), address)


def parse_url(url: str) -> Target:
    """The target of a raw URL string, read like a browser's address bar reads it.

    Only hierarchical web schemes (http, https, ws, wss) have a target; any other scheme raises
    InvalidTarget naming it.
    """
    text = _STRIPPED.sub("", url.strip(_C0_AND_SPACE))
    match = _SCHEME.match(text)
    if match is None:
        raise InvalidTarget("URL has no scheme")
    scheme = match.group(1).lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidTarget(f"scheme {scheme!r} is not allowed (only http and https)")
    rest = text[match.end() :].replace("\\", "/").lstrip("/")
    end = len(rest)
    for delimiter in "/?#":
        position = rest.find(delimiter)
        if 0 <= position < end:
            end = position
    authority = rest[:end].rpartition("@")[2]
    if not authority:
        raise InvalidTarget("URL has no host")
    host_text, port_text = _split_host_port(authority)
    host, address = normalise_host(host_text)
    return Target(scheme, host, _port(port_text, scheme), address)

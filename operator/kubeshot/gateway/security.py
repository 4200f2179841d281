"""Where a request really comes from and whether it really arrived over HTTPS.

`X-Forwarded-Proto` and `X-Forwarded-For` are believed only when the peer is one of
TRUSTED_PROXIES; from anyone else they are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from kubeshot.gateway.settings import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# One IPv6 subscriber gets a /64 (or more): counting its addresses one by one would give it 2**64
# budgets.
IPV6_CLIENT_PREFIX = 64

SECURE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "()",
    # aiohttp's default names Python's and aiohttp's versions (on the answers its parser gives
    # too, which no middleware sees): a fingerprint for whoever looks for a known flaw.
    "Server": "kubeshot",
}


def _address(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in net for net in proxies)


def peer_address(request: web.Request) -> IPAddress | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return _address(peer[0]) if isinstance(peer, tuple) and peer else None


def client_address(request: web.Request, proxies: Sequence[Network]) -> str:
    """The caller's address: the peer, or through trusted proxies the last untrusted hop."""
    peer = peer_address(request)
    if not _trusted(peer, proxies):
        return str(peer) if peer else "unknown"
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        if not _trusted(address, proxies):
            return str(address)
    return str(peer)


def client_key(client: str) -> str:
    """What per-client limits count a client address under: an IPv4 address itself, an IPv6
    address by its /64 (`2001:db8:1:2::/64`); anything else as given."""
    address = _address(client)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address) if address is not None else client


def is_https(request: web.Request, proxies: Sequence[Network]) -> bool:
    """Whether the request came over TLS, to us or to a trusted proxy in front of us."""
    if request.transport is not None and request.transport.get_extra_info("sslcontext"):
        return True
    if _trusted(peer_address(request), proxies):
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https"
    return False

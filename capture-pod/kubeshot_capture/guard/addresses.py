"""Which addresses a capture may connect to: pure functions, no I/O.

Every address the guard is about to connect to goes through `refusal_reason`. Addresses that
carry another address inside them (IPv4-mapped, IPv4-compatible, NAT64) are judged by the
address they lead to; tunnelling prefixes (6to4, Teredo) are refused outright, and outside the
IPv6 global unicast range 2000::/3 nothing is reachable by a web page.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from kubeshot.api.networks import (
    GLOBAL_UNICAST_V6,
    IPV4_MAPPED,
    METADATA,
    NAT64,
    NON_UNICAST,
    SPECIAL,
)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

_IPV4_MAPPED = IPv6Network(IPV4_MAPPED)
_NAT64 = IPv6Network(NAT64)
_GLOBAL_UNICAST_V6 = IPv6Network(GLOBAL_UNICAST_V6)


def _table(rows: tuple[tuple[str, str], ...]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), reason) for net, reason in rows)


# The tables live in kubeshot.api.networks: the operator's NetworkPolicies except the same ranges.
_METADATA_NETS = _table(METADATA)  # refused even when private networks are allowed
_NEVER_NETS = _table(NON_UNICAST)  # refused even when an allowed CIDR covers them
_SPECIAL_NETS = _table(SPECIAL)  # special-purpose ranges, first match wins


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv4-mapped (::ffff:a.b.c.d) or NAT64 (64:ff9b::a.b.c.d) address
    leads to; None for other IPv6 addresses."""
    if address in _IPV4_MAPPED or address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _first(address: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    for network, reason in table:
        if address.version == network.version and address in network:
            return reason
    return None


def _special_reason(address: IPAddress) -> str | None:
    reason = _first(address, _METADATA_NETS) or _first(address, _SPECIAL_NETS)
    if reason is None and isinstance(address, IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        reason = "reserved IPv6 address (outside 2000::/3)"
    return reason


def classify_address(address: IPAddress) -> str | None:
    """Why an address is special (loopback, private, metadata, ...), or None for a public one.

    IPv4-mapped and NAT64 addresses are classified by the IPv4 address they lead to.
    """
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            never = _first(inner, _NEVER_NETS)
            reason = never or _special_reason(inner)
            if reason is not None:
                return f"{reason} inside {address.compressed}"
            return None
    return _first(address, _NEVER_NETS) or _special_reason(address)


def _in_any(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def refusal_reason(
    address: IPAddress,
    *,
    block_private_networks: bool = True,
    allowed_networks: Sequence[IPNetwork] = (),
) -> str | None:
    """Why the guard refuses to connect to `address`, or None when it may.

    `allowed_networks` are explicit exceptions that open special ranges (an intranet, loopback for
    tests). Addresses that are not unicast destinations (unspecified, multicast, broadcast) are
    never opened. Cloud metadata endpoints stay refused even with `block_private_networks` off,
    unless an allowed network covers them.
    """
    candidates: list[IPAddress] = [address]
    if isinstance(address, IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
    for candidate in candidates:
        never = _first(candidate, _NEVER_NETS)
        if never is not None:
            return never if candidate is address else f"{never} inside {address.compressed}"
    if _in_any(address, allowed_networks) or any(
        _in_any(c, allowed_networks) for c in candidates[1:]
    ):
        return None
    reason = classify_address(address)
    if reason is None:
        return None
    if block_private_networks:
        return reason
    metadata = [_first(c, _METADATA_NETS) for c in candidates]
    return next((m for m in metadata if m is not None), None)

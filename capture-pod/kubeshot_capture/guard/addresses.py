"""Which addresses a capture may connect to: pure functions, no I/O.

Every address the guard is about to connect to goes through `refusal_reason`. Addresses that
carry another address inside them (IPv4-mapped, IPv4-compatible, NAT64) are judged by the
address they lead to; tunnelling prefixes (6to4, Teredo) are refused outright, and outside the
IPv6 global unicast range 2000::/3 nothing is reachable by a web page.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Cloud metadata endpoints: refused even when private networks are allowed, unless an allowed
# CIDR names them explicitly. Some of them (Azure's WireServer) are public addresses.
_METADATA: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "cloud metadata address"),
    ("169.254.170.2/32", "cloud metadata address (ECS task metadata)"),
    ("169.254.169.123/32", "cloud metadata address (AWS time sync)"),
    ("168.63.129.16/32", "cloud metadata address (Azure WireServer)"),
    ("100.100.100.200/32", "cloud metadata address (Alibaba)"),
    ("fd00:ec2::254/128", "cloud metadata address (AWS IPv6)"),
    ("fd00:ec2::23/128", "cloud metadata address (AWS IPv6 DNS)"),
)

# Not unicast destinations at all: refused even when an allowed CIDR covers them.
_NEVER: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", "unspecified address"),
    ("255.255.255.255/32", "broadcast address"),
    ("224.0.0.0/4", "multicast address"),
    ("::/128", "unspecified address"),
    ("ff00::/8", "multicast address"),
)

# Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries), first match wins.
_SPECIAL: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "'this network' address (0.0.0.0/8)"),
    ("10.0.0.0/8", "private address (10.0.0.0/8)"),
    ("100.64.0.0/10", "carrier-grade NAT address (100.64.0.0/10)"),
    ("127.0.0.0/8", "loopback address"),
    ("169.254.0.0/16", "link-local address"),
    ("172.16.0.0/12", "private address (172.16.0.0/12)"),
    ("192.0.0.0/24", "IETF protocol assignment address (192.0.0.0/24)"),
    ("192.0.2.0/24", "documentation address (192.0.2.0/24)"),
    ("192.31.196.0/24", "AS112 address (192.31.196.0/24)"),
    ("192.52.193.0/24", "AMT relay address (192.52.193.0/24)"),
    ("192.88.99.0/24", "6to4 relay anycast address (192.88.99.0/24)"),
    ("192.168.0.0/16", "private address (192.168.0.0/16)"),
    ("192.175.48.0/24", "AS112 address (192.175.48.0/24)"),
    ("198.18.0.0/15", "benchmarking address (198.18.0.0/15)"),
    ("198.51.100.0/24", "documentation address (198.51.100.0/24)"),
    ("203.0.113.0/24", "documentation address (203.0.113.0/24)"),
    ("240.0.0.0/4", "reserved address (240.0.0.0/4)"),
    ("::1/128", "loopback address"),
    ("::/96", "IPv4-compatible IPv6 address (deprecated)"),
    ("::ffff:0:0:0/96", "IPv4-translated IPv6 address"),
    ("64:ff9b:1::/48", "local-use NAT64 address (64:ff9b:1::/48)"),
    ("100::/64", "discard-only IPv6 address (100::/64)"),
    ("2001::/32", "Teredo tunnel address (2001::/32)"),
    ("2001:2::/48", "benchmarking address (2001:2::/48)"),
    ("2001:db8::/32", "documentation address (2001:db8::/32)"),
    ("2001::/23", "IETF protocol assignment address (2001::/23)"),
    ("2002::/16", "6to4 tunnel address (2002::/16)"),
    ("3fff::/20", "documentation address (3fff::/20)"),
    ("5f00::/16", "SRv6 SID address (5f00::/16)"),
    ("fc00::/7", "IPv6 unique-local address (fc00::/7)"),
    ("fe80::/10", "IPv6 link-local address"),
    ("fec0::/10", "IPv6 site-local address (deprecated)"),
)

_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_NAT64 = IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


def _table(rows: tuple[tuple[str, str], ...]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), reason) for net, reason in rows)


_METADATA_NETS = _table(_METADATA)
_NEVER_NETS = _table(_NEVER)
_SPECIAL_NETS = _table(_SPECIAL)


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

"""Addresses no capture may reach: the one table behind the egress guard and the NetworkPolicies.

The capture engine's egress guard (`kubeshot_capture.guard.addresses`) judges every address it is
about to connect to against these tables; the operator's NetworkPolicy builder excepts the same
ranges from the internet a capture pod may reach (`unreachable_networks`). A range added here is
refused by both.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, collapse_addresses, ip_network

IPNetwork = IPv4Network | IPv6Network

# Cloud metadata endpoints: refused even when private networks are allowed, unless an allowed
# CIDR names them explicitly. Some of them (Azure's WireServer) are public addresses.
METADATA: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "cloud metadata address"),
    ("169.254.170.2/32", "cloud metadata address (ECS task metadata)"),
    ("169.254.169.123/32", "cloud metadata address (AWS time sync)"),
    ("168.63.129.16/32", "cloud metadata address (Azure WireServer)"),
    ("100.100.100.200/32", "cloud metadata address (Alibaba)"),
    ("fd00:ec2::254/128", "cloud metadata address (AWS IPv6)"),
    ("fd00:ec2::23/128", "cloud metadata address (AWS IPv6 DNS)"),
)

# Not unicast destinations at all: refused even when an allowed CIDR covers them.
NON_UNICAST: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/32", "unspecified address"),
    ("255.255.255.255/32", "broadcast address"),
    ("224.0.0.0/4", "multicast address"),
    ("::/128", "unspecified address"),
    ("ff00::/8", "multicast address"),
)

# Special-purpose ranges (IANA IPv4/IPv6 special-purpose registries), first match wins.
SPECIAL: tuple[tuple[str, str], ...] = (
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

# IPv6 addresses that lead to an IPv4 address inside them: judged by the address they lead to.
IPV4_MAPPED = "::ffff:0:0/96"
NAT64 = "64:ff9b::/96"
# Outside the IPv6 global unicast range nothing is reachable by a web page.
GLOBAL_UNICAST_V6 = "2000::/3"
# The IPv6 space outside 2000::/3 that holds no special-purpose range the tables name above.
_OUTSIDE_GLOBAL_UNICAST_V6 = ("4000::/2", "8000::/1")


def _networks(rows: tuple[tuple[str, str], ...]) -> list[IPNetwork]:
    return [ip_network(cidr) for cidr, _ in rows]


def _collapsed(networks: list[IPNetwork]) -> list[IPNetwork]:
    v4 = collapse_addresses(n for n in networks if isinstance(n, IPv4Network))
    v6 = collapse_addresses(n for n in networks if isinstance(n, IPv6Network))
    return [*v4, *v6]


def unreachable_networks(*, block_private_networks: bool) -> list[IPNetwork]:
    """The ranges the egress guard refuses whatever the port and the name, collapsed, IPv4 first.

    What a capture pod's NetworkPolicy excepts from the internet it may reach: with private
    networks blocked every special-purpose, metadata and non-unicast range (and the NAT64 forms of
    the IPv4 ones, so that a NAT64 gateway leads nowhere the guard refuses); without, the metadata
    and non-unicast ranges only. A policy's `allowedCIDRs` re-open ranges in a rule of their own.

    IPv4-mapped IPv6 ranges (::ffff:0:0/96) are left out: no packet carries such an address (the
    guard judges them by the IPv4 address inside), and the API server refuses them in an ipBlock
    ("must not have an IPv4-mapped IPv6 address").
    """
    refused = _networks(METADATA) + _networks(NON_UNICAST)
    if block_private_networks:
        refused += _networks(SPECIAL) + [ip_network(c) for c in _OUTSIDE_GLOBAL_UNICAST_V6]
    nat64 = IPv6Network(NAT64)
    for network in _collapsed(refused):
        if isinstance(network, IPv4Network):
            embedded = int(nat64.network_address) + int(network.network_address)
            refused.append(IPv6Network((embedded, 96 + network.prefixlen)))
    mapped = IPv6Network(IPV4_MAPPED)
    return [
        n for n in _collapsed(refused) if not (isinstance(n, IPv6Network) and n.subnet_of(mapped))
    ]

"""The address classifier: every special range refused, public addresses allowed, exceptions."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest

from kubeshot.api.networks import IPV4_MAPPED, METADATA, unreachable_networks
from kubeshot_capture.guard import classify_address, embedded_ipv4, refusal_reason

BLOCKED: list[tuple[str, str]] = [
    # IPv4
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("168.63.129.16", "metadata"),
    ("100.100.100.200", "metadata"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.8", "IETF protocol"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::7f00:1", "IPv4-compatible"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:0:7f00:1", "IPv4-translated"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b::192.168.0.1", "private"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:db8::1", "documentation"),
    ("2001:10::1", "IETF protocol"),
    ("2002:7f00:1::", "6to4"),
    ("2002:a9fe:a9fe::1", "6to4"),
    ("3fff::1", "documentation"),
    ("5f00::1", "SRv6"),
    ("fc00::1", "unique-local"),
    ("fd00::1", "unique-local"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("4000::1", "outside 2000::/3"),
    ("e000::1", "outside 2000::/3"),
]

PUBLIC = [
    "1.1.1.1",
    "8.8.8.8",
    "93.184.215.14",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.1",
    "192.169.0.1",
    "198.17.255.255",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "expected"), BLOCKED)
def test_special_addresses_are_refused(address: str, expected: str) -> None:
    reason = refusal_reason(ip_address(address))
    assert reason is not None
    assert expected.lower() in reason.lower()
    assert classify_address(ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert classify_address(ip_address(address)) is None
    assert refusal_reason(ip_address(address)) is None


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2001:db8::1", None),
        ("::1", None),
    ],
)
def test_embedded_ipv4(address: str, inner: str | None) -> None:
    found = embedded_ipv4(ip_address(address))  # type: ignore[arg-type]
    assert (str(found) if found else None) == inner


@pytest.mark.parametrize(
    ("address", "cidrs", "block_private", "allowed"),
    [
        ("127.0.0.1", ["127.0.0.0/8"], True, True),
        ("127.0.0.2", ["127.0.0.1/32"], True, False),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], True, True),
        ("64:ff9b::7f00:1", ["127.0.0.0/8"], True, True),
        ("10.20.1.1", ["10.20.0.0/16"], True, True),
        ("10.21.1.1", ["10.20.0.0/16"], True, False),
        ("fd12::1", ["fd12::/16"], True, True),
        ("fd12::1", ["127.0.0.0/8"], True, False),
        # not destinations at all: no exception opens them
        ("0.0.0.0", ["0.0.0.0/0"], True, False),
        ("224.0.0.251", ["0.0.0.0/0"], True, False),
        ("255.255.255.255", ["0.0.0.0/0"], False, False),
        ("::", ["::/0"], True, False),
        ("ff02::1", ["::/0"], False, False),
        ("::ffff:0.0.0.0", ["0.0.0.0/0"], True, False),
        # blockPrivateNetworks off: private ranges open, metadata stays shut unless named
        ("10.0.0.1", [], False, True),
        ("127.0.0.1", [], False, True),
        ("169.254.169.254", [], False, False),
        ("::ffff:169.254.169.254", [], False, False),
        ("fd00:ec2::254", [], False, False),
        ("169.254.169.254", ["169.254.169.254/32"], True, True),
        ("8.8.8.8", [], True, True),
    ],
)
def test_allowed_networks_are_explicit_exceptions(
    address: str, cidrs: list[str], block_private: bool, allowed: bool
) -> None:
    reason = refusal_reason(
        ip_address(address),
        block_private_networks=block_private,
        allowed_networks=[ip_network(c) for c in cidrs],
    )
    assert (reason is None) is allowed, reason


def _samples(network: IPv4Network | IPv6Network) -> list[IPv4Address | IPv6Address]:
    first, last = int(network.network_address), int(network.broadcast_address)
    make = IPv4Address if network.version == 4 else IPv6Address
    return [make(a) for a in (first, (first + last) // 2, last)]


@pytest.mark.parametrize("block_private", [True, False])
def test_network_policies_except_exactly_what_the_guard_refuses(block_private: bool) -> None:
    """One table (kubeshot.api.networks) for the guard and the operator's NetworkPolicies:
    every range the NetworkPolicy excepts is refused by the guard, and every address the guard
    refuses whatever the port and name (BLOCKED above) is excepted by the NetworkPolicy."""
    unreachable = unreachable_networks(block_private_networks=block_private)
    for network in unreachable:
        for address in _samples(network):
            assert refusal_reason(address, block_private_networks=block_private), address
    mapped = ip_network(IPV4_MAPPED)  # never on the wire, and refused in an ipBlock: left out
    for address_text, _ in BLOCKED:
        address = ip_address(address_text)
        if (
            address in mapped
            or refusal_reason(address, block_private_networks=block_private) is None
        ):
            continue
        assert any(address in n for n in unreachable if n.version == address.version), address
    assert not any(n.version == 6 and n.subnet_of(mapped) for n in unreachable)  # type: ignore[arg-type]


def test_every_metadata_address_stays_excepted_with_private_networks_open() -> None:
    unreachable = unreachable_networks(block_private_networks=False)
    for cidr, _ in METADATA:
        network = ip_network(cidr)
        assert any(network.subnet_of(n) for n in unreachable if n.version == network.version)  # type: ignore[arg-type]
    assert ip_network("168.63.129.16/32") in unreachable
    assert ip_network("100.100.100.200/32") in unreachable

"""A capture's NetworkRules compiled into the decisions the guard makes: pure, no I/O."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

from kubeshot.api import NetworkRules
from kubeshot.api.admission import matching_domain
from kubeshot_capture.guard.addresses import IPAddress, embedded_ipv4, refusal_reason
from kubeshot_capture.guard.targets import WEB_SCHEMES, InvalidTarget, Target, parse_url

Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""Resolves (host name, port) to addresses; raises OSError when the name does not resolve."""

_LOOPBACK_NAMES = (IPv4Address("127.0.0.1"),)
# Cloud metadata services by name: refused like their addresses, whatever DNS says, unless an
# allowed domain names them exactly.
METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)


def is_localhost_name(host: str) -> bool:
    """`localhost` and `*.localhost` always mean this machine (RFC 6761), whatever DNS says."""
    return host == "localhost" or host.endswith(".localhost")


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The system resolver (getaddrinfo), TCP addresses in its order, duplicates removed."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        address = ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


class CompiledRules:
    """NetworkRules ready for the per-request decisions."""

    def __init__(self, rules: NetworkRules) -> None:
        self.rules = rules
        self.allowed_domains = tuple(rules.allowed_domains)
        self.blocked_domains = tuple(rules.blocked_domains)
        self.allowed_networks = tuple(rules.allowed_networks())
        self.allowed_ports = frozenset(rules.allowed_ports)
        self.block_private_networks = rules.block_private_networks

    def address_refusal(self, address: IPAddress) -> str | None:
        """Why the guard may not connect to this address, or None."""
        return refusal_reason(
            address,
            block_private_networks=self.block_private_networks,
            allowed_networks=self.allowed_networks,
        )

    def in_allowed_networks(self, address: IPAddress) -> bool:
        """Whether an allowed CIDR covers the address (or the IPv4 address it embeds)."""
        inner = embedded_ipv4(address) if isinstance(address, IPv6Address) else None
        return any(
            address in network or (inner is not None and inner in network)
            for network in self.allowed_networks
        )

    def port_refusal(self, port: int, address: IPAddress | None = None) -> str | None:
        """Why this port is refused: `allowedPorts` apply to the internet; a range opened by
        `allowedCIDRs` (an intranet, a local test server) is reachable on any port."""
        if port in self.allowed_ports:
            return None
        if address is not None and self.in_allowed_networks(address):
            return None
        allowed = ", ".join(str(p) for p in sorted(self.allowed_ports))
        return f"port {port} is not allowed (allowed ports: {allowed})"

    def target_refusal(self, target: Target) -> str | None:
        """Why this target is refused before any DNS lookup (port, domain rules, literal
        address), or None when it may be resolved and its addresses checked."""
        if target.address is not None:
            reason = self.address_refusal(target.address)
            if reason is not None:
                return f"{target.host}: {reason}"
            if self.allowed_domains and not self.in_allowed_networks(target.address):
                return f"{target.host}: literal addresses are not in the allowed domains"
            return self.port_refusal(target.port, target.address)
        if not self.allowed_networks:
            # No range is open on other ports: refuse before any DNS lookup.
            reason = self.port_refusal(target.port)
            if reason is not None:
                return reason
        if target.host in METADATA_NAMES and target.host not in self.allowed_domains:
            return f"{target.host}: cloud metadata host name"
        blocked = matching_domain(target.host, self.blocked_domains)
        if blocked is not None:
            return f"{target.host} is in blocked domain {blocked}"
        if self.allowed_domains and matching_domain(target.host, self.allowed_domains) is None:
            return f"{target.host} is not in the allowed domains"
        return None

    def url_refusal(self, url: str) -> str | None:
        """Why a URL is refused on its face (scheme, host spelling, port, domain, literal
        address), or None when its host may be resolved."""
        try:
            target = parse_url(url)
        except InvalidTarget as exc:
            return str(exc)
        if target.scheme not in WEB_SCHEMES:
            return f"scheme {target.scheme!r} is not allowed (only http and https)"
        return self.target_refusal(target)

    async def resolve(
        self, target: Target, resolver: Resolver
    ) -> tuple[list[IPAddress], str | None]:
        """(addresses the guard may connect to, reason when there are none): `lookup`, then
        `judge`. Raises OSError when the name does not resolve."""
        return self.judge(target, await self.lookup(target, resolver))

    async def lookup(self, target: Target, resolver: Resolver) -> list[IPAddress]:
        """Every address of the target's host, unjudged: the literal address, this machine for
        `localhost` names, else the resolver's answer. Raises OSError when there is none."""
        if target.address is not None:
            return [target.address]
        if is_localhost_name(target.host):
            return list(_LOOPBACK_NAMES)
        addresses = list(await resolver(target.host, target.port))
        if not addresses:
            raise OSError(f"{target.host} has no addresses")
        return addresses

    def judge(
        self, target: Target, addresses: Sequence[IPAddress]
    ) -> tuple[list[IPAddress], str | None]:
        """(the addresses the guard may connect to for this target, reason when there are none).

        Every address is classified, and judged with the target's port: an address opened by
        `allowedCIDRs` is reachable on any port, any other only on `allowedPorts`. The
        connection is made to the allowed addresses only (never to the name again: no
        DNS-rebinding window).
        """
        allowed: list[IPAddress] = []
        first_reason: str | None = None
        for address in addresses:
            reason = self.address_refusal(address) or self.port_refusal(target.port, address)
            if reason is None:
                allowed.append(address)
            elif first_reason is None:
                if target.address is not None:
                    first_reason = f"{target.host}: {reason}"
                else:
                    first_reason = f"{target.host} resolves to {address.compressed}: {reason}"
        return allowed, (None if allowed else first_reason)

"""Policy decisions and the preflight, with an injected resolver (no DNS, no sockets)."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address

import pytest

from kubeshot.api import CaptureError, FailureReason, NetworkRules
from kubeshot_capture.guard import CompiledRules, EgressSession, IPAddress, parse_url

ZONE = {
    "public.test": ["93.184.215.14"],
    "www.public.test": ["93.184.215.14"],
    "rebind.test": ["127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["10.0.0.7", "93.184.215.14"],
    "allprivate.test": ["10.0.0.7", "192.168.3.4"],
    "v6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "nat64.test": ["64:ff9b::a9fe:a9fe"],
    "intranet.test": ["10.20.3.4"],
}


class FakeResolver:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        if host not in ZONE:
            raise OSError(f"{host}: name not known")
        return [ip_address(a) for a in ZONE[host]]


def session(resolver: FakeResolver | None = None, /, **rules: object) -> EgressSession:
    return EgressSession(
        NetworkRules.model_validate(rules),
        max_download_bytes=1000,
        upstream=None,
        resolver=resolver or FakeResolver(),
    )


REFUSED = [
    ("file:///etc/passwd", {}, "scheme"),
    ("view-source:http://public.test/", {}, "scheme"),
    ("ftp://public.test/", {}, "scheme"),
    ("http://127.0.0.1/", {}, "loopback"),
    ("http://2130706433/", {}, "loopback"),
    ("http://0x7f000001/", {}, "loopback"),
    ("http://0177.0.0.1/", {}, "loopback"),
    ("http://127.1/", {}, "loopback"),
    ("http://127.0.0.1./", {}, "loopback"),
    ("http://[::1]/", {}, "loopback"),
    ("http://[::ffff:127.0.0.1]/", {}, "loopback"),
    ("http://[::ffff:7f00:1]/", {}, "loopback"),
    ("http://[64:ff9b::7f00:1]/", {}, "loopback"),
    ("http://[2002:7f00:1::]/", {}, "6to4"),
    ("http://[2001::1]/", {}, "Teredo"),
    ("http://169.254.169.254/latest/meta-data/", {}, "metadata"),
    ("http://[fd00:ec2::254]/", {}, "metadata"),
    ("http://0.0.0.0/", {}, "unspecified"),
    ("http://0/", {}, "unspecified"),
    ("http://100.64.1.1/", {}, "carrier-grade"),
    ("http://10.1.2.3/", {}, "private"),
    ("http://[fe80::1]/", {}, "link-local"),
    ("http://[fc00::1]/", {}, "unique-local"),
    ("http://localhost/", {}, "loopback"),
    ("http://LOCALHOST./", {}, "loopback"),
    ("http://anything.localhost/", {}, "loopback"),
    ("http://rebind.test/", {}, "resolves to 127.0.0.1"),
    ("http://metadata.test/", {}, "metadata"),
    ("http://allprivate.test/", {}, "private"),
    ("http://v6.test/", {}, "loopback"),
    ("http://mapped.test/", {}, "loopback"),
    ("http://nat64.test/", {}, "metadata"),
    ("http://public.test:8080/", {}, "port 8080"),
    ("http://public.test:22/", {"allowedPorts": [80]}, "port 22"),
    ("https://public.test/", {"allowedPorts": [80]}, "port 443"),
    ("http://www.public.test/", {"blockedDomains": ["public.test"]}, "blocked domain"),
    ("http://WWW.Public.Test./", {"blockedDomains": ["public.test"]}, "blocked domain"),
    ("http://public.test/", {"allowedDomains": ["other.test"]}, "not in the allowed"),
    ("http://93.184.215.14/", {"allowedDomains": ["public.test"]}, "literal addresses"),
    ("http://rebind.test/", {"allowedDomains": ["rebind.test"]}, "loopback"),
    ("http://169.254.169.254/", {"blockPrivateNetworks": False}, "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", {}, "metadata"),
    ("http://METADATA.GOOGLE.INTERNAL./", {"blockPrivateNetworks": False}, "metadata"),
    ("http://instance-data/latest/", {}, "metadata"),
    ("http://10.20.3.4/", {"allowedCIDRs": ["10.30.0.0/16"]}, "private"),
    # Any port only inside an opened range; the internet keeps to allowedPorts.
    ("http://public.test:8080/", {"allowedCIDRs": ["10.20.0.0/16"]}, "port 8080"),
    ("http://93.184.215.14:8080/", {"allowedCIDRs": ["10.20.0.0/16"]}, "port 8080"),
    ("http://10.20.3.4:8080/", {"allowedCIDRs": ["10.30.0.0/16"]}, "private"),
]


@pytest.mark.parametrize(("url", "rules", "expected"), REFUSED)
async def test_preflight_refuses(url: str, rules: dict[str, object], expected: str) -> None:
    guard_session = session(**rules)
    with pytest.raises(CaptureError) as caught:
        await guard_session.preflight(url)
    assert caught.value.reason is FailureReason.BLOCKED_BY_POLICY
    assert expected.lower() in caught.value.message.lower()
    assert guard_session.blocked_requests == 1
    assert guard_session.blocked_reason(url) == caught.value.message


ALLOWED = [
    ("http://public.test/", {}),
    ("https://www.public.test/x?y#z", {}),
    ("http://93.184.215.14/", {}),
    ("http://mixed.test/", {}),  # only the public address will be connected to
    ("http://public.test/", {"allowedDomains": ["public.test"]}),
    ("http://www.public.test/", {"allowedDomains": ["public.test"]}),
    ("http://127.0.0.1/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://localhost/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://rebind.test/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://mapped.test/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://intranet.test/", {"allowedCIDRs": ["10.20.0.0/16"]}),
    ("http://10.1.2.3/", {"blockPrivateNetworks": False}),
    ("http://public.test:8080/", {"allowedPorts": [8080]}),
    ("http://127.0.0.1/", {"allowedDomains": ["x.test"], "allowedCIDRs": ["127.0.0.1/32"]}),
    # An opened range (an intranet, a local test server) is reachable on any port.
    ("http://127.0.0.2:41217/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://localhost:3000/", {"allowedCIDRs": ["127.0.0.0/8"]}),
    ("http://intranet.test:8443/", {"allowedCIDRs": ["10.20.0.0/16"]}),
]


@pytest.mark.parametrize(("url", "rules"), ALLOWED)
async def test_preflight_allows(url: str, rules: dict[str, object]) -> None:
    guard_session = session(**rules)
    await guard_session.preflight(url)
    assert guard_session.blocked_requests == 0
    assert guard_session.blocked_reason(url) is None


async def test_mixed_records_connect_only_to_allowed_addresses() -> None:
    rules = CompiledRules(NetworkRules())
    addresses, reason = await rules.resolve(parse_url("http://mixed.test/"), FakeResolver())
    assert addresses == [ip_address("93.184.215.14")]
    assert reason is None


async def test_off_port_connects_only_to_the_opened_range() -> None:
    rules = CompiledRules(NetworkRules.model_validate({"allowedCIDRs": ["10.0.0.0/8"]}))
    addresses, reason = await rules.resolve(parse_url("http://mixed.test:8080/"), FakeResolver())
    assert addresses == [ip_address("10.0.0.7")]  # the public address is not on an allowed port
    assert reason is None


async def test_names_refused_by_policy_are_never_resolved() -> None:
    resolver = FakeResolver()
    guard_session = session(resolver, blockedDomains=["public.test"])
    with pytest.raises(CaptureError):
        await guard_session.preflight("http://www.public.test/")
    with pytest.raises(CaptureError):
        await guard_session.preflight("http://public.test:8443/")
    assert resolver.asked == []


async def test_unresolvable_name_is_a_navigation_failure() -> None:
    with pytest.raises(CaptureError) as caught:
        await session().preflight("http://nowhere.test/")
    assert caught.value.reason is FailureReason.NAVIGATION_FAILED


def test_blocked_reason_follows_recorded_redirects() -> None:
    guard_session = session()
    guard_session.record_redirect("http://public.test/a", "http://public.test/b")
    guard_session.record_redirect("http://public.test/b", "http://127.0.0.1/secret")
    reason = guard_session.blocked_reason("http://public.test/a")
    assert reason is not None
    assert "loopback" in reason
    guard_session.record_redirect("http://public.test/c", "file:///etc/passwd")
    assert "scheme" in (guard_session.blocked_reason("http://public.test/c") or "")
    guard_session.record_redirect("http://public.test/loop", "http://public.test/loop")
    assert guard_session.blocked_reason("http://public.test/loop") is None


class FakeRequest:
    def __init__(self, url: str, redirected_from: FakeRequest | None = None) -> None:
        self.url = url
        self.redirected_from = redirected_from


def test_chain_blocked_reason_walks_redirects() -> None:
    guard_session = session()
    chain = FakeRequest("http://public.test/end", FakeRequest("http://10.0.0.1/hop"))
    assert "private" in (guard_session.chain_blocked_reason(chain) or "")
    assert guard_session.chain_blocked_reason(FakeRequest("http://public.test/")) is None
    assert guard_session.first_blocked_reason(["http://public.test/", "http://0/"]) is not None


async def test_budget_and_closing() -> None:
    guard_session = session()
    assert guard_session.count(600)
    assert not guard_session.download_exceeded
    assert not guard_session.count(600)
    assert guard_session.download_exceeded
    assert guard_session.bytes_transferred == 600  # only bytes passed on are counted
    guard_session.close()
    assert guard_session.closed


async def test_one_dns_answer_per_name_per_capture() -> None:
    resolver = FakeResolver()
    guard_session = session(resolver)
    await guard_session.preflight("http://public.test/")
    await guard_session.preflight("https://public.test/other")
    assert resolver.asked == ["public.test"]
    assert session(resolver) is not guard_session  # a new capture asks again


async def test_one_dns_answer_per_name_but_the_port_judged_per_request() -> None:
    """With allowedCIDRs the port is judged after resolving; the kept answer is the addresses,
    never the verdict of the first request's port."""
    resolver = FakeResolver()
    guard_session = session(resolver, allowedCIDRs=["10.0.0.0/8"])
    await guard_session.preflight("http://public.test/")
    with pytest.raises(CaptureError) as caught:
        await guard_session.preflight("http://public.test:8080/")
    assert "port 8080" in caught.value.message
    await guard_session.preflight("https://public.test/")
    assert resolver.asked == ["public.test"]


def test_judge_classifies_every_address_with_the_targets_port() -> None:
    rules = CompiledRules(NetworkRules.model_validate({"allowedCIDRs": ["10.0.0.0/8"]}))
    mixed = [ip_address("10.0.0.7"), ip_address("93.184.215.14")]
    assert rules.judge(parse_url("http://mixed.test/"), mixed) == (mixed, None)
    assert rules.judge(parse_url("http://mixed.test:8080/"), mixed) == ([mixed[0]], None)
    public = [ip_address("93.184.215.14")]
    allowed, reason = rules.judge(parse_url("http://public.test:8080/"), public)
    assert allowed == []
    assert reason is not None
    assert "resolves to 93.184.215.14: port 8080" in reason

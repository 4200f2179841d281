"""The chart's own NetworkPolicies: the API server pinned, the uploaders and the internet narrowed
to what kubeshot's one table of unreachable addresses allows (kubeshot.api.networks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubeshot.api import unreachable_networks
from tests.cluster.chart.conftest import VALUES_DIR, Helm, Release

UNREACHABLE = [str(n) for n in unreachable_networks(block_private_networks=True)]


def api_server_rule(network_policy: dict[str, Any]) -> Any:
    """The egress rule on the API server's ports (neither DNS nor the public internet)."""
    rules = [
        r
        for r in network_policy["spec"]["egress"]
        if r.get("ports", [{}])[0].get("port") != 53 and r != internet_rule(network_policy)
    ]
    assert len(rules) == 1, rules
    return rules[0]


def internet_rule(network_policy: dict[str, Any]) -> Any:
    """The egress rule to the public internet (the one whose first peer is 0.0.0.0/0), if any."""
    for rule in network_policy["spec"]["egress"]:
        if rule.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
            return rule
    return None


def test_api_server_egress_is_pinned_to_the_kubernetes_service_endpoints(
    install: Callable[..., Release], kubectl: Any, namespace: str, api_server_endpoints: Any
) -> None:
    # Not "any address on 443/6443": where the `kubernetes` Service leads, looked up at install.
    release = install()
    address, port = api_server_endpoints
    pinned = {
        "to": [{"ipBlock": {"cidr": f"{address}/32"}}],
        "ports": [{"protocol": "TCP", "port": port}],
    }
    for component in ("operator", "gateway"):
        np = kubectl.json(
            "get", "networkpolicy", f"{release.fullname}-{component}", "-n", namespace
        )
        assert api_server_rule(np) == pinned, component


def test_the_api_server_values_win_over_the_lookup(
    install: Callable[..., Release], kubectl: Any, namespace: str
) -> None:
    values = {"networkPolicy": {"apiServerCIDRs": ["10.96.0.0/30"], "apiServerPorts": [443]}}
    release = install(values)
    np = kubectl.json("get", "networkpolicy", f"{release.fullname}-operator", "-n", namespace)
    assert api_server_rule(np) == {
        "to": [{"ipBlock": {"cidr": "10.96.0.0/30"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_without_a_cluster_the_api_server_must_be_named(helm: Helm) -> None:
    rendered = helm.template(offline=False, check=False)
    assert rendered.proc.returncode != 0
    assert "networkPolicy: where is the Kubernetes API server?" in rendered.proc.stderr
    assert (
        "Set networkPolicy.apiServerCIDRs and networkPolicy.apiServerPorts" in rendered.proc.stderr
    )
    off = helm.template({"networkPolicy": {"enabled": False}}, offline=False)
    assert "NetworkPolicy" not in off.kinds()
    named = helm.template(offline=True)  # OFFLINE_API_SERVER: 192.0.2.10/32 on 6443
    assert api_server_rule(named.get("NetworkPolicy", "ks-kubeshot-operator")) == {
        "to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}],
        "ports": [{"protocol": "TCP", "port": 6443}],
    }


@pytest.mark.parametrize(
    ("values", "component"),
    [("local-backend.yaml", "gateway"), (None, "gateway"), (None, "operator")],
    ids=["local", "kubernetes", "operator"],
)
def test_internet_egress_excepts_what_the_egress_guard_refuses(
    helm: Helm, values: str | None, component: str
) -> None:
    # One table for the guard, the operator's capture-pod NetworkPolicies and these: the Azure
    # WireServer (168.63.129.16) and Alibaba's metadata address stay unreachable here too. The
    # local backend captures from the gateway; the gateway sends the webhooks of POST
    # /v1/captures, the operator those of CaptureJobs.
    rendered = helm.template(VALUES_DIR / values if values else None)
    internet = internet_rule(rendered.get("NetworkPolicy", f"ks-kubeshot-{component}"))
    excepted = [c for block in internet["to"] for c in block["ipBlock"]["except"]]
    assert [b["ipBlock"]["cidr"] for b in internet["to"]] == ["0.0.0.0/0", "::/0"]
    assert excepted == UNREACHABLE
    assert "168.63.129.16/32" in excepted
    assert internet["ports"] == [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]


def test_uploads_come_only_from_capture_pods_of_the_watched_namespaces(helm: Helm) -> None:
    def uploaders(values: Any) -> Any:
        gateway = helm.template(values).get("NetworkPolicy", "ks-kubeshot-gateway")
        (rule,) = [r for r in gateway["spec"]["ingress"] if r["ports"][0]["port"] == 8081]
        return rule["from"]

    capture = {
        "app.kubernetes.io/component": "capture",
        "app.kubernetes.io/managed-by": "kubeshot-operator",
    }
    watched = {
        "key": "kubernetes.io/metadata.name",
        "operator": "In",
        "values": ["team-a", "team-b"],
    }
    assert uploaders(VALUES_DIR / "namespaced.yaml") == [
        {
            "podSelector": {"matchLabels": capture},
            "namespaceSelector": {"matchExpressions": [watched]},
        }
    ]
    # An operator watching every namespace runs capture pods in every namespace.
    assert uploaders(None) == [{"podSelector": {"matchLabels": capture}, "namespaceSelector": {}}]
    # With the S3 store capture pods upload to the bucket: nothing may reach the upload port.
    s3 = {"type": "s3", "s3": {"endpoint": "http://10.20.0.5:9000", "bucket": "shots"}}
    gateway = helm.template({"gateway": {"store": s3}}).get("NetworkPolicy", "ks-kubeshot-gateway")
    assert [r["ports"][0]["port"] for r in gateway["spec"]["ingress"]] == [8080, 9090]


def test_the_bucket_is_opened_on_its_port_to_the_gateway_and_the_operator(helm: Helm) -> None:
    # gateway.store.s3.peers: the same peers the capture pods' policies get (through the
    # operator's KUBESHOT_S3_NETWORK_PEERS), on the endpoint's port.
    peers = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
    s3 = {"endpoint": "https://objects.example.com:9443", "bucket": "shots", "peers": peers}
    rendered = helm.template({"gateway": {"store": {"type": "s3", "s3": s3}}})
    for name in ("ks-kubeshot-gateway", "ks-kubeshot-operator"):
        egress = rendered.get("NetworkPolicy", name)["spec"]["egress"]
        assert {"ports": [{"protocol": "TCP", "port": 9443}], "to": peers} in egress, name
        # The filesystem store opens no bucket: everything else is the same.
        default = helm.template().get("NetworkPolicy", name)["spec"]["egress"]
        assert [r for r in egress if r.get("to") != peers] == default, name
    # AWS S3 without peers (no capture pods here to confine): its port, any address.
    aws = {"type": "s3", "s3": {"bucket": "shots"}}
    gateway = helm.template({"operator": {"enabled": False}, "gateway": {"store": aws}})
    egress = gateway.get("NetworkPolicy", "ks-kubeshot-gateway")["spec"]["egress"]
    assert {"ports": [{"protocol": "TCP", "port": 443}]} in egress

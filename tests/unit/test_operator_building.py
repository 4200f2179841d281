"""The operator's manifests, compared with exact expected dicts (like kubespawner's make_pod tests).

Every field of a capture pod is a security decision; a change to any of them must show up here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeshot.api import CaptureOptions, CaptureRequest, ScreenshotPolicySpec, UploadTarget
from kubeshot.kube.names import dns_name, label_value
from kubeshot.operator import (
    JobRef,
    OperatorSettings,
    PolicyRef,
    build_network_policy,
    build_pod,
    build_request,
    build_secret,
)
from kubeshot.operator.building import (
    confinement_problem,
    owning_job,
    pod_name,
    selects,
)

JOB = JobRef(name="shot", namespace="team-a", uid="1111-2222")
POLICY = PolicyRef(name="default", namespace="team-a", uid="3333-4444")
SETTINGS = OperatorSettings(
    capture_image="registry.example/kubeshot-capture:1.0",
    upload_url="http://kubeshot-gateway.kubeshot.svc:8081/v1/internal/uploads",
)
OWNER = {
    "apiVersion": "kubeshot.dev/v1alpha1",
    "kind": "CaptureJob",
    "name": "shot",
    "uid": "1111-2222",
    "controller": True,
    "blockOwnerDeletion": True,
}
LABELS = {
    "app.kubernetes.io/name": "kubeshot",
    "app.kubernetes.io/component": "capture",
    "app.kubernetes.io/managed-by": "kubeshot-operator",
    "kubeshot.dev/policy": "default",
    "kubeshot.dev/job-uid": "1111-2222",
}


def policy(**spec: Any) -> ScreenshotPolicySpec:
    return ScreenshotPolicySpec.model_validate(spec)


def expected_pod(**spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": 90,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "capture",
                "image": "registry.example/kubeshot-capture:1.0",
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-m", "kubeshot_capture"],
                "env": [
                    {"name": "KUBESHOT_REQUEST", "value": "/var/run/kubeshot/request.json"},
                    {
                        "name": "KUBESHOT_OUTCOME_URL",
                        "value": "http://kubeshot-operator.kubeshot.svc:8082/v1/assignments"
                        "/team-a/shot-1/outcome",
                    },
                    {"name": "KUBESHOT_TERMINATION_LOG", "value": "/dev/termination-log"},
                    {"name": "KUBESHOT_OUTPUT", "value": "/tmp/artifact"},
                    {"name": "HOME", "value": "/tmp"},
                ],
                "resources": {
                    "requests": {"memory": "1Gi", "cpu": "250m"},
                    "limits": {"memory": "1Gi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [
                    {"name": "request", "mountPath": "/var/run/kubeshot", "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "request", "secret": {"secretName": "shot-request", "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }
    spec.update(spec_changes)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "shot-1",
            "namespace": "team-a",
            "labels": {**LABELS, "kubeshot.dev/attempt": "1"},
            "annotations": {"kubeshot.dev/job": "shot"},
            "ownerReferences": [OWNER],
        },
        "spec": spec,
    }


def test_pod_with_the_default_policy() -> None:
    options = CaptureOptions(url="https://example.com")
    assert build_pod(JOB, 1, "default", policy(), options, SETTINGS) == expected_pod()


def test_pod_takes_limits_deadline_and_placement_from_the_policy() -> None:
    spec = policy(
        limits={"memory": "512Mi", "cpu": "500m", "timeoutSeconds": 20},
        runtime={
            "runtimeClassName": "gvisor",
            "nodeSelector": {"kubeshot.dev/capture": "true"},
            "tolerations": [{"key": "capture", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    options = CaptureOptions(url="https://example.com", timeoutSeconds=10)
    pod = build_pod(JOB, 1, "default", spec, options, SETTINGS)
    expected = expected_pod(
        activeDeadlineSeconds=40,  # the caller's 10 s + 30 s grace for browser start and upload
        runtimeClassName="gvisor",
        nodeSelector={"kubeshot.dev/capture": "true"},
        tolerations=[{"key": "capture", "operator": "Exists", "effect": "NoSchedule"}],
    )
    container = expected["spec"]["containers"][0]
    container["resources"] = {
        "requests": {"memory": "512Mi", "cpu": "500m"},
        "limits": {"memory": "512Mi", "cpu": "500m"},
    }
    expected["spec"]["volumes"][1] = {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}
    expected["spec"]["volumes"][2] = {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "512Mi"},
    }
    assert pod == expected


def test_each_attempt_has_its_own_pod_name() -> None:
    options = CaptureOptions(url="https://example.com")
    pod = build_pod(JOB, 3, "default", policy(), options, SETTINGS)
    assert pod["metadata"]["name"] == "shot-3"
    assert pod["metadata"]["labels"]["kubeshot.dev/attempt"] == "3"


def test_long_names_stay_valid() -> None:
    job = JobRef(name="x" * 253, namespace="ns", uid="u")
    assert len(pod_name(job, 10)) <= 253
    assert pod_name(job, 10) != pod_name(job, 11)
    long_policy = "p" * 100
    value = label_value(long_policy)
    assert len(value) <= 63
    assert value == label_value(long_policy)
    assert label_value("default") == "default"
    assert dns_name("a", "b") == "a-b"


def test_secret_holds_the_request_with_the_upload_token() -> None:
    options = CaptureOptions(url="https://example.com")
    request = build_request(
        options,
        policy(),
        upload=UploadTarget(url="http://gw/v1/internal/uploads/team-a/shot", token="t" * 43),
    )
    secret = build_secret(JOB, "default", request)
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "shot-request",
            "namespace": "team-a",
            "labels": LABELS,
            "annotations": {"kubeshot.dev/job": "shot"},
            "ownerReferences": [OWNER],
        },
        "type": "Opaque",
        "immutable": True,
        "stringData": {"request.json": request.to_json()},
    }
    read_back = CaptureRequest.model_validate_json(secret["stringData"]["request.json"])
    assert read_back == request
    assert read_back.upload is not None
    assert read_back.upload.token == "t" * 43


def test_the_secret_reveals_the_proxy_password_to_the_pod_only() -> None:
    from kubeshot.api import ProxyCredentials

    proxy = ProxyCredentials.model_validate(
        {"server": "http://proxy:3128", "username": "u", "password": "hunter2"}
    )
    request = build_request(
        CaptureOptions(url="https://example.com"),
        policy(),
        upload=UploadTarget(url="http://gw/x", token="t" * 20),
        proxy=proxy,
    )
    assert "hunter2" not in repr(request)
    secret = build_secret(JOB, "default", request)
    assert json.loads(secret["stringData"]["request.json"])["proxy"]["password"] == "hunter2"


DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}
GATEWAY_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeshot"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "kubeshot",
                    "app.kubernetes.io/component": "gateway",
                }
            },
        }
    ],
    "ports": [{"protocol": "TCP", "port": 8081}],
}
# Every capture pod reports its outcome to the operator (warm pods ask it for their job).
OPERATOR_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeshot"}},
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "kubeshot",
                    "app.kubernetes.io/component": "operator",
                }
            },
        }
    ],
    "ports": [{"protocol": "TCP", "port": 8082}],
}
# What the egress guard refuses by address (kubeshot.api.networks), excepted from "anywhere".
PRIVATE_V4 = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "168.63.129.16/32",  # Azure WireServer: a public address
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "192.175.48.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
]
PRIVATE_V6 = [
    "::/96",
    "::ffff:0:0:0/96",
    # NAT64 forms of the IPv4 ranges above: a NAT64 gateway leads nowhere the guard refuses.
    "64:ff9b::/104",
    "64:ff9b::a00:0/104",
    "64:ff9b::6440:0/106",
    "64:ff9b::7f00:0/104",
    "64:ff9b::a83f:8110/128",
    "64:ff9b::a9fe:0/112",
    "64:ff9b::ac10:0/108",
    "64:ff9b::c000:0/120",
    "64:ff9b::c000:200/120",
    "64:ff9b::c01f:c400/120",
    "64:ff9b::c034:c100/120",
    "64:ff9b::c058:6300/120",
    "64:ff9b::c0a8:0/112",
    "64:ff9b::c0af:3000/120",
    "64:ff9b::c612:0/111",
    "64:ff9b::c633:6400/120",
    "64:ff9b::cb00:7100/120",
    "64:ff9b::e000:0/99",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "4000::/2",
    "8000::/1",
]
METADATA_V4 = [
    "0.0.0.0/32",
    "100.100.100.200/32",
    "168.63.129.16/32",
    "169.254.169.123/32",
    "169.254.169.254/32",
    "169.254.170.2/32",
    "224.0.0.0/4",
    "255.255.255.255/32",
]
METADATA_V6 = [
    "::/128",
    # (no IPv4-mapped forms: the API server refuses them in an ipBlock) the NAT64 forms of the
    # IPv4 addresses above
    "64:ff9b::/128",
    "64:ff9b::6464:64c8/128",
    "64:ff9b::a83f:8110/128",
    "64:ff9b::a9fe:a97b/128",
    "64:ff9b::a9fe:a9fe/128",
    "64:ff9b::a9fe:aa02/128",
    "64:ff9b::e000:0/100",
    "64:ff9b::ffff:ffff/128",
    "fd00:ec2::23/128",
    "fd00:ec2::254/128",
    "ff00::/8",
]


def expected_network_policy(egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "kubeshot-capture-default",
            "namespace": "team-a",
            "labels": {
                "app.kubernetes.io/name": "kubeshot",
                "app.kubernetes.io/managed-by": "kubeshot-operator",
                "kubeshot.dev/policy": "default",
            },
            "ownerReferences": [
                {
                    "apiVersion": "kubeshot.dev/v1alpha1",
                    "kind": "ScreenshotPolicy",
                    "name": "default",
                    "uid": "3333-4444",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "capture",
                    "kubeshot.dev/policy": "default",
                }
            },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def test_network_policy_of_the_default_policy() -> None:
    internet = {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_V4}},
            {"ipBlock": {"cidr": "::/0", "except": PRIVATE_V6}},
        ],
        "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}],
    }
    assert build_network_policy(POLICY, policy(), SETTINGS) == expected_network_policy(
        [DNS_RULE, GATEWAY_RULE, OPERATOR_RULE, internet]
    )


def test_network_policy_with_allowed_cidrs_and_ports() -> None:
    spec = policy(network={"allowedCIDRs": ["10.20.0.0/16"], "allowedPorts": [8443, 443]})
    internet = {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE_V4}},
            {"ipBlock": {"cidr": "::/0", "except": PRIVATE_V6}},
        ],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 8443}],
    }
    intranet = {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}
    assert build_network_policy(POLICY, spec, SETTINGS) == expected_network_policy(
        [DNS_RULE, GATEWAY_RULE, OPERATOR_RULE, internet, intranet]
    )


def test_network_policy_without_private_blocking_still_excepts_metadata() -> None:
    spec = policy(network={"blockPrivateNetworks": False})
    egress = build_network_policy(POLICY, spec, SETTINGS)["spec"]["egress"]
    assert egress[3]["to"] == [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": METADATA_V4}},
        {"ipBlock": {"cidr": "::/0", "except": METADATA_V6}},
    ]


@pytest.mark.parametrize(
    ("server", "peers", "port"),
    [
        ("http://10.1.2.3:3128", [{"ipBlock": {"cidr": "10.1.2.3/32"}}], 3128),
        (
            "http://proxy.corp:8080",
            [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
            8080,
        ),
        ("https://[fd00::1]", [{"ipBlock": {"cidr": "fd00::1/128"}}], 443),
    ],
)
def test_network_policy_with_a_proxy_allows_only_the_proxy(
    server: str, peers: list[dict[str, Any]], port: int
) -> None:
    spec = policy(network={"proxy": {"server": server}})
    proxy_rule = {"to": peers, "ports": [{"protocol": "TCP", "port": port}]}
    assert build_network_policy(POLICY, spec, SETTINGS) == expected_network_policy(
        [DNS_RULE, GATEWAY_RULE, OPERATOR_RULE, proxy_rule]
    )


def test_network_policy_to_a_gateway_outside_the_cluster_names_its_addresses() -> None:
    settings = SETTINGS.model_copy(update={"gateway_cidrs": ["10.203.0.1/32"]})
    upload = build_network_policy(POLICY, policy(), settings)["spec"]["egress"][1]
    assert upload == {
        "to": [{"ipBlock": {"cidr": "10.203.0.1/32"}}],
        "ports": [{"protocol": "TCP", "port": 8081}],
    }


def test_gateway_cidrs_must_be_networks() -> None:
    with pytest.raises(ValueError, match=r"10\.203\.0\.1/24"):
        OperatorSettings(gateway_cidrs=["10.203.0.1/24"])  # host bits set: a typo, not a range
    assert OperatorSettings(gateway_cidrs=["10.203.0.1"]).gateway_cidrs == ["10.203.0.1/32"]


POD_LABELS = {
    "app.kubernetes.io/name": "kubeshot",
    "app.kubernetes.io/component": "capture",
    "app.kubernetes.io/managed-by": "kubeshot-operator",
    "kubeshot.dev/policy": "default",
}


def as_stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns of a NetworkPolicy: empty lists left out."""
    stored = json.loads(json.dumps(manifest))
    del stored["spec"]["ingress"]
    return stored


def test_a_network_policy_confines_a_pod_only_as_built_and_selecting_it() -> None:
    wanted = build_network_policy(POLICY, policy(), SETTINGS)
    assert confinement_problem(as_stored(wanted), wanted, POD_LABELS) is None
    assert confinement_problem(None, wanted, POD_LABELS) == (
        "NetworkPolicy kubeshot-capture-default does not exist"
    )
    wider = as_stored(wanted)
    wider["spec"]["egress"].append({"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]})
    narrower = as_stored(wanted)
    narrower["spec"]["podSelector"]["matchExpressions"] = [
        {"key": "kubeshot.dev/never", "operator": "Exists"}
    ]
    for changed in (wider, narrower):
        assert confinement_problem(changed, wanted, POD_LABELS) == (
            "NetworkPolicy kubeshot-capture-default is not the one its ScreenshotPolicy asks for"
        )
    other_policy = {**POD_LABELS, "kubeshot.dev/policy": "a1b2c3d4e5f6"}  # a hashed label value
    assert confinement_problem(as_stored(wanted), wanted, other_policy) == (
        "NetworkPolicy kubeshot-capture-default does not select the capture pod"
    )


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ({}, True),
        ({"matchLabels": {"app.kubernetes.io/component": "capture"}}, True),
        ({"matchLabels": {"app.kubernetes.io/component": "gateway"}}, False),
        ({"matchExpressions": [{"key": "kubeshot.dev/policy", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, True),
        (
            {
                "matchExpressions": [
                    {"key": "kubeshot.dev/policy", "operator": "In", "values": ["a", "default"]}
                ]
            },
            True,
        ),
        (
            {
                "matchExpressions": [
                    {"key": "kubeshot.dev/policy", "operator": "NotIn", "values": ["default"]}
                ]
            },
            False,
        ),
        ({"matchExpressions": [{"key": "x", "operator": "Unknown"}]}, False),
    ],
)
def test_label_selectors(selector: dict[str, Any], selected: bool) -> None:
    assert selects(selector, POD_LABELS) is selected


def test_only_a_controller_reference_to_a_capture_job_names_the_owner() -> None:
    pod = build_pod(
        JOB, 1, "default", policy(), CaptureOptions(url="https://example.com/"), SETTINGS
    )
    assert owning_job(pod) == ("shot", "1111-2222")
    not_controller = json.loads(json.dumps(pod))
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    other_kind = json.loads(json.dumps(pod))
    other_kind["metadata"]["ownerReferences"][0]["kind"] = "ReplicaSet"
    no_name = json.loads(json.dumps(pod))  # would address the list of jobs
    no_name["metadata"]["ownerReferences"][0]["name"] = "."
    for manifest in (not_controller, other_kind, no_name, {"metadata": {"name": "shot-1"}}):
        assert owning_job(manifest) is None

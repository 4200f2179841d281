"""Warm capture pods and the chart (issue 14): the operator's assignment endpoint on a Service of
its own, the URL warm pods are given pointing at it, only capture pods admitted to it, and the
default policy's pool set through its spec."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cluster.chart.conftest import VALUES_DIR, Helm, Rendered

CAPTURE_PODS = {
    "app.kubernetes.io/component": "capture",
    "app.kubernetes.io/managed-by": "kubeshot-operator",
}


def _template(rendered: Rendered, deployment: str) -> Any:
    return rendered.get("Deployment", deployment)["spec"]["template"]


def _assignment_rule(rendered: Rendered, port: int) -> Any:
    netpol = rendered.get("NetworkPolicy", "ks-kubeshot-operator")
    rules = [
        r for r in netpol["spec"]["ingress"] if {"protocol": "TCP", "port": port} in r["ports"]
    ]
    assert len(rules) == 1, netpol["spec"]["ingress"]
    return rules[0]


@pytest.mark.parametrize("port", [8082, 9443])
def test_warm_pods_are_sent_to_the_operator_service_on_the_assignment_port(
    helm: Helm, port: int
) -> None:
    rendered = helm.template(
        {"operator": {"assignmentPort": port}}, namespace="shots", release="prod"
    )
    env = rendered.env("prod-kubeshot-operator")
    assert env["KUBESHOT_OPERATOR_ASSIGNMENT_URL"] == (
        f"http://prod-kubeshot-operator.shots.svc:{port}/v1/assignments"
    )
    assert env["KUBESHOT_OPERATOR_ASSIGNMENT_PORT"] == str(port)
    assert env["KUBESHOT_OPERATOR_OPERATOR_NAMESPACE"] == "shots"
    operator = _template(rendered, "prod-kubeshot-operator")
    [container] = operator["spec"]["containers"]
    assert {"name": "assignment", "containerPort": port, "protocol": "TCP"} in container["ports"]
    service = rendered.get("Service", "prod-kubeshot-operator", namespace="shots")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "assignment", "port": port, "targetPort": "assignment", "protocol": "TCP"}
    ]
    # The Service and the capture pods' NetworkPolicy (OPERATOR_POD_LABELS) select the operator
    # pods, and nothing of the gateway's.
    selector = service["spec"]["selector"]
    assert json.loads(env["KUBESHOT_OPERATOR_OPERATOR_POD_LABELS"]) == selector
    assert selector.items() <= operator["metadata"]["labels"].items()
    gateway = _template(rendered, "prod-kubeshot-gateway")
    assert not selector.items() <= gateway["metadata"]["labels"].items()


def test_only_capture_pods_of_the_watched_namespaces_reach_the_assignment_port(
    helm: Helm,
) -> None:
    # An operator watching every namespace runs warm pods in every namespace.
    everywhere = _assignment_rule(helm.template(), 8082)
    assert everywhere["from"] == [{"podSelector": {"matchLabels": CAPTURE_PODS},
                                   "namespaceSelector": {}}]  # fmt: skip
    namespaced = _assignment_rule(helm.template(VALUES_DIR / "namespaced.yaml"), 8082)
    watched = {"key": "kubernetes.io/metadata.name", "operator": "In",
               "values": ["team-a", "team-b"]}  # fmt: skip
    assert namespaced["from"] == [
        {"podSelector": {"matchLabels": CAPTURE_PODS},
         "namespaceSelector": {"matchExpressions": [watched]}}
    ]  # fmt: skip
    # Scrapers admitted to /metrics are not admitted to the assignment port.
    scrapers = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    rendered = helm.template({"networkPolicy": {"metricsFrom": scrapers}})
    assert _assignment_rule(rendered, 8082)["from"] == everywhere["from"]
    assert _assignment_rule(rendered, 8080)["from"] == scrapers


def test_the_default_policy_keeps_warm_pods_when_its_spec_asks(helm: Helm) -> None:
    assert "runtime" not in helm.template().get("ScreenshotPolicy")["spec"]  # the CRD's 0
    runtime = {"warmPods": 3, "warmIdleSeconds": 300}
    policy = helm.template({"defaultPolicy": {"spec": {"runtime": runtime}}}).get(
        "ScreenshotPolicy"
    )
    assert policy["spec"]["runtime"] == runtime


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"defaultPolicy": {"spec": {"runtime": {"warmPods": 51}}}},
            "/defaultPolicy/spec/runtime/warmPods",
        ),
        (
            {"defaultPolicy": {"spec": {"runtime": {"warmPods": -1}}}},
            "/defaultPolicy/spec/runtime/warmPods",
        ),
        (
            {"defaultPolicy": {"spec": {"runtime": {"warmIdleSeconds": 5}}}},
            "/defaultPolicy/spec/runtime/warmIdleSeconds",
        ),
        ({"operator": {"assignmentPort": 0}}, "/operator/assignmentPort"),
        ({"operator": {"assignmentPort": 8080}}, "operator.assignmentPort must differ"),
    ],
)
def test_warm_values_that_cannot_work_are_refused(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    rendered = helm.template(values, check=False)
    assert rendered.proc.returncode != 0
    assert message in rendered.proc.stderr, rendered.proc.stderr

"""The chart's observability objects: metrics Services and ServiceMonitors off the callers' path,
the PrometheusRule (valid PromQL that names only exported series, alerts that fire), the Grafana
dashboard, the gateway's HPA and the example KEDA ScaledObject; and the operator's real /metrics
through promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

import kubeshot.operator.metrics  # noqa: F401 - registers the operator's metrics in REGISTRY
from kubeshot.gateway.metrics import Metrics
from tests.cluster.chart.conftest import CHART, VALUES_DIR, Helm, Release, Rendered
from tests.cluster.operator.conftest import Cluster, Operator
from tests.conftest import need
from tests.gateway.test_metrics import promtool_check
from tests.support import wait_for

OBSERVABILITY = VALUES_DIR / "observability.yaml"
KEDA = VALUES_DIR / "keda-local.yaml"
# What more than one gateway replica needs: an S3 store and Redis.
SHARED_STATE: dict[str, Any] = {
    "store": {"type": "s3", "s3": {"bucket": "shots"}},
    "redis": {"enabled": True, "urlSecret": "kubeshot-redis"},
}
DASHBOARD = CHART / "dashboards" / "kubeshot.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# A series name in PromQL: a word that starts a selector or a bare name, not a function or label.
_NAME = re.compile(r"\b((?:kubeshot|process|python)_[a-z_]+)\b")


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's metrics expose (counters as _total, histograms as
    _bucket/_sum/_count), whether or not a labelled metric has samples yet."""
    names: set[str] = set()
    for family in registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


EXPORTED = series_names(Metrics().registry) | series_names(REGISTRY)


def referenced(expressions: Iterable[str]) -> set[str]:
    return {name for expr in expressions for name in _NAME.findall(expr)}


def promtool() -> str:
    path = shutil.which("promtool")
    need(path, "promtool not found (make packages: Debian's prometheus package)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def observability(helm: Helm) -> Rendered:
    return helm.template(OBSERVABILITY)


def test_metrics_ports_are_off_the_callers_service_and_ingress(
    helm: Helm, observability: Rendered
) -> None:
    services = {s["metadata"]["name"]: s for s in observability.all("Service")}
    assert sorted(services) == [
        "ks-kubeshot-gateway",
        "ks-kubeshot-gateway-metrics",
        "ks-kubeshot-operator",  # warm capture pods' assignments only (test_chart_warm.py)
        "ks-kubeshot-operator-metrics",
    ]
    callers = services["ks-kubeshot-gateway"]
    assert [p["name"] for p in callers["spec"]["ports"]] == ["https", "upload"]
    assert services["ks-kubeshot-gateway-metrics"]["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    container = observability.get("Deployment", "ks-kubeshot-gateway")["spec"]["template"]
    container = container["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"api": 8080, "upload": 8081, "metrics": 9090}
    assert observability.env("ks-kubeshot-gateway")["KUBESHOT_METRICS_PORT"] == "9090"
    # Each ServiceMonitor selects exactly its component's metrics Service, port `metrics`.
    for monitor in observability.all("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        chosen = [
            name
            for name, service in services.items()
            if selector.items() <= service["metadata"]["labels"].items()
        ]
        assert chosen == [f"{monitor['metadata']['name']}-metrics"], chosen
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["spec"]["endpoints"][0]["scheme"] == "http"
    # The gateway NetworkPolicy admits scrapes to the metrics port.
    netpol = observability.get("NetworkPolicy", "ks-kubeshot-gateway")
    admitted = [p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]]
    assert 9090 in admitted
    # Through an Ingress, only the callers' Service and its API port.
    with_ingress = helm.template(VALUES_DIR / "ingress-cert-manager.yaml")
    for rule in with_ingress.get("Ingress")["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "ks-kubeshot-gateway"
            assert backend["port"].get("name") != "metrics"
            assert backend["port"].get("number") != 9090


def test_prometheus_rule_is_valid_and_names_exported_series(
    observability: Rendered, tmp_path: Path
) -> None:
    rule = observability.get("PrometheusRule", "ks-kubeshot")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "KubeshotGatewayErrorRate",
        "KubeshotGatewayQueueSaturated",
        "KubeshotGatewayOverloaded",
        "KubeshotOperatorNoLeader",
        "KubeshotOperatorReconcileErrors",
        "KubeshotCapturePodsFailing",
        "KubeshotCaptureJobsWaiting",
    }
    for name, alert in alerts.items():
        annotations = alert["annotations"]
        assert annotations["runbook"] and annotations["summary"], name
        assert annotations["runbook_url"].endswith("#" + name.lower()), name
    names = referenced(a["expr"] for a in alerts.values())
    assert names, "no metric found in the alert expressions"
    assert names <= EXPORTED, f"alerts on series no daemon exports: {sorted(names - EXPORTED)}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(
        [promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alerts_fire_on_the_series_the_daemons_export(
    observability: Rendered, tmp_path: Path
) -> None:
    """`promtool test rules`: synthetic series as the ServiceMonitor labels them make the
    leader and error-rate alerts fire (with their annotations rendered), and keep the others
    quiet."""
    rule = observability.get("PrometheusRule", "ks-kubeshot")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    alerts = {r["alert"]: r["annotations"] for g in rule["spec"]["groups"] for r in g["rules"]}
    gw = 'namespace="kubeshot", service="ks-kubeshot-gateway-metrics", pod="gw-1"'
    op = 'namespace="kubeshot", service="ks-kubeshot-operator-metrics", pod="op-1"'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"kubeshot_operator_leader{{{op}}}", "values": "1 1 1 0x20"},
                    {
                        "series": f'kubeshot_http_requests_total{{{gw}, route="screenshot", '
                        'status="200"}',
                        "values": "0+10x30",
                    },
                    {
                        "series": f'kubeshot_http_requests_total{{{gw}, route="screenshot", '
                        'status="502"}',
                        "values": "0+5x30",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "KubeshotOperatorNoLeader", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "KubeshotOperatorNoLeader",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical"},
                                "exp_annotations": alerts["KubeshotOperatorNoLeader"],
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "KubeshotGatewayErrorRate",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning"},
                                "exp_annotations": {
                                    **alerts["KubeshotGatewayErrorRate"],
                                    # 5 of every 15 requests
                                    "summary": "The kubeshot gateway answers 33.33% of requests "
                                    "with 5xx.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "KubeshotGatewayOverloaded",
                        "exp_alerts": [],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_dashboard_is_json_on_exported_series(observability: Rendered) -> None:
    configmap = observability.get("ConfigMap", "ks-kubeshot-dashboard")
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "kubeshot"}
    dashboard = json.loads(configmap["data"]["kubeshot.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "kubeshot-overview"
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 20
    names = referenced(expressions)
    assert names <= EXPORTED, f"panels on series no daemon exports: {sorted(names - EXPORTED)}"
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))


def test_gateway_hpa_replaces_the_replica_count(observability: Rendered, helm: Helm) -> None:
    hpa = observability.get("HorizontalPodAutoscaler", "ks-kubeshot-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ks-kubeshot-gateway",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    assert "replicas" not in observability.get("Deployment", "ks-kubeshot-gateway")["spec"]
    # The queue-depth metric, with the local backend.
    local = helm.template(
        {
            "operator": {"enabled": False},
            "defaultPolicy": {"enabled": False},
            "gateway": {
                "backend": "local",
                **SHARED_STATE,
                "autoscaling": {"enabled": True, "queueDepthPerPod": 3},
            },
        }
    )
    metrics = local.get("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics[1]["pods"] == {
        "metric": {"name": "kubeshot_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": "3"},
    }
    assert "kubeshot_queue_depth" in EXPORTED


def test_keda_example_scales_on_the_queue_depth(helm: Helm) -> None:
    rendered = helm.template(KEDA)
    scaled = rendered.get("ScaledObject", "ks-kubeshot-gateway")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "ks-kubeshot-gateway"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 4)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
    assert trigger["metadata"]["threshold"] == "2"
    query = trigger["metadata"]["query"]
    assert referenced([query]) == {"kubeshot_queue_depth"} <= EXPORTED
    assert 'service="ks-kubeshot-gateway-metrics"' in query
    assert "replicas" not in rendered.get("Deployment", "ks-kubeshot-gateway")["spec"]
    assert "HorizontalPodAutoscaler" not in rendered.kinds()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"metricsPort": 8080}},
            "gateway.metricsPort must differ from gateway.port and gateway.uploadPort",
        ),
        (
            {"gateway": {"autoscaling": {"enabled": True, "maxReplicas": 3}}},
            "at '/gateway/store/type': value must be 's3'",
        ),
        (
            {
                "gateway": {
                    **SHARED_STATE,
                    "autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 2},
                }
            },
            "minReplicas is larger than gateway.autoscaling.maxReplicas",
        ),
        (
            {
                "gateway": {
                    **SHARED_STATE,
                    "autoscaling": {"enabled": True},
                    "resources": {"requests": {"cpu": None}},
                }
            },
            "set gateway.resources.requests.cpu",
        ),
        (
            {
                "gateway": {
                    **SHARED_STATE,
                    "keda": {"enabled": True, "serverAddress": "http://prometheus:9090"},
                }
            },
            "with backend kubernetes captures wait in the operator",
        ),
        (
            {
                "gateway": {
                    "backend": "local",
                    **SHARED_STATE,
                    "keda": {"enabled": True},
                    "autoscaling": {"enabled": True},
                }
            },
            "gateway.autoscaling and gateway.keda both scale the gateway",
        ),
        (
            {
                "gateway": {
                    "backend": "local",
                    **SHARED_STATE,
                    "keda": {"enabled": True},
                }
            },
            "gateway.keda.serverAddress is required",
        ),
        ({"gateway": {"keda": {"minReplicaCount": 0}}}, "minReplicaCount"),
        ({"metrics": {"prometheusRule": {"errorRatio": 0}}}, "errorRatio"),
        ({"metrics": {"prometheusRule": {"leaderlessFor": "five"}}}, "leaderlessFor"),
    ],
)
def test_observability_values_are_refused_when_they_cannot_work(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    proc = helm.template(values, check=False).proc
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_operator_metrics_pass_promtool_and_carry_the_alerted_series(
    install: Callable[..., Release],
    chart_operator: Callable[..., Operator],
    control_plane: Any,
    kubectl: Any,
    namespace: str,
    observability: Rendered,
) -> None:
    """The real operator, as the chart runs it, after one CaptureJob got its pod: promtool finds
    nothing to say, and every operator series the alerts and the dashboard use is there."""
    release = install({"operator": {"watchNamespaces": [namespace]}})
    operator = chart_operator(release)
    operator.wait_leader()
    cluster = Cluster(control_plane, kubectl, namespace)
    wait_for(lambda: cluster.policy() is not None, what="the chart's default policy")
    cluster.create_job("measured", html="<p>metrics</p>")
    cluster.wait_pod("measured-1")
    measured = ("kubeshot_operator_workqueue_queue_duration_seconds_count 1.0", "jobs{phase=")
    wait_for(
        lambda: all(sample in operator.metrics() for sample in measured),
        what="the work-queue histogram and the jobs gauge (set by the next sweep)",
    )
    text = operator.metrics()
    promtool_check(text)
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    rule = observability.get("PrometheusRule", "ks-kubeshot")
    dashboard = json.loads(
        observability.get("ConfigMap", "ks-kubeshot-dashboard")["data"]["kubeshot.json"]
    )
    expressions = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    expressions += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    wanted = {n for n in referenced(expressions) if n.startswith("kubeshot_operator_")}
    # Counters with labels show once counted; the rest must be in this scrape.
    counted_later = {"kubeshot_operator_jobs_finished_total", "kubeshot_operator_retries_total"}
    missing = wanted - scraped - counted_later
    assert not missing, f"not in the operator's /metrics: {sorted(missing)}"
    assert 'kubeshot_operator_reconcile_total{controller="CaptureJob",result="success"}' in text
    assert "kubeshot_build_info{" in text
    assert "process_resident_memory_bytes" in text

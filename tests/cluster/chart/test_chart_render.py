"""The chart without a cluster: lint, render with default and non-default values, the schema and the
chart's own checks refuse bad values, CRDs and generated files in sync, locked-down pods,
least-privilege RBAC rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.chart.conftest import CHART, OFFLINE_API_SERVER, VALUES_DIR, Helm, Rendered
from tests.conftest import ROOT

VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))

# Every rule the chart grants, and why (the code paths are in operator/kubeshot/operator/).
OPERATOR_RULES = {
    ("kubeshot.dev", "capturejobs"): {"get", "list", "watch", "delete"},
    ("kubeshot.dev", "screenshotpolicies"): {"get", "list", "watch"},
    ("kubeshot.dev", "capturejobs/status"): {"patch"},
    ("kubeshot.dev", "screenshotpolicies/status"): {"patch"},
    ("kubeshot.dev", "capturejobs/finalizers"): {"update"},
    ("kubeshot.dev", "screenshotpolicies/finalizers"): {"update"},
    ("", "pods"): {"create", "get", "list", "watch", "patch", "delete"},  # patch: warm claims
    ("", "secrets"): {"create", "get", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch"},
    ("", "events"): {"create"},
}
GATEWAY_RULES = {
    ("kubeshot.dev", "capturejobs"): {"create", "get", "list", "watch"},
    ("kubeshot.dev", "screenshotpolicies"): {"get", "list", "watch"},
    ("", "secrets"): {"create", "update", "delete"},  # a webhook's own Secret (cluster.py)
}


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def pod_specs(rendered: Rendered) -> dict[str, dict[str, Any]]:
    deployments = rendered.all("Deployment")
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in deployments}


def test_helm_lint_strict_with_every_values_file(helm: Helm) -> None:
    offline = helm.values_args(OFFLINE_API_SERVER)  # lint has no cluster to look the API up in
    helm("lint", "--strict", str(CHART), *offline)
    for values in VALUES_FILES:
        helm("lint", "--strict", str(CHART), *offline, "-f", str(values))


def test_defaults_render_the_whole_install(helm: Helm) -> None:
    rendered = helm.template()
    kinds = rendered.kinds()
    assert sorted(kinds["Deployment"]) == ["ks-kubeshot-gateway", "ks-kubeshot-operator"]
    assert sorted(kinds["ServiceAccount"]) == ["ks-kubeshot-gateway", "ks-kubeshot-operator"]
    assert sorted(kinds["Service"]) == [
        "ks-kubeshot-gateway",
        "ks-kubeshot-gateway-metrics",
        "ks-kubeshot-operator",
        "ks-kubeshot-operator-metrics",
    ]
    assert sorted(kinds["NetworkPolicy"]) == ["ks-kubeshot-gateway", "ks-kubeshot-operator"]
    assert sorted(kinds["PodDisruptionBudget"]) == ["ks-kubeshot-gateway", "ks-kubeshot-operator"]
    assert kinds["PersistentVolumeClaim"] == ["ks-kubeshot-results"]
    assert sorted(kinds["Secret"]) == ["ks-kubeshot-auth", "ks-kubeshot-gateway-tls"]
    assert rendered.get("Secret", "ks-kubeshot-gateway-tls")["type"] == "kubernetes.io/tls"
    assert kinds["ScreenshotPolicy"] == ["default"]
    assert sorted(kinds["ClusterRole"]) == [
        "ks-kubeshot-gateway",
        "ks-kubeshot-operator",
        "ks-kubeshot-operator-discovery",
    ]
    assert kinds["Role"] == ["ks-kubeshot-operator-lease"]
    for absent in ("Ingress", "Certificate", "ServiceMonitor", "CustomResourceDefinition"):
        assert absent not in kinds  # CRDs live in crds/, installed by Helm, never templated
    policy = rendered.get("ScreenshotPolicy")
    assert policy["metadata"]["namespace"] == "kubeshot"
    assert policy["spec"] == {}


def test_operator_environment_points_at_the_gateway_and_its_pods(helm: Helm) -> None:
    rendered = helm.template(namespace="shots", release="prod")
    env = rendered.env("prod-kubeshot-operator")
    assert env["KUBESHOT_OPERATOR_UPLOAD_URL"] == (
        "http://prod-kubeshot-gateway.shots.svc:8081/v1/internal/uploads"
    )
    assert env["KUBESHOT_OPERATOR_GATEWAY_NAMESPACE"] == "shots"
    gateway = rendered.get("Deployment", "prod-kubeshot-gateway")
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    selector = json.loads(env["KUBESHOT_OPERATOR_GATEWAY_POD_LABELS"])
    assert selector.items() <= pod_labels.items()
    assert selector["app.kubernetes.io/component"] == "gateway"
    assert env["KUBESHOT_OPERATOR_CAPTURE_IMAGE"] == "ghcr.io/kubeshot/capture:0.1.0"
    assert env["KUBESHOT_OPERATOR_NAMESPACES"] == "[]"
    assert env["KUBESHOT_OPERATOR_LEASE_NAMESPACE"] == "shots"
    role = rendered.get("Role", "prod-kubeshot-operator-lease")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named[0]["resourceNames"] == [env["KUBESHOT_OPERATOR_LEASE_NAME"]]
    service = rendered.get("Service", "prod-kubeshot-gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "https": 443,
        "upload": 8081,
    }
    gateway_env = rendered.env("prod-kubeshot-gateway")
    assert gateway_env["KUBESHOT_TLS_CERT"] == "/etc/kubeshot/tls/tls.crt"


BUCKET_PEERS = [{"ipBlock": {"cidr": "10.20.0.0/24"}}]
S3_STORE = {
    "type": "s3",
    "s3": {
        "endpoint": "https://objects.example.com:9443",
        "bucket": "shots",
        "prefix": "team-a",
        "credentialsSecret": "kubeshot-s3",
        "peers": BUCKET_PEERS,
    },
}


def test_the_operator_reads_the_store_the_gateway_reads(helm: Helm) -> None:
    # One StoreSettings in both: the operator mints each capture pod's presigned upload to the
    # bucket the gateway serves artifacts from. The keys are files, never environment values.
    rendered = helm.template({"gateway": {"store": S3_STORE}})

    def store_env(deployment: str) -> dict[str, Any]:
        env = rendered.env(deployment)
        return {k: v for k, v in env.items() if k.startswith(("KUBESHOT_STORE", "KUBESHOT_S3_"))}

    expected = {
        "KUBESHOT_STORE": "s3",
        "KUBESHOT_STORE_DOWNLOAD": "gateway",
        "KUBESHOT_S3_BUCKET": "shots",
        "KUBESHOT_S3_PREFIX": "team-a",
        "KUBESHOT_S3_REGION": "us-east-1",
        "KUBESHOT_S3_ENDPOINT": "https://objects.example.com:9443",
        "KUBESHOT_S3_ACCESS_KEY_ID_FILE": "/etc/kubeshot/s3/accessKeyId",
        "KUBESHOT_S3_SECRET_ACCESS_KEY_FILE": "/etc/kubeshot/s3/secretAccessKey",
        "KUBESHOT_S3_NETWORK_PEERS": json.dumps(BUCKET_PEERS, separators=(",", ":")),
    }
    assert store_env("ks-kubeshot-gateway") == expected
    assert store_env("ks-kubeshot-operator") == expected
    specs = pod_specs(rendered)
    for name in ("ks-kubeshot-gateway", "ks-kubeshot-operator"):
        mounts = {m["name"]: m for m in specs[name]["containers"][0]["volumeMounts"]}
        assert mounts["s3-credentials"] == {
            "name": "s3-credentials",
            "mountPath": "/etc/kubeshot/s3",
            "readOnly": True,
        }, name
        volumes = {v["name"]: v for v in specs[name]["volumes"]}
        assert volumes["s3-credentials"]["secret"]["secretName"] == "kubeshot-s3", name
        assert volumes["s3-credentials"]["secret"]["defaultMode"] == 0o440, name
    # The filesystem store (the default): the operator hands capture pods the gateway's upload
    # endpoint; nothing of a bucket is mounted anywhere.
    # An IP address as the endpoint: the operator opens that address itself, peers may be left out.
    ip = {"type": "s3", "s3": {"endpoint": "http://10.20.0.5:9000", "bucket": "shots"}}
    assert "KUBESHOT_S3_NETWORK_PEERS" not in helm.template({"gateway": {"store": ip}}).env(
        "ks-kubeshot-operator"
    )
    default = helm.template()
    for name in ("ks-kubeshot-gateway", "ks-kubeshot-operator"):
        env = default.env(name)
        assert env["KUBESHOT_STORE"] == "filesystem", name
        assert not [k for k in env if "_S3_" in k], name
        assert "s3-credentials" not in {v["name"] for v in pod_specs(default)[name]["volumes"]}


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.stem if v else "default")
def test_every_pod_meets_the_restricted_standard(helm: Helm, values: Path | None) -> None:
    for name, spec in pod_specs(helm.template(values)).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["enableServiceLinks"] is False
        assert spec["topologySpreadConstraints"], name
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["requests"], name
            assert container["resources"]["limits"]["memory"], name
            assert container["livenessProbe"] and container["readinessProbe"], name


@pytest.mark.parametrize("values", [None, *VALUES_FILES], ids=lambda v: v.stem if v else "default")
def test_rbac_is_least_privilege(helm: Helm, values: Path | None) -> None:
    rendered = helm.template(values)
    for role in rendered.all("ClusterRole") + rendered.all("Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], f"wildcard in {role['metadata']['name']}: {rule}"
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
        granted = rules_of(role)
        assert not {"list", "watch"} & granted.get(("", "secrets"), set()), "Secrets never listed"
    roles = {r["metadata"]["name"]: r for r in rendered.all("ClusterRole")}
    if "ks-kubeshot-operator" in roles:
        assert rules_of(roles["ks-kubeshot-operator"]) == OPERATOR_RULES
        discovery = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
        if values and "namespaced" in values.name:
            discovery[("", "namespaces")] = {"list", "watch"}
        assert rules_of(roles["ks-kubeshot-operator-discovery"]) == discovery
    if "ks-kubeshot-gateway" in roles:
        assert rules_of(roles["ks-kubeshot-gateway"]) == GATEWAY_RULES


def test_namespaced_install_binds_roles_per_namespace_only(helm: Helm) -> None:
    rendered = helm.template(VALUES_DIR / "namespaced.yaml")
    kinds = rendered.kinds()
    assert sorted(kinds["ClusterRoleBinding"]) == ["ks-kubeshot-operator-discovery"]
    bindings = rendered.all("RoleBinding")
    by_namespace = sorted((b["metadata"]["namespace"], b["metadata"]["name"]) for b in bindings)
    assert by_namespace == [
        ("kubeshot", "ks-kubeshot-operator-lease"),
        ("team-a", "ks-kubeshot-gateway"),
        ("team-a", "ks-kubeshot-operator"),
        ("team-b", "ks-kubeshot-gateway"),
        ("team-b", "ks-kubeshot-operator"),
    ]
    env = rendered.env("ks-kubeshot-operator")
    assert env["KUBESHOT_OPERATOR_NAMESPACES"] == '["team-a","team-b"]'
    policies = rendered.all("ScreenshotPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    assert policies[0]["spec"]["network"]["allowedDomains"] == ["example.com"]
    netpol = rendered.get("NetworkPolicy", "ks-kubeshot-gateway")
    upload = netpol["spec"]["ingress"][1]["from"][0]
    assert upload["namespaceSelector"]["matchExpressions"][0]["values"] == ["team-a", "team-b"]


def test_ingress_with_cert_manager_and_service_monitor(helm: Helm) -> None:
    rendered = helm.template(VALUES_DIR / "ingress-cert-manager.yaml")
    ingress = rendered.get("Ingress")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["shots.example.com"], "secretName": "ks-kubeshot-gateway-ingress-tls"}
    ]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "ks-kubeshot-gateway", "port": {"name": "https"}}
    certificate = rendered.get("Certificate")
    assert certificate["spec"]["secretName"] == "ks-kubeshot-gateway-tls"
    assert certificate["spec"]["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert "ks-kubeshot-gateway.kubeshot.svc" in certificate["spec"]["dnsNames"]
    assert "shots.internal.example" in certificate["spec"]["dnsNames"]
    env = rendered.env("ks-kubeshot-gateway")
    assert env["KUBESHOT_TLS_CERT"] == "/etc/kubeshot/tls/tls.crt"
    assert env["TRUSTED_PROXIES"] == "10.244.0.0/16"
    assert env["HTTPS_ONLY"] == "true"
    gateway = rendered.get("Deployment", "ks-kubeshot-gateway")["spec"]["template"]["spec"]
    probe = gateway["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["scheme"] == "HTTPS"
    volumes = {v["name"]: v for v in gateway["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "ks-kubeshot-gateway-tls"
    service = rendered.get("Service", "ks-kubeshot-gateway")
    assert service["spec"]["ports"][0] == {
        "name": "https",
        "port": 443,
        "targetPort": "api",
        "protocol": "TCP",
    }
    monitors = rendered.all("ServiceMonitor")
    assert sorted(m["metadata"]["name"] for m in monitors) == [
        "ks-kubeshot-gateway",
        "ks-kubeshot-operator",
    ]
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors)
    netpol = rendered.get("NetworkPolicy", "ks-kubeshot-operator")
    api = netpol["spec"]["egress"][1]
    assert api == {
        "to": [{"ipBlock": {"cidr": "172.18.0.2/32"}}],
        "ports": [{"protocol": "TCP", "port": 6443}],
    }
    gateway_np = rendered.get("NetworkPolicy", "ks-kubeshot-gateway")
    assert gateway_np["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_local_backend_gateway_gets_no_api_access(helm: Helm) -> None:
    rendered = helm.template(VALUES_DIR / "local-backend.yaml")
    kinds = rendered.kinds()
    assert kinds["Deployment"] == ["ks-kubeshot-gateway"]
    assert "ClusterRole" not in kinds
    assert "Role" not in kinds
    assert "ScreenshotPolicy" not in kinds
    assert "PersistentVolumeClaim" not in kinds
    spec = pod_specs(rendered)["ks-kubeshot-gateway"]
    assert spec["automountServiceAccountToken"] is False
    assert {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"
    egress = rendered.get("NetworkPolicy", "ks-kubeshot-gateway")["spec"]["egress"]
    internet = egress[1]["to"][0]["ipBlock"]
    assert internet["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"} <= set(
        internet["except"]
    )


def test_ha_with_existing_secrets_and_pinned_images(helm: Helm) -> None:
    rendered = helm.template(VALUES_DIR / "ha-existing-secrets.yaml")
    kinds = rendered.kinds()
    assert kinds["Secret"] == ["ks-kubeshot-gateway-tls"]  # no auth Secret generated
    env = rendered.env("ks-kubeshot-gateway")
    assert env["AUTH_TOKEN"] == {"secretKeyRef": {"name": "kubeshot-credentials", "key": "bearer"}}
    assert env["URL_SIGNING_SECRET"] == {
        "secretKeyRef": {"name": "kubeshot-credentials", "key": "hmac"}
    }
    assert env["TOKENS_FILE"] == "/etc/kubeshot/tokens/tokens.yaml"
    deployment = rendered.get("Deployment", "ks-kubeshot-gateway")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # no claim to hand over: rolling updates
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == (
        "registry.example.com/platform/kubeshot:0.1.0@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    assert container["imagePullPolicy"] == "Always"
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [
        {"name": "registry-credentials"}
    ]
    operator_env = rendered.env("ks-kubeshot-operator")
    assert operator_env["KUBESHOT_OPERATOR_CAPTURE_IMAGE"] == (
        "registry.example.com/platform/capture:0.1.0"
    )
    for pdb in rendered.all("PodDisruptionBudget"):
        assert pdb["spec"]["minAvailable"] == 1
        assert "maxUnavailable" not in pdb["spec"]
    # Replicas share a bucket and Redis; the directory left is an emptyDir, with no claim.
    assert "PersistentVolumeClaim" not in kinds
    assert env["KUBESHOT_STORE"] == "s3" and env["KUBESHOT_S3_BUCKET"] == "shots"
    assert env["KUBESHOT_REDIS_URL"] == {"secretKeyRef": {"name": "kubeshot-redis", "key": "url"}}
    assert env["KUBESHOT_S3_SECRET_ACCESS_KEY_FILE"] == "/etc/kubeshot/s3/secretAccessKey"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["results"]
    assert volumes["s3-credentials"]["secret"]["secretName"] == "kubeshot-s3"
    egress = rendered.get("NetworkPolicy", "ks-kubeshot-gateway")["spec"]["egress"]
    minio = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
             "podSelector": {"matchLabels": {"app": "minio"}}}  # fmt: skip
    assert {"ports": [{"protocol": "TCP", "port": 9000}], "to": [minio]} in egress  # the bucket
    assert json.loads(rendered.env("ks-kubeshot-operator")["KUBESHOT_S3_NETWORK_PEERS"]) == [minio]
    assert {"ports": [{"protocol": "TCP", "port": 6379}]} in egress  # Redis
    for doc in rendered.docs:
        assert doc["metadata"]["labels"]["team"] == "platform", doc["metadata"]["name"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operater": {"enabled": True}}, "additional properties 'operater' not allowed"),
        ({"gateway": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
        ({"gateway": {"replicaCount": "two"}}, "/gateway/replicaCount"),
        # More than one replica shares its state: an S3 store and Redis, nothing else.
        ({"gateway": {"replicaCount": 2}}, "at '/gateway/store/type': value must be 's3'"),
        (
            {"gateway": {"replicaCount": 2, "store": {"type": "s3", "s3": {"bucket": "b1b"}}}},
            "at '/gateway/redis/enabled': value must be true",
        ),
        (
            {"gateway": {"persistence": {"accessModes": ["ReadWriteMany"]}, "replicaCount": 2}},
            "at '/gateway/store/type': value must be 's3'",
        ),
        ({"gateway": {"store": {"type": "s3"}}}, "/gateway/store/s3/bucket"),
        ({"gateway": {"store": {"download": "presigned"}}}, "/gateway/store/type"),
        ({"gateway": {"redis": {"enabled": True}}}, "/gateway/redis/urlSecret"),
        ({"gateway": {"backend": "docker"}}, "/gateway/backend"),
        ({"gateway": {"port": 70000}}, "/gateway/port"),
        ({"gateway": {"httpsOnly": "yes"}}, "/gateway/httpsOnly"),
        ({"gateway": {"rateLimit": {"capture": "fast"}}}, "/gateway/rateLimit/capture"),
        ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        (
            {"defaultPolicy": {"spec": {"network": {"allowedDomain": ["example.com"]}}}},
            "additional properties 'allowedDomain' not allowed",
        ),
        (
            {"defaultPolicy": {"spec": {"limits": {"timeoutSeconds": "slow"}}}},
            "/defaultPolicy/spec/limits/timeoutSeconds",
        ),
        ({"networkPolicy": {"apiServerCIDRs": ["10.0.0.1"]}}, "/networkPolicy/apiServerCIDRs/0"),
    ],
)
def test_schema_rejects_wrong_values(helm: Helm, values: dict[str, Any], message: str) -> None:
    rendered = helm.template(values, check=False)
    assert rendered.proc.returncode != 0
    assert message in rendered.proc.stderr, rendered.proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"tls": {"enabled": True, "certManager": {"enabled": True}}}},
            "gateway.tls.certManager.issuerRef.name is required",
        ),
        (
            {"gateway": {"tls": {"enabled": False, "certManager": {"enabled": True}}}},
            "needs gateway.tls.enabled",
        ),
        ({"gateway": {"ingress": {"enabled": True}}}, "gateway.ingress.host is required"),
        ({"gateway": {"uploadPort": 8080}}, "gateway.port and gateway.uploadPort must differ"),
        (
            {"gateway": {"httpsOnly": False, "service": {"type": "LoadBalancer"}}},
            "would accept tokens over plain HTTP",
        ),
        (
            {"operator": {"serviceAccount": {"create": False}}},
            "operator.serviceAccount.name is required",
        ),
        ({"fullnameOverride": "a" * 41}, "fullnameOverride"),
        # Capture pods upload to the bucket: their NetworkPolicy must know where it is.
        (
            {"gateway": {"store": {"type": "s3", "s3": {"bucket": "shots"}}}},
            "gateway.store.s3.peers is required unless gateway.store.s3.endpoint is an IP",
        ),
        (
            {
                "gateway": {
                    "store": {"type": "s3", "s3": {"bucket": "shots", "endpoint": "http://s3:80"}}
                }
            },
            "gateway.store.s3.peers is required",
        ),
    ],
)
def test_chart_refuses_inconsistent_values(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    rendered = helm.template(values, check=False)
    assert rendered.proc.returncode != 0
    assert message in rendered.proc.stderr, rendered.proc.stderr


def test_chart_crds_are_the_generated_crds() -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == repo
    for name in repo:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kubeshot/crds/{name} differs from crds/{name}: "
            "cp crds/*.yaml charts/kubeshot/crds/"
        )


def test_schema_and_values_reference_are_generated_from_values_yaml() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "chartgen.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_tls_off_behind_an_ingress_that_terminates_it(helm: Helm) -> None:
    rendered = helm.template(
        {
            "gateway": {
                "tls": {"enabled": False},
                "trustedProxies": ["10.244.0.0/16"],
                "ingress": {"enabled": True, "host": "shots.example.com"},
            }
        }
    )
    assert rendered.kinds()["Secret"] == ["ks-kubeshot-auth"]
    service = rendered.get("Service", "ks-kubeshot-gateway")
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["port"] == 80
    ingress = rendered.get("Ingress")
    assert "nginx.ingress.kubernetes.io/backend-protocol" not in ingress["metadata"].get(
        "annotations", {}
    )
    env = rendered.env("ks-kubeshot-gateway")
    assert "KUBESHOT_TLS_CERT" not in env
    assert env["TRUSTED_PROXIES"] == "10.244.0.0/16"
    probe = rendered.get("Deployment", "ks-kubeshot-gateway")["spec"]["template"]["spec"]
    assert probe["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTP"

"""Pure builders: the Secret, Pod and NetworkPolicy manifests of kubeshot, as plain dicts.

No I/O here; the handlers decide when to create what. Every security-relevant default is set
explicitly, with the reason next to it, so that a reviewer reads the whole attack surface here.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubeshot.api import (
    CaptureOptions,
    CaptureRequest,
    ProxyCredentials,
    ScreenshotPolicySpec,
    UploadTarget,
    is_object_name,
    unreachable_networks,
)
from kubeshot.api.admission import effective_timeout
from kubeshot.api.crds import API_VERSION
from kubeshot.kube import names
from kubeshot.operator.settings import OperatorSettings

Manifest = dict[str, Any]

REQUEST_KEY = "request.json"
KEY_KEY = "key"  # a warm pod's key, in its Secret and as the file it reads
REQUEST_DIR = "/var/run/kubeshot"
CONTAINER = "capture"
# The internet a capture pod may reach, less what the egress guard refuses (below).
ANYWHERE = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


@dataclass(frozen=True)
class JobRef:
    """The CaptureJob a manifest belongs to."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class PolicyRef:
    """The ScreenshotPolicy a manifest belongs to."""

    name: str
    namespace: str
    uid: str


def owner_reference(kind: str, name: str, uid: str) -> Manifest:
    """Owner reference to a kubeshot resource: the garbage collector deletes with the owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owning_job(manifest: Mapping[str, Any]) -> tuple[str, str] | None:
    """(name, uid) of the CaptureJob controlling an object (its controller ownerReference)."""
    for owner in (manifest.get("metadata") or {}).get("ownerReferences") or []:
        if (
            isinstance(owner, dict)
            and owner.get("controller") is True
            and owner.get("apiVersion") == API_VERSION
            and owner.get("kind") == "CaptureJob"
            and is_object_name(str(owner.get("name", "")))
            and owner.get("uid")
        ):
            return str(owner["name"]), str(owner["uid"])
    return None


def secret_name(job: JobRef) -> str:
    return names.dns_name(job.name, "request")


def pod_name(job: JobRef, attempt: int) -> str:
    return names.dns_name(job.name, str(attempt))


def network_policy_name(policy: str) -> str:
    return names.dns_name("kubeshot-capture", policy)


def build_request(
    options: CaptureOptions,
    policy: ScreenshotPolicySpec,
    *,
    upload: UploadTarget,
    proxy: ProxyCredentials | None = None,
    deliver: UploadTarget | None = None,
    report_token: str | None = None,
) -> CaptureRequest:
    """What the capture pod reads: the options, the effective policy, proxy and upload targets
    (kubeshot's store, and the caller's bucket when the job asks for `delivery.s3`)."""
    return CaptureRequest(
        options=options,
        policy=policy,
        proxy=proxy,
        upload=upload,
        deliver=deliver,
        report_token=report_token,
    )


def pod_deadline(
    options: CaptureOptions, policy: ScreenshotPolicySpec, settings: OperatorSettings
) -> int:
    """Seconds a capture pod may run (its activeDeadlineSeconds): the capture, and some grace."""
    return effective_timeout(options, policy) + settings.pod_deadline_grace_seconds


def build_secret(job: JobRef, policy_name: str, request: CaptureRequest) -> Manifest:
    """The per-job Secret: the capture request, with the job's upload token inside."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(job),
            "namespace": job.namespace,
            "labels": {**names.capture_labels(policy_name), names.JOB_UID: job.uid},
            "annotations": {names.JOB_NAME_ANNOTATION: job.name},
            "ownerReferences": [owner_reference("CaptureJob", job.name, job.uid)],
        },
        "type": "Opaque",
        # The token (or the signed POST policy) lets this pod upload this job's artifact and
        # nothing else; a Secret (not the Pod's env) keeps it out of `kubectl get pod -o yaml`.
        "immutable": True,
        "stringData": {REQUEST_KEY: request.to_json()},
    }


def _resources(policy: ScreenshotPolicySpec, settings: OperatorSettings) -> Manifest:
    limits = {"memory": policy.limits.memory}
    # Memory request == limit: a capture pod is never placed on a node that cannot hold it.
    requests = {"memory": policy.limits.memory, "cpu": settings.cpu_request}
    if policy.limits.cpu is not None:
        limits["cpu"] = policy.limits.cpu
        requests["cpu"] = policy.limits.cpu
    return {"requests": requests, "limits": limits}


def build_pod(
    job: JobRef,
    attempt: int,
    policy_name: str,
    policy: ScreenshotPolicySpec,
    options: CaptureOptions,
    settings: OperatorSettings,
    log_context: Mapping[str, str] | None = None,
) -> Manifest:
    """The capture pod of one attempt: restricted Pod Security Standard, and then some.

    `log_context`: request id, job, policy and trace ids for the pod's log lines
    (KUBESHOT_LOG_CONTEXT); nothing secret goes there, the pod's environment is no secret."""
    name = pod_name(job, attempt)
    env = [
        {"name": "KUBESHOT_REQUEST", "value": f"{REQUEST_DIR}/{REQUEST_KEY}"},
        {
            "name": "KUBESHOT_OUTCOME_URL",
            "value": settings.assignment_url_for(job.namespace, name) + "/outcome",
        },
    ]
    spec = _capture_spec(policy, settings, secret_name(job), REQUEST_DIR, env)
    if log_context:
        spec["containers"][0]["env"].append(
            {"name": "KUBESHOT_LOG_CONTEXT", "value": json.dumps(dict(log_context), sort_keys=True)}
        )
    # The kubelet kills the pod (reason DeadlineExceeded → Timeout) if the engine overruns.
    spec["activeDeadlineSeconds"] = pod_deadline(options, policy, settings)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {
                **names.capture_labels(policy_name),
                names.JOB_UID: job.uid,
                names.ATTEMPT: str(attempt),
            },
            "annotations": {names.JOB_NAME_ANNOTATION: job.name},
            "ownerReferences": [owner_reference("CaptureJob", job.name, job.uid)],
        },
        "spec": spec,
    }


def warm_pod_name(policy_name: str, suffix: str) -> str:
    return names.dns_name(policy_name, "warm", suffix, limit=63)


def key_secret_name(pod: str) -> str:
    return names.dns_name(pod, "key")


def build_warm_pod(
    policy: PolicyRef, spec: ScreenshotPolicySpec, settings: OperatorSettings, name: str
) -> Manifest:
    """A warm capture pod of the policy: a cold pod's spec (labels, limits, hardening, so its
    NetworkPolicy confines it from the start) that starts Chromium and then asks the operator
    for its one job (docs/operator.md "Warm capture pods"). No deadline until it is claimed
    (`claim_warm_pod`); the policy owns it until then. Its key (to ask with) is a file of the
    Secret `key_secret_name(name)`, never in its environment."""
    env = [
        {
            "name": "KUBESHOT_ASSIGNMENT_URL",
            "value": settings.assignment_url_for(policy.namespace, name),
        },
        {"name": "KUBESHOT_POD_KEY", "value": f"{REQUEST_DIR}/{KEY_KEY}"},
        {"name": "KUBESHOT_WARM_IDLE_SECONDS", "value": str(spec.runtime.warm_idle_seconds)},
    ]
    pod_spec = _capture_spec(spec, settings, key_secret_name(name), REQUEST_DIR, env)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": policy.namespace,
            "labels": {**names.capture_labels(policy.name), names.WARM: "true"},
            "annotations": {names.WARM_TEMPLATE: warm_template(spec, settings)},
            "ownerReferences": [owner_reference("ScreenshotPolicy", policy.name, policy.uid)],
        },
        "spec": pod_spec,
    }


def warm_template(spec: ScreenshotPolicySpec, settings: OperatorSettings) -> str:
    """What a warm pod of this policy is built from, as a hash: a pod whose annotation differs
    was built under an older policy (limits, runtime) or operator and is never claimed."""
    template = _capture_spec(spec, settings, "-", REQUEST_DIR, [])
    text = json.dumps([template, spec.runtime.warm_idle_seconds, settings.assignment_url])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_key_secret(namespace: str, pod: str, pod_uid: str, key: str) -> Manifest:
    """The warm pod's key: it proves the pod when it asks for its job. Owned by the pod (the
    garbage collector removes it with the pod)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": key_secret_name(pod),
            "namespace": namespace,
            "labels": {names.NAME: names.APP, names.MANAGED_BY: names.MANAGER, names.WARM: "true"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod,
                    "uid": pod_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "type": "Opaque",
        "immutable": True,
        "stringData": {KEY_KEY: key},
    }


def claim_warm_pod(version: str, ran: float, job: JobRef, attempt: int, deadline: int) -> Manifest:
    """The merge patch that gives a warm pod to `attempt` of the job: the job becomes its
    controller owner (so the pod's end is the attempt's, as a cold pod's), with the job's
    labels, and a deadline counted from the pod's start (it has run `ran` seconds) as the
    kubelet counts it. The pod's resourceVersion `version` is the precondition: of two claims,
    the second is refused (409)."""
    return {
        "metadata": {
            "resourceVersion": version,
            "ownerReferences": [owner_reference("CaptureJob", job.name, job.uid)],
            "labels": {names.JOB_UID: job.uid, names.ATTEMPT: str(attempt)},
            "annotations": {names.JOB_NAME_ANNOTATION: job.name},
        },
        "spec": {"activeDeadlineSeconds": max(0, math.ceil(ran)) + deadline},
    }


def _capture_spec(
    policy: ScreenshotPolicySpec,
    settings: OperatorSettings,
    secret: str,
    secret_dir: str,
    env: list[Manifest],
) -> Manifest:
    """The spec every capture pod shares (cold or warm): `env` and the Secret mounted read-only
    at `secret_dir` are what differ."""
    runtime = policy.runtime
    spec: Manifest = {
        "restartPolicy": "Never",
        # Capture pods never talk to the Kubernetes API: no token mounted, so that a compromised
        # browser cannot use one against the whole cluster.
        "automountServiceAccountToken": False,
        # No Service environment variables: they map the cluster for whoever reads them.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            # The request Secret is mounted readable by this group only.
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": settings.capture_image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": ["python", "-m", "kubeshot_capture"],
                "env": [
                    *env,
                    {"name": "KUBESHOT_TERMINATION_LOG", "value": "/dev/termination-log"},
                    {"name": "KUBESHOT_OUTPUT", "value": "/tmp/artifact"},  # noqa: S108
                    # Chromium writes its profile and caches under HOME: the emptyDir.
                    {"name": "HOME", "value": "/tmp"},  # noqa: S108
                ],
                "resources": _resources(policy, settings),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "runAsUser": settings.run_as_user,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                # The engine writes its result summary here; the operator reads it from the
                # container's terminated state.
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "volumeMounts": [
                    {"name": "request", "mountPath": secret_dir, "readOnly": True},
                    {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108
                    {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108
                ],
            }
        ],
        "volumes": [
            {"name": "request", "secret": {"secretName": secret, "defaultMode": 0o440}},
            {"name": "tmp", "emptyDir": {"sizeLimit": policy.limits.memory}},
            # Chromium's shared memory. Memory-backed emptyDir pages are charged to the pod's
            # memory limit, so a page cannot grow past the policy's limit through /dev/shm.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": policy.limits.memory}},
        ],
    }
    if runtime.runtime_class_name is not None:
        spec["runtimeClassName"] = runtime.runtime_class_name
    if runtime.node_selector:
        spec["nodeSelector"] = dict(runtime.node_selector)
    if runtime.tolerations:
        spec["tolerations"] = [t.to_wire() for t in runtime.tolerations]
    return spec


def _egress_ports(ports: list[int]) -> list[Manifest]:
    return [{"protocol": "TCP", "port": port} for port in sorted(set(ports))]


def _internet(policy: ScreenshotPolicySpec) -> list[Manifest]:
    # Never reachable, whatever the page asks for: what the egress guard refuses by address
    # (kubeshot.api.networks, one table for both): with blockPrivateNetworks every private,
    # loopback, link-local, CGNAT, metadata and other special range; without, the cloud metadata
    # endpoints (Azure's and Alibaba's included) and non-unicast addresses still.
    # `allowedCIDRs` re-open ranges in a rule of their own.
    refused = _refused(policy.network.block_private_networks)
    return [{"ipBlock": {"cidr": cidr, "except": list(ranges)}} for cidr, ranges in refused]


@functools.cache
def _refused(block_private_networks: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per range of ANYWHERE, the ranges inside it the guard refuses; computed once per setting
    (collapsing them is most of the cost of a NetworkPolicy, built again at every pod's start)."""
    refused = unreachable_networks(block_private_networks=block_private_networks)
    return tuple(
        (
            str(anywhere),
            tuple(str(n) for n in refused if n.version == anywhere.version and n != anywhere),
        )
        for anywhere in ANYWHERE
    )


def _proxy_peer(server: str) -> tuple[list[Manifest], int]:
    """Where the upstream proxy is: its address when the URL names one, else any address."""
    parts = urlsplit(server)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        # A proxy named by DNS cannot be pinned by a NetworkPolicy; the egress guard inside the
        # pod connects to nothing but the proxy, and this rule still limits the port.
        return [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}], port
    return [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}], port


def _upload_rule(settings: OperatorSettings) -> Manifest:
    """Where the pods upload: the S3 store's endpoint (exactly its peers, on its port), or the
    gateway's upload port."""
    if settings.store.store == "s3":
        return {
            "to": settings.store.upload_peers(),
            "ports": [{"protocol": "TCP", "port": settings.store.s3_port}],
        }
    return {
        "to": _gateway_peers(settings),
        "ports": [{"protocol": "TCP", "port": settings.upload_port}],
    }


def _gateway_peers(settings: OperatorSettings) -> list[Manifest]:
    """The gateway's pods, or its addresses when it runs outside the cluster."""
    return _peers(settings.gateway_cidrs, settings.gateway_namespace, settings.gateway_pod_labels)


def _operator_peers(settings: OperatorSettings) -> list[Manifest]:
    """The operator's pods, or its addresses when it runs outside the cluster."""
    return _peers(
        settings.operator_cidrs, settings.operator_namespace, settings.operator_pod_labels
    )


def _peers(cidrs: list[str], namespace: str, labels: Mapping[str, str]) -> list[Manifest]:
    if cidrs:
        return [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]
    return [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(labels)},
        }
    ]


def _normalised(value: Any) -> Any:
    """value without empty lists, maps and nulls: how the API server returns what it stored."""
    if isinstance(value, dict):
        kept = {k: _normalised(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def selects(selector: Mapping[str, Any], pod_labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if pod_labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = set(expression.get("values") or [])
        present = key in pod_labels
        holds = {
            "In": present and pod_labels.get(key) in values,
            "NotIn": not present or pod_labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }.get(str(operator), False)
        if not holds:
            return False
    return True


def confinement_problem(
    live: Manifest | None, wanted: Manifest, pod_labels: Mapping[str, str]
) -> str | None:
    """Why the NetworkPolicy the API server has does not confine a capture pod with these labels
    as `wanted` (the one built for its ScreenshotPolicy) would; None when it does."""
    name = wanted["metadata"]["name"]
    if live is None:
        return f"NetworkPolicy {name} does not exist"
    if _normalised(live.get("spec")) != _normalised(wanted["spec"]):
        return f"NetworkPolicy {name} is not the one its ScreenshotPolicy asks for"
    if not selects(live["spec"].get("podSelector") or {}, pod_labels):
        return f"NetworkPolicy {name} does not select the capture pod"
    return None


def build_network_policy(
    policy: PolicyRef, spec: ScreenshotPolicySpec, settings: OperatorSettings
) -> Manifest:
    """The one NetworkPolicy of a ScreenshotPolicy: confines all of its capture pods.

    No ingress at all. Egress: cluster DNS, where the artifact is uploaded to (the gateway's
    upload port, or with KUBESHOT_STORE=s3 the bucket's endpoint alone), the operator's
    assignment port (warm pods' jobs, every pod's outcome), and then either the
    upstream proxy only, or the internet on the allowed ports with the private ranges excepted;
    plus the policy's `allowedCIDRs` on any port.
    """
    egress: list[Manifest] = [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": settings.dns_namespace}
                    },
                    "podSelector": {"matchLabels": dict(settings.dns_pod_labels)},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        _upload_rule(settings),
        # The operator's assignment port alone: warm pods ask for their job there, and every
        # pod reports its outcome there.
        {
            "to": _operator_peers(settings),
            "ports": _egress_ports([settings.assignment_port_of_url]),
        },
    ]
    if spec.network.proxy is not None:
        peers, port = _proxy_peer(spec.network.proxy.server)
        egress.append({"to": peers, "ports": _egress_ports([port])})
    else:
        egress.append({"to": _internet(spec), "ports": _egress_ports(spec.network.allowed_ports)})
    if spec.network.allowed_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in spec.network.allowed_cidrs]})
    selector = {
        names.COMPONENT: names.CAPTURE_COMPONENT,
        names.POLICY: names.label_value(policy.name),
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(policy.name),
            "namespace": policy.namespace,
            "labels": {
                names.NAME: names.APP,
                names.MANAGED_BY: names.MANAGER,
                names.POLICY: names.label_value(policy.name),
            },
            "ownerReferences": [owner_reference("ScreenshotPolicy", policy.name, policy.uid)],
        },
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }

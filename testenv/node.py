"""A real Kubernetes node beside the test control plane: kubelet, containerd, CNI, NetworkPolicies.

The node tier's fixture (tests/cluster/node/conftest.py) and `make testenv-node` use it on top of
a running ControlPlane (testenv/controlplane.py). Standard library only. Needs root.

What it runs:
- a network namespace of its own, `kubeshot-node`, joined to this host by a veth pair
  (host 10.203.0.1 <-> node 10.203.0.2). Everything the node changes (bridge, routes, iptables,
  ipsets) lives in that namespace and goes away with it; the host's firewall is never touched.
  Inside it the loopback carries the test targets: PAGE_ADDRESS (pages the tests serve),
  PRIVATE_CANARY (an RFC 1918 address) and METADATA_ADDRESS (169.254.169.254), so that tests
  reach nothing outside this machine and the host's own link-local routes stay as they are;
- containerd (Debian's) with runc and the bridge/host-local/portmap CNI plugins (Debian's),
  its root, state and socket in the work folder;
- the kubelet (cgroupfs driver on this host's cgroup v1 hierarchies, no swap), registered as
  NODE_NAME with a system:node client certificate (Node authorizer);
- kube-scheduler (on the host) and kube-proxy (in the node's namespace);
- kube-router v2 as the NetworkPolicy enforcer, firewall only (`--run-firewall`, no routing, no
  service proxy): iptables + ipset. kube-network-policies, the first choice, needs nftables'
  `queue` statement, which this host's kernel lacks (CONFIG_NFT_QUEUE is not set): nft answers
  "Error: Could not process rule: No such file or directory" to `queue num 100 bypass`;
- a relay from 127.0.0.1:<apiserver port> in the node's namespace to the API server on the
  host's loopback, so the node's components use the control plane's own kubeconfigs;
- what pods of a real cluster rely on: the `kubernetes` Service reaching the API server (its
  endpoint is HOST_ADDRESS:6443 on the veth, relayed to the API server on the host's loopback),
  cluster DNS (CoreDNS, built by testenv/build.sh, as the Deployment `coredns` and the Service
  `kube-dns` in kube-system with the conventional `k8s-app: kube-dns` labels) and a default
  StorageClass with local PersistentVolumes made ahead (no dynamic provisioner).

By hand (root): `python testenv/node.py --dir DIR [ARCHIVE ...]` runs a control plane and a node
with these image archives imported (e.g. `testenv/image.sh --operator`'s) until SIGTERM or
SIGINT, and writes DIR/kubeconfig once the node is ready: `helm install` works on it as on any
cluster.

Images are imported, never pulled: the pause and CoreDNS images are made here as OCI archives
(Kubernetes' pause.c compiled with gcc; the CoreDNS binary testenv/build.sh built); the capture
and operator images come from testenv/image.sh.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import (
    ROOT,
    SERVICE_CLUSTER_IP_RANGE,
    TESTENV,
    ControlPlane,
    ControlPlaneError,
    _Process,
    _terminate,
    find_bin_dir,
    launch,
    wait_ready,
    write_kubeconfig,
)

NODE_NAME = "kubeshot-node"
NETNS = "kubeshot-node"
HOST_LINK = "ksnode-host"  # the veth end in the host's namespace
NODE_LINK = "ksnode-node"  # the veth end in the node's namespace
HOST_ADDRESS = "10.203.0.1"  # this host, as the node sees it (and the gateway's address)
NODE_ADDRESS = "10.203.0.2"  # the node's InternalIP
LINK_PREFIX = 30
POD_CIDR = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
# Test targets on a dummy interface inside the node's namespace (never outside this machine).
PAGE_ADDRESS = "198.18.0.10"  # benchmarking range: policies open it with allowedCIDRs
PRIVATE_CANARY = "10.250.0.10"  # RFC 1918: capture pods must never reach it
METADATA_ADDRESS = "169.254.169.254"  # the cloud metadata address
PAUSE_VERSION = "3.10.2"
PAUSE_IMAGE = f"kubeshot.local/pause:{PAUSE_VERSION}"
# The `kubernetes` Service's endpoint, as pods reach it: the host's veth address on the API
# server's conventional port, relayed to the API server on the host's loopback.
API_SERVICE_PORT = 6443
# Cluster DNS: the conventional tenth address of the Service range (kubeadm's choice too).
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
STORAGE_CLASS = "standard"  # kind's name for its default class
LOCAL_VOLUMES = 4  # made ahead; each claim binds one for good (no provisioner recycles them)
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ipset", "ip",
              "nsenter", "gcc")  # fmt: skip
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "kube-router")
SYSTEM_LABELS = {"app.kubernetes.io/managed-by": "kubeshot-testenv-node"}
_CLONE_NEWNET = 0x40000000
LOCK_FILE = "/run/kubeshot-node.lock"


class NodeError(ControlPlaneError):
    """The node could not be started (the message names the step and carries its log)."""


# ------------------------------------------------------------------------------ preflight


def cni_bin_dir() -> Path | None:
    for candidate in CNI_BIN_DIRS:
        if (Path(candidate) / "bridge").exists():
            return Path(candidate)
    return None


def missing_requirements(bin_dir: Path) -> list[str]:
    """What this machine lacks for a node; empty when a node can start."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the kubelet, containerd and network namespaces need it)")
    missing += [t for t in HOST_TOOLS if shutil.which(t) is None]
    missing += [b for b in NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if not os.access(coredns_binary(bin_dir), os.X_OK):
        missing.append(f"coredns ({coredns_binary(bin_dir)}; testenv/build.sh builds it)")
    if cni_bin_dir() is None:
        missing.append(f"CNI plugins (bridge in one of {', '.join(CNI_BIN_DIRS)})")
    if (
        not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        missing.append("a memory cgroup controller")
    return missing


def pinned(name: str) -> str:
    """A version pinned in testenv/versions.env (KUBERNETES_VERSION, COREDNS_VERSION, ...)."""
    for line in (TESTENV / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise NodeError(f"testenv/versions.env pins no {name}")


def coredns_binary(bin_dir: Path) -> Path:
    """CoreDNS beside the other binaries ($KUBESHOT_TESTENV_BIN), else where build.sh puts it
    (a folder of its own: a CoreDNS update never rebuilds Kubernetes)."""
    beside = bin_dir / "coredns"
    if beside.exists():
        return beside
    return ROOT / ".testenv" / "bin" / f"coredns-{pinned('COREDNS_VERSION')}" / "coredns"


def _run(*argv: str, netns: bool = False, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [*(("nsenter", f"--net=/run/netns/{NETNS}", "--") if netns else ()), *argv]
    proc = subprocess.run(command, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------- network namespaces


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def socket_in_netns(
    netns_path: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket that lives in another network namespace (a socket keeps the one it was made in).

    Made in a short-lived thread that enters the namespace, so the caller's thread stays put.
    """
    made: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            _setns(netns_path)
            made.append(socket.socket(family, kind))
        except BaseException as exc:  # handed to the caller
            made.append(exc)

    thread = threading.Thread(target=make, name="netns-socket")
    thread.start()
    thread.join()
    result = made[0]
    if isinstance(result, BaseException):
        raise result
    return result


class Relay:
    """TCP relay: listens in the node's namespace, connects in this process's namespace."""

    def __init__(self, listen: socket.socket, target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listen.accept()
            except OSError:
                return
            threading.Thread(target=self._pair, args=(client,), daemon=True).start()

    def _pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listen.shutdown(socket.SHUT_RDWR)
        self.listen.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            source.close()


# ------------------------------------------------------------------------------ images


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def oci_archive(
    path: Path, ref: str, files: dict[str, tuple[bytes, int]], config: dict[str, Any]
) -> Path:
    """Write a one-layer OCI image archive (what `ctr images import` reads), reproducibly."""
    layer = _tar_bytes(files)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    compressed = gzip.compress(layer, mtime=0)
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        },
        sort_keys=True,
    ).encode()

    def blob(data: bytes) -> tuple[str, bytes]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), data

    config_digest, _ = blob(image_config)
    layer_digest, _ = blob(compressed)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(image_config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": len(compressed),
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest, _ = blob(manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": ref,
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1],
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    entries = {
        "oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        "index.json": (index, 0o644),
    }
    for digest, data in (
        blob(image_config),
        blob(compressed),
        blob(manifest),
    ):
        entries[f"blobs/sha256/{digest.removeprefix('sha256:')}"] = (data, 0o644)
    tmp = path.with_suffix(".partial")
    tmp.write_bytes(_tar_bytes(entries))
    tmp.replace(path)
    return path


def archive_ref(path: Path) -> str:
    """The image name an archive carries (OCI index annotation, or docker-archive RepoTags)."""
    with tarfile.open(path) as tar:
        names = tar.getnames()
        if "index.json" in names:
            member = tar.extractfile("index.json")
            assert member is not None
            for manifest in json.load(member).get("manifests", []):
                annotations = manifest.get("annotations", {})
                ref = annotations.get("io.containerd.image.name") or annotations.get(
                    "org.opencontainers.image.ref.name", ""
                )
                if "/" in ref or ":" in ref:
                    return str(ref)
        if "manifest.json" in names:
            member = tar.extractfile("manifest.json")
            assert member is not None
            for entry in json.load(member):
                if entry.get("RepoTags"):
                    return str(entry["RepoTags"][0])
    raise NodeError(f"{path} names no image")


def pause_archive(cache_dir: Path) -> Path:
    """The sandbox ("pause") image, built from Kubernetes' own pause.c; cached by version."""
    path = cache_dir / f"pause-{PAUSE_VERSION}.oci.tar"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    modcache = (
        _run(go, "env", "GOMODCACHE").stdout.strip()
        if os.access(go, os.X_OK)
        else str(Path.home() / "go" / "pkg" / "mod")
    )
    k8s = pinned("KUBERNETES_VERSION")
    source = Path(modcache) / f"k8s.io/kubernetes@{k8s}" / "build/pause/linux/pause.c"
    if not source.exists():
        raise NodeError(f"{source} is missing: run testenv/build.sh (it fetches k8s.io/kubernetes)")
    binary = cache_dir / "pause"
    _run("gcc", "-Os", "-static", "-Wall", f"-DVERSION=v{PAUSE_VERSION}", "-o", str(binary),
         str(source))  # fmt: skip
    _run("strip", str(binary), check=False)
    return oci_archive(
        path,
        PAUSE_IMAGE,
        {"pause": (binary.read_bytes(), 0o755)},
        {"Entrypoint": ["/pause"], "User": "65535:65535"},
    )


def coredns_archive(cache_dir: Path, binary: Path) -> tuple[Path, str]:
    """The CoreDNS image (the one binary, as user 65532) and its name; cached by the binary's
    hash."""
    data = binary.read_bytes()
    ref = f"kubeshot.local/coredns:{pinned('COREDNS_VERSION')}"
    path = cache_dir / f"coredns-{hashlib.sha256(data).hexdigest()[:12]}.oci.tar"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob("coredns-*.oci.tar"):
            old.unlink()
        oci_archive(
            path,
            ref,
            {"coredns": (data, 0o755)},
            {"Entrypoint": ["/coredns"], "User": "65532:65532", "ExposedPorts": {"53/udp": {}}},
        )
    return path, ref


# ------------------------------------------------------------------------------ cluster add-ons

_COREFILE = """\
.:53 {{
    errors
    health :8080
    ready :8181
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def addon_manifests(image: str, volume_dir: Path) -> list[dict[str, Any]]:
    """What a real cluster's pods find beside the API server: the `kubernetes` Service's
    endpoint, cluster DNS (CoreDNS as kubeadm deploys it: Deployment `coredns`, Service
    `kube-dns`, labels `k8s-app: kube-dns`), a default StorageClass with local volumes."""
    meta = {"labels": dict(SYSTEM_LABELS)}
    dns_labels = {"k8s-app": "kube-dns"}
    system = {"namespace": "kube-system"}
    api_port = {"name": "https", "port": API_SERVICE_PORT, "protocol": "TCP"}
    manifests: list[dict[str, Any]] = [
        # The apiserver runs with --endpoint-reconciler-type=none (it listens on loopback): the
        # endpoint is written here, with the label that keeps the mirroring controller off it.
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"endpointslice.kubernetes.io/skip-mirror": "true", **SYSTEM_LABELS},
            },
            "subsets": [{"addresses": [{"ip": HOST_ADDRESS}], "ports": [api_port]}],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "kubeshot-testenv-node",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [HOST_ADDRESS], "conditions": {"ready": True}}],
            "ports": [api_port],
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", **system, **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns", **meta},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns", **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", **system}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", **system, **meta},
            "data": {"Corefile": _COREFILE.format(domain=CLUSTER_DOMAIN)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", **system, "labels": {**dns_labels, **SYSTEM_LABELS}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dns_labels},
                "template": {
                    "metadata": {"labels": dns_labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                            # Port 53 without any capability: a namespaced, "safe" sysctl.
                            "sysctls": [
                                {"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}
                            ],
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                ],
                                "livenessProbe": {
                                    "httpGet": {"path": "/health", "port": 8080},
                                    "periodSeconds": 10,
                                },
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 1,
                                },
                                "resources": {
                                    "requests": {"cpu": "10m", "memory": "32Mi"},
                                    "limits": {"memory": "170Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True,
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                **system,
                "labels": {**dns_labels, "kubernetes.io/name": "CoreDNS", **SYSTEM_LABELS},
            },
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "selector": dns_labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                **meta,
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        },
    ]
    for index in range(LOCAL_VOLUMES):
        manifests.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{NODE_NAME}-volume-{index}", **meta},
                "spec": {
                    "capacity": {"storage": "100Gi"},  # nominal: a folder of the work folder
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": STORAGE_CLASS,
                    "local": {"path": str(volume_dir / str(index))},
                    "nodeAffinity": {
                        "required": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "kubernetes.io/hostname",
                                            "operator": "In",
                                            "values": [NODE_NAME],
                                        }
                                    ]
                                }
                            ]
                        }
                    },
                },
            }
        )
    return manifests


def api_path(manifest: dict[str, Any]) -> str:
    """The collection path a manifest is POSTed to."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    namespace = manifest["metadata"].get("namespace")
    if namespace:
        base += f"/namespaces/{namespace}"
    kind = manifest["kind"].lower()
    plural = {"endpoints": "endpoints", "storageclass": "storageclasses"}.get(kind, kind + "s")
    return f"{base}/{plural}"


# ------------------------------------------------------------------------------ the node


@dataclass
class Node:
    """One worker node joined to `control_plane`; `start()`, then `stop()`."""

    control_plane: ControlPlane
    bin_dir: Path
    work_dir: Path
    start_timeout: float = 120.0
    processes: list[_Process] = field(default_factory=list)
    relay: Relay | None = None
    api_relay: Relay | None = None
    lock: int | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.work_dir / "containerd" / "containerd.sock"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{NETNS}"

    # -- lifecycle

    def start(self, images: Sequence[Path] = ()) -> Node:
        missing = missing_requirements(self.bin_dir)
        if missing:
            raise NodeError(f"cannot start a node here; missing: {', '.join(missing)}")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # One node per machine: the namespace, the link and the cgroups have fixed names.
        self.lock = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock)
            self.lock = None
            raise NodeError(f"another kubeshot node runs on this machine ({LOCK_FILE})") from None
        deadline = time.monotonic() + self.start_timeout
        _kill_stale_shims()
        try:
            self._network()
            self._credentials()
            self._containerd(deadline)
            cache = ROOT / ".testenv" / "images"
            dns_archive, dns_image = coredns_archive(cache, coredns_binary(self.bin_dir))
            self.import_images([pause_archive(cache), dns_archive, *images])
            self._kubelet(deadline)
            self._services(deadline)
            self._addons(deadline, dns_image)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component, remove every pod's leftovers and the namespace; idempotent."""
        while self.processes:
            _terminate(self.processes.pop().popen)
        # Containers outlive containerd (their shims are separate processes): kill them.
        for pid_file in (self.work_dir / "containerd" / "state").glob("**/init.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pid_file.read_text()), 9)
        _kill_shims(self.work_dir)
        for relay in (self.relay, self.api_relay):
            if relay is not None:
                relay.close()
        self.relay = self.api_relay = None
        _unmount_below(self.work_dir)
        # The Node object goes too: the control plane may outlive the node (a later tier).
        with contextlib.suppress(OSError):
            self.control_plane.request("DELETE", f"/api/v1/nodes/{NODE_NAME}")
        _run("ip", "link", "del", HOST_LINK, check=False)
        _run("ip", "netns", "del", NETNS, check=False)
        _remove_cgroups()
        if self.lock is not None:
            os.close(self.lock)  # releases the flock
            self.lock = None

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- steps

    def _network(self) -> None:
        if Path(self.netns_path).exists():  # left by a killed run: start clean
            _run("ip", "netns", "del", NETNS, check=False)
        _run("ip", "link", "del", HOST_LINK, check=False)
        _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK)
        _run("ip", "link", "set", NODE_LINK, "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_ADDRESS}/{LINK_PREFIX}", "dev", HOST_LINK)
        _run("ip", "link", "set", HOST_LINK, "up")
        # Pod addresses are routed to the node, as a cloud's VPC routes a node's pod range.
        _run("ip", "route", "add", POD_CIDR, "via", NODE_ADDRESS, "dev", HOST_LINK)
        for argv in (
            ("ip", "link", "set", "lo", "up"),
            ("ip", "addr", "add", f"{NODE_ADDRESS}/{LINK_PREFIX}", "dev", NODE_LINK),
            ("ip", "link", "set", NODE_LINK, "up"),
            ("ip", "route", "add", "default", "via", HOST_ADDRESS),
            # The test targets live on the namespace's loopback (this kernel has no dummy links).
            ("ip", "addr", "add", f"{PAGE_ADDRESS}/32", "dev", "lo"),
            ("ip", "addr", "add", f"{PRIVATE_CANARY}/32", "dev", "lo"),
            ("ip", "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo"),
        ):
            _run(*argv, netns=True)
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            _run("sh", "-c", f"echo 1 > /proc/sys/{key}", netns=True, check=False)
        port = int(self.control_plane.server.rsplit(":", 1)[1])
        listen = socket_in_netns(self.netns_path)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind(("127.0.0.1", port))
        listen.listen(64)
        self.relay = Relay(listen, ("127.0.0.1", port))
        # Pods reach the API server through the `kubernetes` Service: its endpoint is here.
        self.api_relay = Relay(
            socket.create_server((HOST_ADDRESS, API_SERVICE_PORT), backlog=64),
            ("127.0.0.1", port),
        )

    def _credentials(self) -> None:
        pki = self.control_plane.pki
        assert pki is not None
        server = self.control_plane.server
        for name, subject in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}"),
            ("kube-proxy", "/CN=system:kube-proxy"),
            ("kube-scheduler", "/CN=system:kube-scheduler"),
        ):
            pki.issue(name, subject, "client")
            write_kubeconfig(self.work_dir / f"{name}.kubeconfig", server, pki, name)
        write_kubeconfig(self.work_dir / "kube-router.kubeconfig", server, pki, "admin")

    def _containerd(self, deadline: float) -> None:
        base = self.work_dir / "containerd"
        cni = self.work_dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-kubeshot.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "kubeshot",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(cni / "ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=2,
            )
        )
        base.mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text(
            _CONTAINERD_CONFIG.format(
                root=base / "root",
                state=base / "state",
                socket=self.containerd_socket,
                pause=PAUSE_IMAGE,
                cni_bin=cni_bin_dir(),
                cni_conf=cni / "net.d",
            )
        )
        proc = self._spawn("containerd", ["containerd", "--config", str(config)], netns=True)
        self._wait(proc, deadline, lambda: self._ctr("version").returncode == 0)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
        )

    def import_images(self, archives: Sequence[Path]) -> None:
        for archive in archives:
            proc = self._ctr("images", "import", str(archive))  # and unpack: pods start at once
            if proc.returncode != 0:
                raise NodeError(f"ctr images import {archive} failed: {proc.stderr.strip()}")

    def image_refs(self) -> list[str]:
        out = self._ctr("images", "ls", "-q").stdout
        return [line for line in out.splitlines() if line and not line.startswith("sha256:")]

    def _kubelet(self, deadline: float) -> None:
        pki = self.control_plane.pki
        assert pki is not None
        kubelet_dir = self.work_dir / "kubelet"
        kubelet_dir.mkdir(exist_ok=True)
        resolv = self.work_dir / "resolv.conf"
        resolv.write_text("# capture pods resolve nothing through the node\noptions ndots:1\n")
        config = self.work_dir / "kubelet.json"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # This host mounts cgroup v1 controllers (cgroup2 has none of them).
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(pki.ca_cert)},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "address": NODE_ADDRESS,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "podCIDR": POD_CIDR,
                    "podLogsDir": str(self.work_dir / "pod-logs"),
                    "resolvConf": str(resolv),
                    "clusterDomain": CLUSTER_DOMAIN,
                    "clusterDNS": [DNS_SERVICE_IP],
                    # A test machine's disk is whatever it is: evict on memory only.
                    "evictionHard": {"memory.available": "100Mi"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "serializeImagePulls": False,
                    "nodeStatusUpdateFrequency": "4s",
                    "syncFrequency": "10s",
                    "shutdownGracePeriod": "0s",
                    "makeIPTablesUtilChains": False,
                    "registerNode": True,
                }
            )
        )
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.work_dir / 'kubelet.kubeconfig'}",
                f"--root-dir={kubelet_dir}",
                f"--cert-dir={self.work_dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_ADDRESS}",
                "--v=1",
            ],
            netns=True,
        )
        self._wait(self.processes[-1], deadline, self.ready)

    def ready(self) -> bool:
        node = self.control_plane.get(f"/api/v1/nodes/{NODE_NAME}")
        if node is None:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _services(self, deadline: float) -> None:
        scheduler = self.work_dir / "kube-scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        self._spawn(
            "kube-proxy",
            [
                str(self.bin_dir / "kube-proxy"),
                f"--kubeconfig={self.work_dir / 'kube-proxy.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                "--proxy-mode=iptables",
                # The node's namespace has its own conntrack table view; the global sysctls are
                # the host's business.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
            ],
            netns=True,
        )
        self._spawn(
            "kube-router",
            [
                str(self.bin_dir / "kube-router"),
                f"--kubeconfig={self.work_dir / 'kube-router.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--enable-ipv6=false",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--metrics-port=0",
                "--health-port=0",
                "--iptables-sync-period=1m",
                "--v=1",
            ],
            netns=True,
        )
        # Pods are scheduled once the default ServiceAccount exists in a namespace; the node is
        # ready; the firewall is in place once kube-router has written its chains.
        self._wait(
            self.processes[-1],
            deadline,
            lambda: "KUBE-ROUTER-FORWARD" in _run("iptables-save", netns=True, check=False).stdout,
        )
        for proc in self.processes:
            if proc.popen.poll() is not None:
                raise NodeError(f"{proc.name} exited; {proc.log}:\n{proc.log_tail()}")

    def _addons(self, deadline: float, dns_image: str) -> None:
        volumes = self.work_dir / "volumes"
        for index in range(LOCAL_VOLUMES):
            (volumes / str(index)).mkdir(parents=True, exist_ok=True)
            (volumes / str(index)).chmod(0o777)  # any pod user may write (local volumes: fsGroup)
        for manifest in addon_manifests(dns_image, volumes):
            status, body = self.control_plane.request("POST", api_path(manifest), manifest)
            if status not in (201, 409):  # 409: left by an earlier node of this control plane
                raise NodeError(f"creating {manifest['kind']} failed ({status}): {body}")
        kubelet = next(p for p in self.processes if p.name == "kubelet")
        self._wait(kubelet, deadline, self.dns_ready)

    def dns_ready(self) -> bool:
        deployment = self.control_plane.get(
            "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
        )
        return bool(((deployment or {}).get("status") or {}).get("readyReplicas"))

    # -- helpers

    def _spawn(self, name: str, argv: Sequence[str], *, netns: bool = False) -> _Process:
        if netns:
            argv = ["nsenter", f"--net={self.netns_path}", "--", *argv]
        proc = launch(name, argv, self.work_dir)
        self.processes.append(proc)
        return proc

    def _wait(self, proc: _Process, deadline: float, ready: Callable[[], object]) -> None:
        wait_ready(proc, deadline, ready, self.start_timeout, NodeError)

    def firewalled(self, pod_ip: str) -> bool:
        """Whether kube-router has written the firewall chain of the pod with this address."""
        rules = _run("iptables-save", "-t", "filter", netns=True, check=False).stdout
        return f"-A KUBE-ROUTER-FORWARD -s {pod_ip}/32" in rules

    def listen(self, address: str, port: int = 0) -> socket.socket:
        """A listening TCP socket on one of the node's target addresses (PAGE_ADDRESS, ...)."""
        sock = socket_in_netns(self.netns_path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        return sock


_CONTAINERD_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  enable_selinux = false
  # This host's root lacks CAP_SYS_RESOURCE: runc may not lower oom_score_adj below containerd's
  # own (the kubelet asks -998 for sandboxes); without this, every sandbox fails with
  # "failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  # Pod network namespaces under the work folder, not /run/netns: stop() unmounts them all.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"""


def _kill_shims(work_dir: Path) -> None:
    """containerd-shim-runc-v2 processes of this node (they carry its socket path)."""
    marker = str(work_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if b"containerd-shim" in cmdline and marker in cmdline:
                os.kill(int(proc.name), 9)


def _kill_stale_shims() -> None:
    """Shims (and their containers) whose containerd is gone: left by a node that was killed
    before stop() ran (a SIGKILLed pytest). A shim names its containerd by `-address SOCKET`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            argv = (proc / "cmdline").read_bytes().decode().split("\0")
            if not argv[0].endswith("containerd-shim-runc-v2") or "-address" not in argv:
                continue
            address = argv[argv.index("-address") + 1]
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(address)
                    continue  # its containerd is alive: not ours to judge
                except OSError:
                    pass
            shim = int(proc.name)
            for child in Path("/proc").iterdir():
                if child.name.isdigit():
                    with contextlib.suppress(OSError, ValueError):
                        status = (child / "status").read_text()
                        if f"\nPPid:\t{shim}\n" in status:
                            os.kill(int(child.name), 9)
            os.kill(shim, 9)


def _unmount_below(directory: Path) -> None:
    """Unmount what the kubelet and containerd mounted under the work folder (deepest first)."""
    prefix = str(directory.resolve()) + "/"
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)


def _remove_cgroups() -> None:
    """The kubelet's kubepods hierarchy, bottom up (each is empty once its pods are gone)."""
    for root in Path("/sys/fs/cgroup").iterdir():
        top = root / "kubepods"
        if not top.is_dir():
            continue
        for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir():
                with contextlib.suppress(OSError):
                    directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# ------------------------------------------------------------------------------ by hand


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A control plane and a node, until SIGTERM.")
    parser.add_argument("--dir", type=Path, required=True, help="work folder (kubeconfig, logs)")
    parser.add_argument("images", nargs="*", type=Path, help="image archives to import")
    args = parser.parse_args(argv)
    work: Path = args.dir.resolve()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    bin_dir = find_bin_dir()
    control_plane = ControlPlane(bin_dir, work / "controlplane")
    node = Node(control_plane, bin_dir, work / "node")
    try:
        started = time.monotonic()
        control_plane.start()
        node.start(images=args.images)
        shutil.copy(control_plane.kubeconfig, work / "kubeconfig")
        print(f"ready in {time.monotonic() - started:.1f}s: KUBECONFIG={work / 'kubeconfig'}",
              flush=True)  # fmt: skip
        stop.wait()
        return 0
    except ControlPlaneError as err:
        print(err, file=sys.stderr, flush=True)
        return 1
    finally:
        (work / "kubeconfig").unlink(missing_ok=True)
        node.stop()
        control_plane.stop()


if __name__ == "__main__":
    sys.exit(main())

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
  host's loopback, so the node's components use the control plane's own kubeconfigs.

Images are imported, never pulled: the pause image is made here from Kubernetes' pause.c (gcc,
static) as an OCI archive; the capture image comes from testenv/image.sh.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
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
    ControlPlane,
    ControlPlaneError,
    _Process,
    _terminate,
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
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ipset", "ip",
              "nsenter", "gcc")  # fmt: skip
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy", "kube-router")
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
    if cni_bin_dir() is None:
        missing.append(f"CNI plugins (bridge in one of {', '.join(CNI_BIN_DIRS)})")
    if (
        not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        missing.append("a memory cgroup controller")
    return missing


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
    versions = (ROOT / "testenv" / "versions.env").read_text()
    k8s = next(
        line.split("=", 1)[1] for line in versions.splitlines() if line.startswith("KUBERNETES_")
    )
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
            self.import_images([pause_archive(ROOT / ".testenv" / "images"), *images])
            self._kubelet(deadline)
            self._services(deadline)
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
        if self.relay is not None:
            self.relay.close()
            self.relay = None
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
                    "clusterDomain": "cluster.local",
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

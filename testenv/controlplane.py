"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

One implementation for the pytest fixtures (tests/cluster/conftest.py) and for `make testenv-up`
(testenv/up.sh, testenv/down.sh). Standard library only, plus the `openssl` command for the PKI.

What it runs, all on 127.0.0.1 with free ports and a private work folder:
- etcd (no fsync: the data is thrown away),
- kube-apiserver with client-certificate authentication, RBAC (`Node,RBAC`), the PodSecurity
  admission plugin and service-account token issuance (an ECDSA signing key, issuer
  https://kubernetes.default.svc.cluster.local),
- kube-controller-manager with the same signing key, the cluster CA as root CA, one service
  account per controller (so garbage collection, namespaces and service accounts behave as in a
  real cluster) and the CA as CSR signer.

Children are started in their own process groups and get SIGKILL when the process that started
them dies (PR_SET_PDEATHSIG), so nothing survives a killed pytest or supervisor.

Command line (used by testenv/up.sh and testenv/down.sh):
    python testenv/controlplane.py serve --dir DIR   run in the foreground until SIGTERM/SIGINT
    python testenv/controlplane.py down --dir DIR    stop a `serve` running for DIR
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTENV = Path(__file__).resolve().parent
ROOT = TESTENV.parent
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message carries the failing component's log."""


def find_bin_dir() -> Path:
    """The folder with the five binaries: $KUBESHOT_TESTENV_BIN, else the one build.sh fills."""
    explicit = os.environ.get("KUBESHOT_TESTENV_BIN")
    if explicit:
        return Path(explicit)
    out = subprocess.run(
        ["bash", str(TESTENV / "build.sh"), "--print-bin-dir"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where /proc says
    nothing)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports nothing listens on now, for processes that must be told theirs.

    Not bind(port 0): the kernel hands those out of its ephemeral range, the same range it takes
    the local port of every outgoing connection from, so between this call and the server's own
    bind any process's connection (the API server's to etcd, a kubelet's, a browser's) could
    take the port, and the server died with "address already in use" (seen in CI). Ports below
    the range are taken only by a bind that names them: they are drawn at random there (so two
    callers seldom meet) and each is held bound until all are chosen.
    """
    low = _ephemeral_low()
    pool = range(max(1024, low - 22000), low)
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(pool, len(pool)):
            if len(sockets) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < count:
            raise OSError(f"fewer than {count} free ports below {low} on {host}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the starting thread dies, however it dies."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


# ---------------------------------------------------------------------------------------- PKI

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {server_sans}
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


_NEWKEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Pki:
    """Files of a throw-away cluster PKI (ECDSA P-256: fast to make, accepted everywhere)."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def service_account_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.dir / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    @classmethod
    def generate(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory)
        sans = [
            "IP:127.0.0.1",
            "IP:10.0.0.1",  # the `kubernetes` Service's ClusterIP in SERVICE_CLUSTER_IP_RANGE
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        config = directory / "openssl.cnf"
        config.write_text(_OPENSSL_CONFIG.format(server_sans=", ".join(sans)))
        _openssl(
            "req", "-x509", "-config", str(config), "-extensions", "ca", *_NEWKEY,
            "-keyout", str(pki.ca_key), "-out", str(pki.ca_cert),
            "-days", "3650", "-subj", "/CN=kubeshot-testenv-ca",
        )  # fmt: skip
        pki.issue("apiserver", "/CN=kube-apiserver", "server")
        pki.issue("admin", "/O=system:masters/CN=kubeshot-admin", "client")
        pki.issue("controller-manager", "/CN=system:kube-controller-manager", "client")
        # The API server's identity towards kubelets (logs, exec, port-forward).
        pki.issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        _openssl(
            "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", str(pki.service_account_key),
        )  # fmt: skip
        _openssl(
            "pkey", "-in", str(pki.service_account_key), "-pubout",
            "-out", str(pki.service_account_public_key),
        )  # fmt: skip
        pki.service_account_key.chmod(0o600)
        return pki

    def issue(self, name: str, subject: str, kind: str = "client") -> None:
        """A leaf certificate `name`.crt/.key signed by the CA; kind is "client" or "server"."""
        config = self.dir / "openssl.cnf"
        csr = self.dir / f"{name}.csr"
        _openssl(
            "req", "-new", "-config", str(config), *_NEWKEY, "-subj", subject,
            "-keyout", str(self.key(name)), "-out", str(csr),
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert),
            "-CAkey", str(self.ca_key), "-set_serial", f"0x{secrets.token_hex(16)}",
            "-days", "3650", "-extfile", str(config), "-extensions", kind,
            "-out", str(self.cert(name)),
        )  # fmt: skip
        csr.unlink()
        self.key(name).chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, pki: Pki, user: str) -> Path:
    """A self-contained kubeconfig (certificates inline; JSON is valid kubeconfig YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubeshot-testenv",
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki.cert(user)),
                    "client-key-data": _b64(pki.key(user)),
                },
            }
        ],
        "contexts": [
            {"name": "kubeshot-testenv", "context": {"cluster": "kubeshot-testenv", "user": user}}
        ],
        "current-context": "kubeshot-testenv",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------------ control plane


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def launch(name: str, argv: Sequence[str], work_dir: Path) -> _Process:
    """Start one component: log in work_dir/logs/<name>.log, pid in work_dir/<name>.pid."""
    log = work_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
            start_new_session=True,  # its own process group: stop() signals the whole group
            preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
        )
    (work_dir / f"{name}.pid").write_text(f"{popen.pid}\n")
    return _Process(name, popen, log)


def wait_ready(
    proc: _Process,
    deadline: float,
    ready: Callable[[], object],
    timeout: float,
    error: type[Exception],
) -> None:
    """Poll `ready()` until it is truthy; raise `error` with the log's tail if `proc` exits or
    the deadline passes first."""
    while True:
        if proc.popen.poll() is not None:
            raise error(
                f"{proc.name} exited with {proc.popen.returncode}; {proc.log}:\n{proc.log_tail()}"
            )
        with contextlib.suppress(OSError, ValueError):
            if ready():
                return
        if time.monotonic() > deadline:
            tail = proc.log_tail()
            raise error(f"{proc.name} not ready after {timeout:.0f}s; {proc.log}:\n{tail}")
        time.sleep(0.1)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager in `work_dir`; `start()`, then `stop()`."""

    bin_dir: Path
    work_dir: Path
    start_timeout: float = 120.0
    keep_data: bool = False
    processes: list[_Process] = field(default_factory=list)
    server: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    pki: Pki | None = None

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (system:masters)."""
        return self.work_dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    # -- lifecycle

    def start(self) -> ControlPlane:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(f"{self.bin_dir} lacks {missing}; run `make testenv`")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.pki = Pki.generate(self.work_dir / "pki")
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        # A free port can be taken by someone else between choosing and binding: try again.
        for attempt in range(3):
            try:
                self._start_once(deadline)
                return self
            except _PortRace:
                self.stop()
                if attempt == 2:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop every component (newest first); idempotent, safe from atexit and finalizers."""
        while self.processes:
            proc = self.processes.pop()
            _terminate(proc.popen)
        if not self.keep_data:
            shutil.rmtree(self.work_dir / "etcd-data", ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_once(self, deadline: float) -> None:
        etcd_client, etcd_peer, apiserver, controller_manager = free_ports(4)
        self.ports = {
            "etcd": etcd_client,
            "etcd-peer": etcd_peer,
            "kube-apiserver": apiserver,
            "kube-controller-manager": controller_manager,
        }
        self.server = f"https://127.0.0.1:{apiserver}"
        pki = self.pki
        assert pki is not None
        write_kubeconfig(self.kubeconfig, self.server, pki, "admin")
        cm_kubeconfig = write_kubeconfig(
            self.work_dir / "controller-manager.kubeconfig", self.server, pki, "controller-manager"
        )
        data_dir = self.work_dir / "etcd-data"
        shutil.rmtree(data_dir, ignore_errors=True)

        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                "--name=testenv",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=testenv={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",  # throw-away data: durability buys nothing here
                "--log-level=warn",
            ],
        )
        self._wait(etcd, deadline, lambda: _http_ok(f"{etcd_url}/health"))

        apiserver_proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoints of the `kubernetes` Service may not be loopback: the node tier
                # (testenv/node.py) writes them when it joins, with an address pods can reach.
                "--endpoint-reconciler-type=none",
                f"--secure-port={apiserver}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                f"--client-ca-file={pki.ca_cert}",
                f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
                # The node tier's kubelet registers no resolvable hostname: dial its InternalIP.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=PodSecurity,NamespaceLifecycle,ServiceAccount",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--profiling=false",
                "--shutdown-delay-duration=0s",
            ],
        )
        context = self.ssl_context()
        self._wait(
            apiserver_proc, deadline, lambda: _http_ok(f"{self.server}/readyz", context=context)
        )

        cm = self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={controller_manager}",
                f"--cert-dir={self.work_dir / 'controller-manager-certs'}",
                f"--service-account-private-key-file={pki.service_account_key}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # its self-signed serving cert; /healthz only
        self._wait(
            cm,
            deadline,
            lambda: _http_ok(f"https://127.0.0.1:{controller_manager}/healthz", context=insecure),
        )
        # The service-account controllers work once `default` has its ServiceAccount.
        self._wait(
            cm, deadline, lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")
        )

    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        proc = launch(name, [str(self.bin_dir / name), *args], self.work_dir)
        self.processes.append(proc)
        return proc

    def _wait(self, proc: _Process, deadline: float, ready: Callable[[], object]) -> None:
        try:
            wait_ready(proc, deadline, ready, self.start_timeout, ControlPlaneError)
        except ControlPlaneError:
            if proc.popen.poll() is not None and "address already in use" in proc.log_tail():
                raise _PortRace(proc.name) from None
            raise

    # -- talking to it

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context trusting the cluster CA and presenting the admin client certificate."""
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(self.pki.cert("admin"), self.pki.key("admin"))
        return context

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One admin REST call; returns (status, decoded JSON body)."""
        data = json.dumps(body).encode() if body is not None else None
        url = f"{self.server}{path}"  # always https://127.0.0.1:<port>
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=30) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def get(self, path: str) -> dict[str, Any] | None:
        status, body = self.request("GET", path)
        return body if status == 200 else None

    def env(self) -> dict[str, str]:
        """Environment for a child process that should talk to this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def state(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "pids": {p.name: p.popen.pid for p in self.processes},
            "bin_dir": str(self.bin_dir),
        }


class _PortRace(ControlPlaneError):
    pass


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310
        return bool(resp.status == 200)


def _terminate(popen: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds, reap the leader."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
    with contextlib.suppress(ProcessLookupError):  # children of the leader, if any
        os.killpg(popen.pid, signal.SIGKILL)


# ------------------------------------------------------------------- serve / down (up.sh, down.sh)


def serve(work_dir: Path) -> int:
    """Run the control plane until SIGTERM or SIGINT; write state.json once it is ready."""
    work_dir.mkdir(parents=True, exist_ok=True)
    state_file = work_dir / "state.json"
    state_file.unlink(missing_ok=True)
    (work_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cp = ControlPlane(find_bin_dir(), work_dir)
    try:
        started = time.monotonic()
        cp.start()
        print(f"control plane ready in {time.monotonic() - started:.1f}s", flush=True)
        state_file.write_text(json.dumps(cp.state(), indent=2) + "\n")
        while not stop:
            for proc in cp.processes:
                if proc.popen.poll() is not None:
                    print(f"{proc.name} exited: {proc.log}\n{proc.log_tail()}", flush=True)
                    return 1
            time.sleep(0.5)
        return 0
    except ControlPlaneError as err:
        print(err, file=sys.stderr, flush=True)
        return 1
    finally:
        cp.stop()
        state_file.unlink(missing_ok=True)
        for name in ("supervisor", *BINARIES):
            (work_dir / f"{name}.pid").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def down(work_dir: Path, timeout: float = 30.0) -> int:
    pid_file = work_dir / "supervisor.pid"
    if not pid_file.exists():
        print(f"no control plane running for {work_dir}")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    # Whatever is left (supervisor killed hard, or stuck): kill the recorded process groups.
    for name in ("supervisor", *BINARIES):
        file = work_dir / f"{name}.pid"
        if file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(file.read_text()), signal.SIGKILL)
            file.unlink()
    (work_dir / "state.json").unlink(missing_ok=True)
    print("control plane stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["serve", "down"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".testenv" / "run")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.dir.resolve())
    return down(args.dir.resolve())


if __name__ == "__main__":
    sys.exit(main())

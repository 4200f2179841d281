"""Capture workers run hostile pages: they get nothing of the gateway. Not its uid when it runs
as root (they drop to `nobody`), not its secrets (gone from its environment, /proc included),
not its memory (it is not dumpable); and Chromium keeps its sandbox where the kernel allows it.

The gateway tier runs as root on this machine, which is the case the attack needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import ClientSession, web

from kubeshot.gateway import create_app, pool, procs
from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from tests.conftest import need
from tests.gateway.conftest import Gateway, Pages, base_settings, tagged_processes
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody")
# A worker whose engine tries what a compromised browser would (tests/gateway/environ_probe.py).
PROBE_WORKER = [
    sys.executable,
    "-c",
    f"import sys; sys.path.append({str(ROOT)!r}); from kubeshot.gateway.worker import main;"
    " sys.exit(main(['--engine', 'tests.gateway.environ_probe:EnvironProbe']))",
]


def as_root() -> None:
    need(os.geteuid() == 0, "the gateway tier runs as root here: workers drop to nobody")


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def user_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/user")
    except OSError:
        return None


def is_browser(pid: int) -> bool:
    # Chromium's zygotes rewrite their command line into one string: look into every part.
    return any("/chromium/" in part for part in cmdline(pid))


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def worker_trees(parent: int) -> dict[int, set[int]]:
    """The whole process tree of each Chromium capture worker whose parent is `parent` (not the
    probe's: they run `-c`), by worker pid: tagged processes, and the sandboxed ones, which
    leave the tag behind, found as descendants."""
    trees = {}
    for tag, pids in tagged_processes().items():
        for pid in pids:
            if parent_of(pid) == parent and "kubeshot.gateway.worker" in cmdline(pid):
                trees[pid] = procs.process_tree(pid, tag)
    return trees


def user_namespaces_allowed() -> bool:
    """Whether nobody may create the namespaces Chromium's sandbox needs."""
    tried = subprocess.run(
        ["unshare", "--user", "--pid", "--net", "--fork", "true"],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        capture_output=True,
        check=False,
    )
    return tried.returncode == 0


@pytest_asyncio.fixture(scope="module")
async def probe_gateway(
    policy_file: Path, tokens_file: Path, session: ClientSession
) -> AsyncIterator[Gateway]:
    settings = base_settings(policy_file, tokens_file, workers=1)
    backend = pool.LocalBackend(workers=1, worker_command=PROBE_WORKER, start_timeout=30)
    app = create_app(settings, backend=backend)
    runner = web.AppRunner(app, shutdown_timeout=settings.http_shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.port).start()
    gateway = Gateway(f"http://127.0.0.1:{settings.port}", app, runner, settings)
    await gateway.wait_ready(session)
    yield gateway
    await gateway.stop()


async def test_a_worker_cannot_read_trace_or_signal_the_gateway(
    probe_gateway: Gateway, session: ClientSession
) -> None:
    as_root()
    async with session.post(
        f"{probe_gateway.url}/v1/screenshot",
        json={"html": "<p>probe</p>", "format": "html"},
        headers=probe_gateway.auth(),
    ) as response:
        assert response.status == 200, await response.text()
        seen = json.loads(await response.read())
    assert seen["gateway"] == os.getpid()  # the gateway under test is this process
    assert seen["uids"] == [NOBODY.pw_uid] * 3
    assert seen["gids"] == [NOBODY.pw_gid] * 3
    assert seen["groups"] == []
    assert seen["read_environ"] == "PermissionError"
    assert seen["open_mem"] == "PermissionError"
    assert seen["signal"] == "PermissionError"
    assert seen["become_root"] == "PermissionError"
    assert seen["secrets"] == []
    # What a worker must write (Chromium's profile, caches, temp files) it still can, in a
    # directory of its own.
    assert seen["write_home"] == seen["write_tmp"] == "ok"
    assert Path(seen["tmp"]).name.startswith("kubeshot-worker-")
    # Same-uid processes (a gateway run by an ordinary user) are kept out by this.
    assert not procs.is_dumpable()


async def test_a_worker_that_keeps_root_never_captures() -> None:
    as_root()
    # A worker that reads the gateway's instruction to drop its privileges, and ignores it.
    keeps_root = [
        sys.executable,
        "-c",
        "import os, sys; os.environ.pop('KUBESHOT_WORKER_RUN_AS');"
        f" sys.path.append({str(ROOT)!r});"
        " from kubeshot.gateway.worker import main;"
        " sys.exit(main(['--engine', 'tests.gateway.environ_probe:EnvironProbe']))",
    ]
    with pytest.raises(pool.WorkerLost, match="did not drop its privileges"):
        await pool.Worker.start(keeps_root, 30, pool.resolve_worker_user(None))


async def test_the_workers_of_a_root_gateway_and_their_browsers_run_as_nobody(
    gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    as_root()
    async with session.post(
        f"{gateway.url}/v1/screenshot", json={"url": pages.base + "/"}, headers=gateway.auth()
    ) as response:
        assert response.status == 200
    trees = worker_trees(os.getpid())
    assert trees, "no capture worker found"
    for pids in trees.values():
        found = {pid: procs.credentials(pid) for pid in pids}
        running = {pid: c for pid, c in found.items() if c is not None}
        assert any(is_browser(pid) for pid in running)
        for pid, creds in running.items():
            assert set(creds.uids) == {NOBODY.pw_uid}, (pid, cmdline(pid), creds)
            assert set(creds.gids) == {NOBODY.pw_gid}, (pid, cmdline(pid), creds)
            assert set(creds.groups) <= {NOBODY.pw_gid}, (pid, cmdline(pid), creds)


async def test_chromium_keeps_its_sandbox_where_the_kernel_allows_it(
    gateway: Gateway, session: ClientSession, pages: Pages
) -> None:
    as_root()
    need(user_namespaces_allowed(), "this kernel refuses user namespaces to nobody")
    async with session.post(
        f"{gateway.url}/v1/screenshot", json={"url": pages.base + "/"}, headers=gateway.auth()
    ) as response:
        assert response.status == 200
    trees = worker_trees(os.getpid())
    assert trees, "no capture worker found"
    for worker, pids in trees.items():
        browsers = [pid for pid in pids if is_browser(pid)]
        assert browsers
        assert not [pid for pid in browsers if "--no-sandbox" in " ".join(cmdline(pid))]
        # The sandboxed processes (zygotes, renderers) live in user namespaces of their own.
        namespaces = {user_namespace(pid) for pid in browsers} - {None}
        assert namespaces - {user_namespace(worker)}, namespaces


async def test_serve_removes_its_secrets_from_its_environment(
    policy_file: Path, pages: Pages, session: ClientSession, tmp_path: Path
) -> None:
    """`kubeshot serve` as an operator runs it: secrets in the environment, read once, then gone
    from it, /proc/PID/environ included; its workers run as nobody and still capture."""
    as_root()
    token = "serve-secret-" + secrets.token_hex(16)
    signing = secrets.token_hex(24)
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVIRONMENT}
    env.update(AUTH_TOKEN=token, URL_SIGNING_SECRET=f"k9:{signing}")
    port = free_port()
    with (tmp_path / "serve.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kubeshot.cli", "serve", "--port", str(port),
            "--metrics-port", "0", "--workers", "1", "--policy", str(policy_file),
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(900):
            assert process.returncode is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(OSError):
                async with session.get(f"{url}/readyz") as ready:
                    if ready.status == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("kubeshot serve never became ready")
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()  # noqa: ASYNC240
        assert token.encode() not in environ
        assert signing.encode() not in environ
        assert b"AUTH_TOKEN=" not in environ
        async with session.post(
            f"{url}/v1/screenshot",
            json={"url": pages.base + "/"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200
            assert (await response.read()).startswith(b"\x89PNG")
        trees = worker_trees(process.pid)
        assert trees
        for pids in trees.values():
            for pid in pids:
                creds = procs.credentials(pid)
                assert creds is None or set(creds.uids) == {NOBODY.pw_uid}, cmdline(pid)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await process.wait()

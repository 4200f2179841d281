"""The local backend: a supervised pool of capture worker processes on this machine.

Each worker is a separate process (its own session) running one CaptureEngine, so a capture
that misbehaves can be killed with everything it started. While a worker captures, the pool
measures the memory of its whole process tree; over the policy's `limits.memory` the tree is
killed, the capture fails with MemoryLimitExceeded and a fresh worker takes its place. Workers
are recycled after `captures_per_worker` captures. Captures wait for a worker in a bounded
queue; beyond it, or after `queue_timeout`, the caller gets 503. The gateway process is the
child subreaper of its workers, so no Chromium process can outlive it as an orphan.

Its policies are the `--policy` files (a PolicySet); it runs no asynchronous jobs of its own
(the gateway's JobRegistry runs them on its captures).

Workers run hostile pages, so they get nothing of the gateway: not its secrets (removed from the
gateway's own environment when the backend starts, and never passed on), not its memory (the
gateway is not dumpable: no same-uid ptrace or /proc/PID/environ), and, when the gateway runs as
root, not its uid: each worker drops to `worker_user` (`nobody` by default) before it starts
Chromium, which then keeps its sandbox. Each worker has a private home and temp directory of its
own, removed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from kubeshot import logs, tracing
from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    CaptureOutcome,
    CaptureRequest,
    FailureReason,
    ProxyCredentials,
    ScreenshotPolicy,
    ScreenshotPolicySpec,
)
from kubeshot.api.admission import effective_timeout
from kubeshot.gateway import procs
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, CaptureResult
from kubeshot.gateway.errors import overloaded
from kubeshot.gateway.metrics import Metrics
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.settings import SECRET_ENVIRONMENT
from kubeshot.gateway.worker import (
    DEFAULT_SPARES,
    RUN_AS,
    SPARES,
    capture_frame,
    read_frame_async,
)

log = logging.getLogger("kubeshot.gateway.pool")
# Time a capture gets beyond its own timeout before its worker is killed: the engine reports
# its own timeouts; this is the backstop for a worker that stopped answering.
DEADLINE_GRACE = 10.0
STREAM_LIMIT = 2**16


WORKER_TAG = "KUBESHOT_WORKER_TAG"
# Every worker process ever started here: asyncio collects their exit status, never the reaper.
SPAWNED: set[int] = set()
# Who the workers of a root gateway run as unless told otherwise.
DEFAULT_WORKER_USER = "nobody"


@dataclass(frozen=True)
class WorkerUser:
    """The unprivileged user capture workers drop to."""

    uid: int
    gid: int

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


def _uid(name: str) -> tuple[int, int | None]:
    """A user name or number: its uid and, when it is known to the system, its primary gid."""
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        if name.isdigit():
            return int(name), None
        raise ValueError(f"no such user: {name!r}") from None
    return entry.pw_uid, entry.pw_gid


def _gid(name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {name!r}") from None


def resolve_worker_user(spec: str | None, euid: int | None = None) -> WorkerUser | None:
    """Who the capture workers run as; None: as the gateway itself.

    `spec` is `USER[:GROUP]` (names or numbers; the group defaults to the user's own, else the
    uid). Unset, a gateway running as root (`euid` 0) gives its workers `nobody`, and any other
    gateway its own user. `root` (or 0) keeps root workers, only by that explicit choice:
    Chromium then runs without its sandbox. ValueError for an unknown user or group, and for
    another user than its own when the gateway cannot change users (it is not root), or for
    the group root.
    """
    euid = os.geteuid() if euid is None else euid
    if spec is None or not spec.strip():
        if euid != 0:
            return None
        try:
            spec = pwd.getpwnam(DEFAULT_WORKER_USER).pw_name
        except KeyError:  # a system without one: the overflow uid Linux calls nobody
            spec = "65534"
    user, _, group = spec.strip().partition(":")
    uid, primary = _uid(user)
    gid = _gid(group) if group else (primary if primary is not None else uid)
    if uid == 0:
        if euid != 0:
            raise ValueError(f"worker user {spec!r}: the gateway does not run as root")
        log.warning(
            "capture workers run as root (worker user %r): Chromium runs without its sandbox "
            "and a compromised browser process is root on this machine",
            spec,
        )
        return None
    if euid != 0:
        if uid != euid:
            raise ValueError(
                f"worker user {spec!r}: only a gateway started as root can run its capture "
                "workers as another user"
            )
        return None
    if gid == 0:
        raise ValueError(f"worker user {spec!r}: the group root is no unprivileged group")
    return WorkerUser(uid, gid)


def worker_environment(
    tag: str, home: str, user: WorkerUser | None = None, spares: int = DEFAULT_SPARES
) -> dict[str, str]:
    """The gateway's environment without its secrets (a page must never find a token in
    /proc/self/environ), with the worker's private home and temp directory, the user it drops
    to, its number of spare contexts, and the tag that finds every process of this worker."""
    secret = set(SECRET_ENVIRONMENT)
    # XDG_* name the gateway's own directories; under HOME the defaults are the worker's.
    env = {k: v for k, v in os.environ.items() if k not in secret and not k.startswith("XDG_")}
    env.update({"HOME": home, "TMPDIR": home, SPARES: str(spares)})
    if user is not None:
        env[RUN_AS] = str(user)
    name, _, value = tag.partition("=")
    env[name] = value
    return env


def private_directory(user: WorkerUser | None) -> str:
    """A new directory only the worker's user may enter (Chromium's profile, caches, temp files)."""
    path = tempfile.mkdtemp(prefix="kubeshot-worker-")
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


def _runs_as(pid: int, user: WorkerUser) -> bool:
    """Whether every uid and gid of the process is the user's, with no other group."""
    found = procs.credentials(pid)
    return (
        found is not None
        and set(found.uids) == {user.uid}
        and set(found.gids) == {user.gid}
        and set(found.groups) <= {user.gid}
    )


class WorkerLost(Exception):
    """The worker process ended or stopped answering."""


class Worker:
    """One worker process and its pipe."""

    def __init__(self, process: asyncio.subprocess.Process, tag: str, home: str) -> None:
        self.process = process
        self.tag = tag
        self.home = home
        self.pid = process.pid
        self.captures = 0
        self.alive = True
        self.peak_memory = 0
        self.busy = False
        self.meter = procs.TreeMeter(self.pid, tag)

    @classmethod
    async def start(
        cls,
        command: Sequence[str],
        start_timeout: float,
        user: WorkerUser | None = None,
        spares: int = DEFAULT_SPARES,
    ) -> Worker:
        """Start a worker; `user`: the one it drops to before it starts a browser; `spares`:
        the contexts its engine keeps open ahead of captures."""
        tag = f"{WORKER_TAG}={uuid.uuid4().hex}"
        home = private_directory(user)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=STREAM_LIMIT,
                env=worker_environment(tag, home, user, spares),
            )
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        SPAWNED.add(process.pid)
        worker = cls(process, tag, home)
        try:
            assert process.stdout is not None
            frame = await asyncio.wait_for(read_frame_async(process.stdout), start_timeout)
            if frame is None or frame[0].get("op") != "ready":
                raise WorkerLost("the worker exited before it was ready")
            # Trust, but verify: a worker that did not drop its privileges never captures.
            if user is not None and not _runs_as(process.pid, user):
                raise WorkerLost(f"the worker did not drop its privileges to {user}")
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def capture(
        self, request: CaptureRequest, memory_limit: int, deadline: float, poll: float
    ) -> tuple[dict[str, object], bytes]:
        """Send one request, watch memory and deadline until the answer comes."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.captures += 1
        self.busy = True
        answer = asyncio.ensure_future(read_frame_async(self.process.stdout))
        try:
            try:
                self.process.stdin.write(capture_frame(request, logs.context()))
                await self.process.stdin.drain()
            except ConnectionError:
                raise WorkerLost("the capture worker had ended") from None
            while True:
                done, _ = await asyncio.wait({answer}, timeout=poll)
                if done:
                    frame = answer.result()
                    if frame is None:
                        raise WorkerLost("the capture worker ended unexpectedly")
                    return frame
                memory = await asyncio.to_thread(self.meter.measure)
                self.peak_memory = max(self.peak_memory, memory)
                if memory > memory_limit:
                    raise CaptureError(
                        FailureReason.MEMORY_LIMIT_EXCEEDED,
                        f"the capture used {memory // 2**20} MiB, over its limit of "
                        f"{memory_limit // 2**20} MiB; it was stopped",
                    )
                if time.monotonic() > deadline:
                    raise CaptureError(
                        FailureReason.TIMEOUT, "the capture did not finish within its time limit"
                    )
        finally:
            self.busy = False
            answer.cancel()

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit (its engine closes Chromium), then make sure it did."""
        # Known now, while alive: processes adopted by us become zombies with no tag to find.
        members = await asyncio.to_thread(procs.process_tree, self.pid, self.tag)
        if self.alive and self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(self.process.wait(), grace)
        await self.kill(members)

    async def kill(self, members: set[int] | None = None) -> None:
        """SIGKILL the worker's whole process tree and reap what we adopted of it."""
        self.alive = False
        pids: set[int] = set(members or ()) | self.meter.members
        deadline = time.monotonic() + 10
        while True:
            tree = await asyncio.to_thread(procs.kill_tree, self.pid, self.tag)
            pids |= tree
            others = pids - {self.pid}
            procs.reap(others)
            if not any(procs.unfinished(pid, tree, pids) for pid in others):
                break
            if time.monotonic() > deadline:
                log.error("processes of worker %d survived SIGKILL: %s", self.pid, sorted(tree))
                break
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)
        await asyncio.to_thread(shutil.rmtree, self.home, True)


class LocalBackend(Backend):
    """Runs captures in a pool of worker processes on this machine.

    `policies` are the ones admission may name (the built-in default without); `proxy`, when
    set, is the upstream proxy of every capture, else the policy's `network.proxy` is.
    `worker_user` is who the workers run as (resolve_worker_user; ValueError at once when it
    cannot be).
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        captures_per_worker: int = 50,
        queue_size: int = 16,
        queue_timeout: float = 30.0,
        start_timeout: float = 60.0,
        poll_interval: float = 0.1,
        shutdown_grace: float = 30.0,
        metrics: Metrics | None = None,
        worker_command: Sequence[str] | None = None,
        policies: PolicySet | None = None,
        proxy: ProxyCredentials | None = None,
        worker_user: str | None = None,
        spare_contexts: int = DEFAULT_SPARES,
    ) -> None:
        self.user = resolve_worker_user(worker_user)
        self.spare_contexts = spare_contexts
        self.policies = policies or PolicySet([])
        self.proxy = proxy
        self.size = workers
        self.captures_per_worker = captures_per_worker
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.metrics = metrics or Metrics()
        self.metrics.queue_capacity.set(queue_size)
        self.command = list(worker_command or [sys.executable, "-m", "kubeshot.gateway.worker"])
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._workers: set[Worker] = set()
        self._spawning: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._watching: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._busy = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._reaper: asyncio.Task[None] | None = None
        self._abort: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Pages run on this machine from now on: nothing of the gateway may be readable by them.
        scrubbed = procs.scrub_environment(SECRET_ENVIRONMENT)
        if scrubbed:
            log.info("removed %s from the gateway's environment", ", ".join(scrubbed))
        if not procs.make_undumpable():
            log.warning("could not make the gateway undumpable (prctl PR_SET_DUMPABLE)")
        if self.user is not None:
            log.info("capture workers run as %s", self.user)
        procs.become_subreaper()
        for _ in range(self.size):
            self._spawn()
        self._reaper = asyncio.create_task(self._reap_periodically())

    async def _reap_periodically(self) -> None:
        """Chromium processes orphaned inside a live worker's tree end up as our zombies."""
        while True:
            await asyncio.sleep(1.0)
            procs.reap_adopted(SPAWNED)

    def _spawn(self) -> None:
        task = asyncio.create_task(self._start_worker())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _start_worker(self) -> None:
        delay = 0.5
        while not self._closing:
            try:
                worker = await Worker.start(
                    self.command, self.start_timeout, self.user, self.spare_contexts
                )
            except (OSError, WorkerLost, TimeoutError) as exc:
                log.error("a capture worker failed to start (%s); retrying in %.1fs", exc, delay)
                self.metrics.worker_restarts.labels(reason="start_failed").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._closing:
                await worker.stop()
                return
            self._workers.add(worker)
            self._idle.put_nowait(worker)
            self._watch(worker)
            self._update_gauges()
            log.info("capture worker %d ready", worker.pid)
            return

    @property
    def ready(self) -> bool:
        return not self._closing and bool(self._workers) and self.can_accept()

    def can_accept(self) -> bool:
        return not self._closing and (self._idle.qsize() > 0 or self._waiting < self.queue_size)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self._waiting)
        self.metrics.workers.labels(state="idle").set(self._idle.qsize())
        self.metrics.workers.labels(state="busy").set(self._busy)

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        return self.policies.get(name)

    def _proxy_for(self, policy: ScreenshotPolicySpec) -> ProxyCredentials | None:
        if self.proxy is not None:
            return self.proxy
        if policy.network.proxy is not None:
            return ProxyCredentials(server=policy.network.proxy.server)
        return None

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        if self._closing:
            raise overloaded("the gateway is shutting down", retry_after=5)
        if self._idle.qsize() == 0 and self._waiting >= self.queue_size:
            self.metrics.overloaded.inc()
            raise overloaded("every capture worker is busy and the queue is full")
        with self.metrics.timing(options.format) as clock:  # queue wait, then capture time
            self._waiting += 1
            self._update_gauges()
            try:
                with tracing.span("queue wait"):
                    worker = await asyncio.wait_for(self._idle_worker(), self.queue_timeout)
            except TimeoutError:
                self.metrics.overloaded.inc()
                raise overloaded("no capture worker became free in time") from None
            finally:
                self._waiting -= 1
                self._update_gauges()
            clock.start()
            self._busy += 1
            self._drained.clear()
            self._update_gauges()
            try:
                proxy = self._proxy_for(policy.spec)
                request = CaptureRequest(options=options, policy=policy.spec, proxy=proxy)
                return await self._run(worker, request)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._drained.set()
                self._update_gauges()

    async def _idle_worker(self) -> Worker:
        while (worker := await self._idle.get()) not in self._workers:
            pass  # replaced while it waited (_watch)
        return worker

    async def _run(self, worker: Worker, request: CaptureRequest) -> CaptureResult:
        timeout = effective_timeout(request.options, request.policy) + DEADLINE_GRACE
        deadline = time.monotonic() + timeout
        healthy = False
        try:
            with tracing.span("worker capture", {"kubeshot.worker.pid": worker.pid}) as span:
                header, payload = await worker.capture(
                    request, request.policy.limits.memory_bytes, deadline, self.poll_interval
                )
            outcome = CaptureOutcome.model_validate(header.get("outcome"))
            if outcome.failure is not None and outcome.failure.reason is FailureReason.POD_LOST:
                raise WorkerLost(outcome.failure.message)  # its browser exited; so does it
            healthy = True
        except CaptureError as exc:
            reason = {
                FailureReason.MEMORY_LIMIT_EXCEEDED: "memory_limit",
                FailureReason.TIMEOUT: "timeout",
            }.get(exc.reason, "error")
            log.warning("capture worker %d killed: %s", worker.pid, exc)
            await self._replace(worker, reason)
            raise
        except WorkerLost as exc:
            log.warning("capture worker %d lost: %s", worker.pid, exc)
            await self._replace(worker, "shutdown" if self._closing else "crashed")
            message = "the gateway shut down during the capture" if self._closing else str(exc)
            raise CaptureError(FailureReason.POD_LOST, message) from None
        except BaseException:
            await self._replace(worker, "cancelled")
            raise
        finally:
            if healthy:
                if worker.captures >= self.captures_per_worker:
                    retiring = asyncio.create_task(self._retire(worker))
                    self._retiring.add(retiring)
                    retiring.add_done_callback(self._retiring.discard)
                else:
                    self._idle.put_nowait(worker)
        report = outcome.report()
        tracing.record_phases(report.timings.phases, parent=span)  # the worker's own clock
        return CaptureResult(payload, report)

    def _watch(self, worker: Worker) -> None:
        """Replace the worker when it exits while idle (its browser exited), at once."""

        async def watch() -> None:
            await worker.process.wait()
            if worker in self._workers and not worker.busy:
                log.warning("capture worker %d exited while idle", worker.pid)
                await self._replace(worker, "crashed")

        task = asyncio.create_task(watch())
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _replace(self, worker: Worker, reason: str) -> None:
        self._workers.discard(worker)
        self.metrics.worker_restarts.labels(reason=reason).inc()
        await worker.kill()
        if not self._closing:
            self._spawn()

    async def _retire(self, worker: Worker) -> None:
        self._workers.discard(worker)
        self.metrics.worker_restarts.labels(reason="recycled").inc()
        if not self._closing:
            self._spawn()
        await worker.stop()

    def begin_shutdown(self) -> None:
        """Refuse new captures; in-flight ones get `shutdown_grace` seconds, then fail (503)."""
        if not self._closing:
            self._closing = True
            self._abort = asyncio.create_task(self._abort_after(self.shutdown_grace))

    async def _abort_after(self, grace: float) -> None:
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._drained.wait(), grace)
            return
        busy = [w for w in self._workers if w.busy]
        log.warning("shutting down: failing %d capture(s) still running", len(busy))
        await asyncio.gather(*(w.kill() for w in busy), return_exceptions=True)

    async def close(self) -> None:
        self.begin_shutdown()
        if self._abort is not None:
            await asyncio.gather(self._abort, return_exceptions=True)
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 10)
        for task in list(self._spawning):
            task.cancel()
        await asyncio.gather(*self._spawning, return_exceptions=True)
        workers = list(self._workers)
        self._workers.clear()
        await asyncio.gather(
            *(w.stop() for w in workers), *self._retiring, *self._watching, return_exceptions=True
        )

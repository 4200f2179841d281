"""Process trees on Linux, read from /proc: memory of a tree, killing a tree, reaping orphans.

A capture worker runs in its own session; Playwright's driver and Chromium are its descendants
(Chromium starts sessions of its own and double-forks its crash handler, so the worker's tree is
also found by a tag in the environment every descendant inherits).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    return text[text.rfind(")") + 2 :].split()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _has_tag(pid: int, tag: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return tag in f.read().split(b"\0")
    except OSError:
        return False


def process_tree(root: int, tag: str | None = None) -> set[int]:
    """root, its descendants, every process in root's session, and every process whose
    environment carries `tag` (Chromium starts new sessions and double-forks its crash handler,
    so only the inherited environment finds all of them)."""
    parents: dict[int, int] = {}
    sessions: dict[int, int] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # fields[0] is the state, [1] ppid, [2] pgrp, [3] session.
        parents[pid] = int(fields[1])
        sessions[pid] = int(fields[3])
    tree = {root} if root in parents else set()
    tree |= {pid for pid, sid in sessions.items() if sid == root}
    if tag is not None:
        marker = tag.encode()
        tree |= {pid for pid in parents if pid != os.getpid() and _has_tag(pid, marker)}
    changed = True
    while changed:
        children = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= children
        changed = bool(children)
    return tree


def _status_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"RssAnon:", b"RssFile:", b"RssShmem:")):
                    name, value = line.split()[:2]
                    values[name.decode().rstrip(":")] = int(value)
    except (OSError, ValueError):
        pass
    return values


def memory_of(pids: set[int]) -> int:
    """Memory of these processes in bytes, as a memory cgroup would roughly charge it: every
    process's anonymous and shared-memory pages, plus file pages once (the Chromium binary is
    mapped by every process of the tree). Reading /proc/PID/status costs microseconds where the
    exact PSS (smaps_rollup) costs ~15 ms per Chromium process."""
    private = 0
    files = 0
    for pid in pids:
        status = _status_kib(pid)
        private += status.get("RssAnon", 0) + status.get("RssShmem", 0)
        files = max(files, status.get("RssFile", 0))
    return (private + files) * 1024


def tree_memory(root: int, tag: str | None = None) -> int:
    """Memory of root's whole tree (see process_tree and memory_of), in bytes."""
    return memory_of(process_tree(root, tag))


class TreeMeter:
    """Measures a tree often, but finds its members (a scan of all of /proc) less often."""

    def __init__(self, root: int, tag: str | None, rescan_seconds: float = 1.0) -> None:
        self.root = root
        self.tag = tag
        self.rescan_seconds = rescan_seconds
        self._pids: set[int] = set()
        self._scanned = float("-inf")

    @property
    def members(self) -> set[int]:
        """The tree as last scanned."""
        return set(self._pids)

    def measure(self) -> int:
        now = time.monotonic()
        if now - self._scanned >= self.rescan_seconds:
            self._pids = process_tree(self.root, self.tag)
            self._scanned = now
        return memory_of(self._pids)


def unfinished(pid: int, tree: set[int], known: set[int]) -> bool:
    """Still alive in the tree, or a zombie that is ours to reap, or will be once its parent
    (one of `known`) has died and it has been handed to us."""
    fields = _stat_fields(pid)
    if fields is None:
        return False
    if fields[0] in {"Z", "X"}:
        parent = int(fields[1])
        return parent == os.getpid() or parent in known
    return pid in tree


def kill_tree(root: int, tag: str | None = None) -> set[int]:
    """SIGKILL root's whole tree (stopped first so nothing forks away meanwhile); the pids hit."""
    tree = process_tree(root, tag)
    for pid in tree:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGSTOP)
    tree |= process_tree(root, tag)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(root, signal.SIGKILL)
    for pid in tree:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return tree


def _prctl(option: int, value: int) -> int:
    """prctl(option, value); -1 when it failed or there is no prctl."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


def become_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (so none escapes to init)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0: processes of the same uid without CAP_SYS_PTRACE (a capture worker of a
    gateway run by an ordinary user) can no longer ptrace this one or read its /proc/PID/environ,
    mem, maps or fds; and no core dump spills its memory."""
    return _prctl(_PR_SET_DUMPABLE, 0) == 0


def is_dumpable() -> bool:
    return _prctl(_PR_GET_DUMPABLE, 0) == 1


def forbid_new_privileges() -> bool:
    """PR_SET_NO_NEW_PRIVS: nothing this process executes gains privileges (setuid binaries,
    file capabilities), and it is inherited by every descendant."""
    return _prctl(_PR_SET_NO_NEW_PRIVS, 1) == 0


def scrub_environment(names: Iterable[str]) -> list[str]:
    """Remove `names` from this process's environment, the copies it was started with included.

    os.environ and unsetenv() forget a variable, but /proc/PID/environ shows the block the
    kernel wrote at exec time, which keeps it; so its `NAME=value` entries are overwritten with
    zero bytes too. The names found (in either place), sorted.
    """
    wanted = {name.encode() + b"=" for name in names}
    found = {name for name in names if os.environ.pop(name, None) is not None}
    fields = _stat_fields(os.getpid())
    if fields is None or len(fields) < 49:
        return sorted(found)
    # Fields 50 and 51 of /proc/PID/stat (indices 47 and 48 here): env_start and env_end.
    start, end = int(fields[47]), int(fields[48])
    if not 0 < start < end:
        return sorted(found)
    block = ctypes.string_at(start, end - start)
    offset = 0
    for entry in block.split(b"\0"):
        if any(entry.startswith(prefix) for prefix in wanted):
            ctypes.memset(start + offset, 0, len(entry))
            found.add(entry.split(b"=", 1)[0].decode())
        offset += len(entry) + 1
    return sorted(found)


@dataclass(frozen=True)
class Credentials:
    """Who a process runs as: (real, effective, saved, filesystem) uids and gids, its groups."""

    uids: tuple[int, ...]
    gids: tuple[int, ...]
    groups: tuple[int, ...]


def credentials(pid: int) -> Credentials | None:
    """The credentials of a process from /proc/PID/status; None when it is gone."""
    values: dict[str, tuple[int, ...]] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                name, _, rest = line.decode("ascii", "replace").partition(":")
                if name in {"Uid", "Gid", "Groups"}:
                    values[name] = tuple(int(v) for v in rest.split())
    except (OSError, ValueError):
        return None
    return Credentials(values.get("Uid", ()), values.get("Gid", ()), values.get("Groups", ()))


def reap(pids: set[int]) -> None:
    """Collect the exit status of those of pids that are our (adopted) children."""
    for pid in pids:
        with suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


# Process names (comm, at most 15 characters) of what a capture worker's tree runs.
BROWSER_COMMS = frozenset(
    {"chromium", "chrome", "chrome_crashpad", "headless_shell", "node", "node-MainThread"}
)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def reap_adopted(exclude: set[int]) -> int:
    """Reap zombies handed to us as subreaper: browser processes (Chromium starts sessions of
    its own and double-forks) that are our children without our having started them
    (`exclude`: the worker processes, whose exit status asyncio collects). How many were
    reaped."""
    me = os.getpid()
    my_session = os.getsid(0)
    reaped = 0
    for pid in _all_pids():
        if pid in exclude:
            continue
        fields = _stat_fields(pid)
        if fields is None or fields[0] != "Z" or int(fields[1]) != me:
            continue
        if int(fields[3]) == my_session or _comm(pid) not in BROWSER_COMMS:
            continue  # started by other code in this process: not ours to collect
        with suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
            reaped += 1
    return reaped


def set_parent_death_signal() -> None:
    """In a child: be SIGKILLed when the parent dies (no worker outlives a crashed gateway).

    A change of uid clears it: call it after dropping privileges."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

"""A stand-in capture engine for tests/gateway/test_worker_isolation.py: asked for a capture, it
does what a compromised browser process would try, from inside a real capture worker, and
answers with what happened (JSON, as an `html` artifact).

Loaded by the worker (`--engine tests.gateway.environ_probe:EnvironProbe`) before it drops its
privileges, like the real engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeshot.api import CaptureReport


@dataclass(frozen=True)
class Artifact:
    data: bytes
    report: CaptureReport


def _attempt(action: Any) -> str:
    """`ok`, or the name of the error the action raised."""
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"


def _write_and_remove(directory: str) -> None:
    path = Path(directory) / "probe"
    path.write_bytes(b"x")
    path.unlink()


def probe() -> dict[str, Any]:
    gateway = os.getppid()
    return {
        "gateway": gateway,
        "uids": list(os.getresuid()),
        "gids": list(os.getresgid()),
        "groups": os.getgroups(),
        "read_environ": _attempt(lambda: Path(f"/proc/{gateway}/environ").read_bytes()),
        "open_mem": _attempt(lambda: open(f"/proc/{gateway}/mem", "rb").close()),
        "signal": _attempt(lambda: os.kill(gateway, 0)),
        "become_root": _attempt(lambda: os.setuid(0)),
        "write_home": _attempt(lambda: _write_and_remove(os.environ["HOME"])),
        "write_tmp": _attempt(lambda: _write_and_remove(tempfile.gettempdir())),
        "tmp": tempfile.gettempdir(),
        "secrets": sorted(k for k in ("AUTH_TOKEN", "URL_SIGNING_SECRET") if k in os.environ),
    }


class EnvironProbe:
    async def __aenter__(self) -> EnvironProbe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def capture(self, options: Any, policy: Any = None, proxy: Any = None) -> Artifact:
        data = json.dumps(probe()).encode()
        report = CaptureReport(
            content_type="text/html; charset=utf-8",
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            format="html",
        )
        return Artifact(data, report)

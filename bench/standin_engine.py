"""An engine that answers instantly with a fixed PNG: isolates the gateway's own overhead."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kubeshot.api import CaptureReport

DATA = b"\x89PNG\r\n\x1a\n" + bytes(5000)


@dataclass(frozen=True)
class Artifact:
    data: bytes
    report: CaptureReport


class StandInEngine:
    async def __aenter__(self) -> StandInEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def capture(self, options: Any, policy: Any = None, proxy: Any = None) -> Artifact:
        digest = hashlib.sha256(DATA).hexdigest()
        report = CaptureReport(
            content_type="image/png", bytes=len(DATA), sha256=digest, format="png"
        )
        return Artifact(DATA, report)

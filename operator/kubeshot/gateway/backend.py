"""Where captures run, seen from the gateway's handlers."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from kubeshot.api import CaptureOptions, CaptureReport, ProxyCredentials, ScreenshotPolicySpec


@dataclass(frozen=True)
class CaptureResult:
    """A verified artifact and the engine's report of it."""

    data: bytes
    report: CaptureReport


class Backend(abc.ABC):
    """Runs admitted captures. Raises kubeshot.api.CaptureError or errors.ApiError (overload)."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop taking captures, let in-flight ones finish or fail them, free every process."""

    @abc.abstractmethod
    async def capture(
        self,
        options: CaptureOptions,
        policy: ScreenshotPolicySpec,
        proxy: ProxyCredentials | None = None,
    ) -> CaptureResult: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether a capture submitted now can be taken."""

    @property
    def queue_depth(self) -> int:
        return 0

    def can_accept(self) -> bool:
        """Whether a capture submitted now would be queued rather than refused."""
        return self.ready

    def begin_shutdown(self) -> None:  # noqa: B027 - optional hook
        """Refuse new captures from now on; in-flight ones continue."""

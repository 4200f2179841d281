"""Where captures run, seen from the gateway's handlers: two capabilities, two protocols.

`Backend` is what every backend does: its lifecycle, the ScreenshotPolicy a caller's capture is
admitted under, and synchronous captures. `Jobs` is asynchronous captures (`POST /v1/captures`).
A backend that runs them itself (the kubernetes backend: CaptureJobs) implements both; for one
that does not (the local backend), the gateway runs them on its synchronous captures
(`jobs.JobRegistry`). `create_app` picks once, at startup, and refuses an object that is not a
`Backend` there rather than at the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kubeshot.api import CaptureOptions, CaptureReport, ScreenshotPolicy
from kubeshot.api.delivery import S3Delivery, Webhook
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.models import CaptureJobView


@dataclass(frozen=True)
class CaptureResult:
    """A verified artifact and the engine's report of it."""

    data: bytes
    report: CaptureReport


@runtime_checkable
class Backend(Protocol):
    """Runs admitted captures. Raises kubeshot.api.CaptureError or errors.ApiError (overload).

    The hooks with a body (`queue_depth`, `can_accept`, `begin_shutdown`) are defaults for a
    class that subclasses Backend; one that only matches it structurally defines them too.
    """

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Stop taking captures, let in-flight ones finish or fail them, free every process."""

    @property
    def ready(self) -> bool:
        """Whether a capture submitted now can be taken."""

    @property
    def queue_depth(self) -> int:
        return 0

    def can_accept(self) -> bool:
        """Whether a capture submitted now would be queued rather than refused."""
        return self.ready

    def begin_shutdown(self) -> None:
        """Refuse new captures from now on; in-flight ones continue."""

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        """The policy `name` (`default` when None) as this backend knows it for the caller;
        CaptureError(PolicyNotFound) when there is none."""

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        """Run one admitted capture and answer with its artifact."""


@runtime_checkable
class Jobs(Protocol):
    """Asynchronous captures: accepted at once, then looked up by id by their caller only."""

    async def submit(
        self,
        caller: Identity,
        policy: ScreenshotPolicy,
        options: CaptureOptions,
        webhook: Webhook | None = None,
        s3: S3Delivery | None = None,
    ) -> CaptureJobView:
        """Accept an admitted capture, announced to `webhook` when it finished (kept with the
        job: whichever process finishes it sends it), its artifact put into the caller's bucket
        too with `s3`; errors.ApiError(503) when it cannot be taken now, (400) when this backend
        cannot deliver to `s3`."""

    async def find(self, caller: Identity, job_id: str) -> CaptureJobView | None:
        """The job with this id if the caller may see it, else None."""


def missing_members(backend: object) -> list[str]:
    """What `backend` lacks of the Backend protocol (empty for a backend)."""
    members = [name for name in vars(Backend) if not name.startswith("_")]
    return sorted(name for name in members if not hasattr(backend, name))

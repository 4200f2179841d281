"""The capture engine: Chromium through Playwright, behind the egress guard, verified output.

Imports only `kubeshot.api` of kubeshot (never kopf, Kubernetes clients or the aiohttp server).
`run` is the one way a capture runs: `kubeshot capture`, capture workers and capture pods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubeshot.api import CaptureOutcome, CaptureRequest
    from kubeshot_capture.engine import CaptureEngine


async def run(
    request: CaptureRequest, engine: CaptureEngine | None = None
) -> tuple[CaptureOutcome, bytes]:
    """Run one capture: how it ended, and its artifact (empty when it failed). `engine`: one
    already started (a worker's); without, one is started for this capture and closed after."""
    # Imported here, not above: `python -m kubeshot_capture` imports this package before its
    # __main__, which starts Playwright's driver before the models are imported.
    from kubeshot.api import CaptureError, CaptureOutcome

    try:
        if engine is None:
            from kubeshot_capture.engine import CaptureEngine

            async with CaptureEngine(spare_contexts=0) as own:
                return await run(request, own)
        artifact = await engine.capture(request.options, request.policy, request.proxy)
    except CaptureError as exc:
        return CaptureOutcome.failed(exc), b""
    return CaptureOutcome(result=artifact.report), artifact.data

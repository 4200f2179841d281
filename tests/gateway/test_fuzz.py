"""Schema-driven fuzzing: schemathesis generates requests from /v1/openapi.json (valid and
invalid ones) and the gateway must never answer 5xx or crash.

The whole pipeline is real (HTTP, auth, signatures, rate limiting, validation, admission,
response verification) up to the backend, which is an in-process stand-in returning small valid
artifacts: generated URLs must not make a real browser reach addresses outside this machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from PIL import Image
from pypdf import PdfWriter

from kubeshot.api import (
    CaptureOptions,
    CaptureReport,
    Format,
    ScreenshotPolicy,
)
from kubeshot.gateway import Settings, create_app, keys
from kubeshot.gateway.auth import Identity
from kubeshot.gateway.backend import Backend, CaptureResult
from kubeshot.gateway.openapi import openapi_document
from kubeshot.gateway.policies import PolicySet
from kubeshot.gateway.serving import GatewaySite
from kubeshot.gateway.signing import UrlSigner
from tests.conftest import IN_CI
from tests.gateway.conftest import SIGNING_SECRET, TOKEN
from tests.support import free_port

try:
    import schemathesis
except ImportError:
    if IN_CI:
        raise
    pytest.skip("schemathesis is not installed (a dev dependency)", allow_module_level=True)


def _artifact(fmt: Format) -> bytes:
    if fmt is Format.PDF:
        writer = PdfWriter()
        writer.add_blank_page(width=200, height=200)
        out = io.BytesIO()
        writer.write(out)
        return out.getvalue()
    if fmt is Format.HTML:
        return b"<!doctype html><html><body>fuzz</body></html>"
    out = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(out, format=fmt.value.upper())
    return out.getvalue()


class StandInBackend(Backend):
    """Answers every admitted capture with a small valid artifact of the requested format."""

    captures = 0

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def ready(self) -> bool:
        return True

    async def policy(self, caller: Identity, name: str | None) -> ScreenshotPolicy:
        return PolicySet([]).get(name)

    async def capture(
        self, caller: Identity, policy: ScreenshotPolicy, options: CaptureOptions
    ) -> CaptureResult:
        self.captures += 1
        data = _artifact(options.format)
        report = CaptureReport(
            content_type=options.format.content_type,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            format=options.format.value,
        )
        return CaptureResult(data, report)


BACKEND = StandInBackend()


@contextmanager
def live_gateway() -> Iterator[str]:
    """A gateway served as `kubeshot serve` serves it (GatewaySite), with the stand-in backend,
    on its own event loop in a thread (schemathesis calls it synchronously)."""
    port = free_port()
    settings_ = Settings(
        auth_token=TOKEN,
        url_signing_secret=SIGNING_SECRET,
        rate_limit_enabled=False,
        port=port,
    )
    ready = threading.Event()
    stop: dict[str, Any] = {}

    async def main() -> None:
        app = create_app(settings_, backend=BACKEND)
        runner = web.AppRunner(app)
        await runner.setup()
        await GatewaySite(runner, "127.0.0.1", port, guard=app[keys.CONNECTIONS]).start()
        stop["event"] = asyncio.Event()
        stop["loop"] = asyncio.get_running_loop()
        ready.set()
        await stop["event"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{port}"
    stop["loop"].call_soon_threadsafe(stop["event"].set)
    thread.join(30)


@pytest.fixture(scope="module")
def fuzz_gateway() -> Iterator[str]:
    with live_gateway() as base:
        yield base


schema = schemathesis.openapi.from_dict(openapi_document())
SIGNER = UrlSigner.from_secret(SIGNING_SECRET)
RESERVED = {"expires", "keyId", "signature"}


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_anywhere(case: Any, fuzz_gateway: str) -> None:
    # Half the signed-URL cases carry a valid signature, so validation and admission behind it
    # are fuzzed too; the other half test the signature check itself.
    if (
        case.method == "GET"
        and case.path == "/v1/screenshot"
        and isinstance(case.query, dict)
        and hash(str(case.query)) % 2 == 0
    ):
        params = [(str(k), str(v)) for k, v in case.query.items() if k not in RESERVED]
        case.query = dict(SIGNER.sign(params, 60))
    response = case.call(base_url=fuzz_gateway, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith(
        "application/json"
    ):
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"code", "message", "details"} == set(body["error"])


def test_the_fuzz_reached_the_backend() -> None:
    # Runs after the fuzz (same module): some generated requests made it through every check.
    assert BACKEND.captures > 0

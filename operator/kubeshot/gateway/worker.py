"""A capture worker process: one CaptureEngine (one Chromium), captures one request at a time.

Started by the local backend as `python -m kubeshot.gateway.worker` in its own session. It talks
to the gateway over stdin/stdout with length-prefixed frames: a JSON header, then `size` bytes of
artifact. Anything else the process or its children print goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import struct
import sys
from collections.abc import Callable
from typing import IO, Any

from kubeshot.api import (
    CaptureError,
    CaptureOptions,
    FailureReason,
    ProxyCredentials,
    ScreenshotPolicySpec,
)
from kubeshot.gateway.procs import set_parent_death_signal

_HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 8 * 1024 * 1024
log = logging.getLogger("kubeshot.gateway.worker")


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    if payload:
        header = {**header, "size": len(payload)}
    body = json.dumps(header).encode()
    return _HEADER.pack(len(body)) + body + payload


def read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """One frame from a blocking stream; None at end of stream."""
    prefix = stream.read(_HEADER.size)
    if len(prefix) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(prefix)
    if length > MAX_HEADER_BYTES:
        raise ValueError("frame header too large")
    header: dict[str, Any] = json.loads(stream.read(length))
    size = int(header.get("size", 0))
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        return None
    return header, payload


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    """One frame from an asyncio stream; None at end of stream."""
    try:
        (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if length > MAX_HEADER_BYTES:
            return None
        header: dict[str, Any] = json.loads(await reader.readexactly(length))
        size = int(header.get("size", 0))
        payload = await reader.readexactly(size) if size else b""
    except asyncio.IncompleteReadError:
        return None
    return header, payload


def capture_request(
    options: CaptureOptions, policy: ScreenshotPolicySpec, proxy: ProxyCredentials | None
) -> dict[str, Any]:
    """The frame header asking a worker for one capture (the proxy password in clear: a pipe)."""
    proxy_doc = None
    if proxy is not None:
        proxy_doc = {
            "server": proxy.server,
            "username": proxy.username,
            "password": proxy.password.get_secret_value() if proxy.password else None,
        }
    return {
        "op": "capture",
        "options": options.to_wire(),
        "policy": policy.to_wire(),
        "proxy": proxy_doc,
    }


def _load_engine_factory(spec: str | None) -> Callable[[], Any]:
    if spec is None:
        from kubeshot_capture.engine import CaptureEngine

        return lambda: CaptureEngine(spare_contexts=1)
    module, _, attr = spec.partition(":")
    factory: Callable[[], Any] = getattr(importlib.import_module(module), attr)
    return factory


async def serve(engine_factory: Callable[[], Any], out: IO[bytes]) -> None:
    def send(header: dict[str, Any], payload: bytes = b"") -> None:
        out.write(encode_frame(header, payload))
        out.flush()

    async with engine_factory() as engine:
        send({"op": "ready", "pid": os.getpid()})
        while True:
            frame = await asyncio.to_thread(read_frame, sys.stdin.buffer)
            if frame is None or frame[0].get("op") != "capture":
                break
            request = frame[0]
            try:
                proxy = request.get("proxy")
                artifact = await engine.capture(
                    CaptureOptions.model_validate(request["options"]),
                    ScreenshotPolicySpec.model_validate(request["policy"]),
                    ProxyCredentials.model_validate(proxy) if proxy else None,
                )
                report = artifact.report.model_dump(mode="json", by_alias=True)
                send({"op": "result", "ok": True, "report": report}, bytes(artifact.data))
            except CaptureError as exc:
                send(
                    {
                        "op": "result",
                        "ok": False,
                        "reason": exc.reason.value,
                        "message": exc.message,
                    }
                )
            except Exception:
                log.exception("capture failed with an unexpected error")
                send(
                    {
                        "op": "result",
                        "ok": False,
                        "reason": FailureReason.INTERNAL.value,
                        "message": "internal error in the capture worker",
                    }
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeshot-worker")
    parser.add_argument("--engine", help="module:factory of an engine (tests)")
    args = parser.parse_args(argv)
    set_parent_death_signal()
    logging.basicConfig(level=logging.INFO, format="worker %(process)d %(levelname)s %(message)s")
    # The protocol owns the original stdout; everything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    asyncio.run(serve(_load_engine_factory(args.engine), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

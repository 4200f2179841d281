"""A capture worker process: one CaptureEngine (one Chromium), captures one request at a time.

Started by the local backend as `python -m kubeshot.gateway.worker` in its own session. It talks
to the gateway over stdin/stdout with length-prefixed frames: a JSON header, then `size` bytes
(a CaptureRequest's JSON in; the artifact out, its CaptureOutcome in the header). Anything else
the process or its children print goes to stderr.

Started by a root gateway, it loads its code, then drops to the uid:gid in `KUBESHOT_WORKER_RUN_AS`
(no supplementary groups, no way back, no new privileges) before Playwright or Chromium start;
the gateway checks in /proc that it did. Chromium keeps its sandbox unless the kernel refuses the
user namespaces it needs (then `KUBESHOT_NO_SANDBOX=1`, with a log line saying why).
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
from collections.abc import Callable, Mapping
from typing import IO, Any

from kubeshot import logs
from kubeshot.api import CaptureError, CaptureOutcome, CaptureRequest, FailureReason
from kubeshot.gateway import redaction
from kubeshot.gateway.procs import forbid_new_privileges, set_parent_death_signal
from kubeshot_capture import run
from kubeshot_capture.browser import chromium_args

_HEADER = struct.Struct(">I")
MAX_HEADER_BYTES = 8 * 1024 * 1024
log = logging.getLogger("kubeshot.gateway.worker")
# The uid:gid a worker drops to, set by the gateway in the worker's environment.
RUN_AS = "KUBESHOT_WORKER_RUN_AS"
# Modules the engine imports only once it captures. They are imported before the worker drops its
# privileges: an interpreter installed in a directory only its owner may read (pyenv under /root)
# can import nothing new afterwards. pypdf (verification of PDFs) imports standard-library codecs.
PRELOAD = (
    "concurrent.futures.thread",
    "encodings.idna",
    "encodings.punycode",
    "linecache",
    "pypdf",
    "queue",
    "ssl",
    "stringprep",
    "tokenize",
    "traceback",
    "unicodedata",
)


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    if payload:
        header = {**header, "size": len(payload)}
    body = json.dumps(header).encode()
    return _HEADER.pack(len(body)) + body + payload


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


def capture_frame(request: CaptureRequest, log_context: Mapping[str, str] | None = None) -> bytes:
    """The frame asking a worker for one capture: the request (its wire form) as the payload;
    `log_context`: the request's log fields (request id, trace ids, ...) for the worker's lines."""
    return encode_frame(
        {"op": "capture", "log": dict(log_context or {})}, request.to_json().encode()
    )


# How many spare contexts the worker's engine keeps (set by the gateway; at most MAX_SPARES).
SPARES = "KUBESHOT_WORKER_SPARE_CONTEXTS"
DEFAULT_SPARES = 2
MAX_SPARES = 4


def spare_contexts(environ: dict[str, str] | None = None) -> int:
    value = (os.environ if environ is None else environ).get(SPARES, "")
    return min(int(value), MAX_SPARES) if value.isdigit() else DEFAULT_SPARES


def _load_engine_factory(spec: str | None) -> Callable[[], Any]:
    if spec is None:
        from kubeshot_capture.engine import CaptureEngine

        spares = spare_contexts()
        return lambda: CaptureEngine(spare_contexts=spares)
    module, _, attr = spec.partition(":")
    factory: Callable[[], Any] = getattr(importlib.import_module(module), attr)
    return factory


async def serve(engine_factory: Callable[[], Any], out: IO[bytes]) -> None:
    def send(header: dict[str, Any], payload: bytes = b"") -> None:
        out.write(encode_frame(header, payload))
        out.flush()

    # Requests are read by the event loop, not by a thread blocked in read(), which would keep
    # the process from exiting until the gateway writes again.
    requests = asyncio.StreamReader()
    stdin, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(requests), sys.stdin.buffer
    )
    async with engine_factory() as engine:
        browser = getattr(engine, "browser", None)  # stand-in engines (tests, bench) have none
        if browser is not None:
            # A worker whose browser exited takes no more captures: it stops reading and exits,
            # and the gateway starts another (during a capture: once it has answered it).
            browser.on("disconnected", lambda _: stdin.close())
        send({"op": "ready", "pid": os.getpid()})
        while (frame := await read_frame_async(requests)) and frame[0].get("op") == "capture":
            with logs.bound(**_log_fields(frame[0].get("log"))):
                await _capture(engine, frame[1], send, browser)


def _log_fields(value: object) -> dict[str, str]:
    """The log fields the gateway sent with a request (unknown ones dropped)."""
    if not isinstance(value, dict):
        return {}
    known = {*logs.CONTEXT_FIELDS, *logs.TRACE_FIELDS}
    return {k: v for k, v in value.items() if k in known and isinstance(v, str)}


async def _capture(engine: Any, payload: bytes, send: Callable[..., None], browser: Any) -> None:
    """Run one capture request and send its outcome, the artifact as the payload. A capture
    whose browser exited fails PodLost, whatever the engine made of its closed page: the gateway
    then replaces this worker."""
    try:
        outcome, data = await run(CaptureRequest.model_validate_json(payload), engine)
    except Exception:
        log.exception("capture failed with an unexpected error")
        error = CaptureError(FailureReason.INTERNAL, "internal error in the capture worker")
        outcome, data = CaptureOutcome.failed(error), b""
    if browser is not None and not browser.is_connected():
        error = CaptureError(FailureReason.POD_LOST, "the capture worker's browser exited")
        outcome, data = CaptureOutcome.failed(error), b""
    send({"op": "result", "outcome": outcome.to_wire()}, data)


def parse_run_as(value: str) -> tuple[int, int]:
    """`UID:GID` as the gateway writes it into RUN_AS."""
    uid, _, gid = value.partition(":")
    return int(uid), int(gid)


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid for good: no supplementary groups, real, effective and saved ids all
    changed (so no way back), and no new privileges for anything executed from here on."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise RuntimeError(f"could not become {uid}:{gid}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise RuntimeError("the worker could become root again")
    forbid_new_privileges()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubeshot-worker")
    parser.add_argument("--engine", help="module:factory of an engine (tests)")
    args = parser.parse_args(argv)
    set_parent_death_signal()
    # The gateway's format (KUBESHOT_LOG_FORMAT in the environment it passes on); the lines of a
    # capture carry the request's fields (`log` in the request frame).
    logs.setup(logs.log_format(None, "text"))
    redaction.install()  # the engine logs URLs and guard decisions: credentials masked here too
    factory = _load_engine_factory(args.engine)
    run_as = os.environ.pop(RUN_AS, None)
    if run_as is not None:
        for module in PRELOAD:
            importlib.import_module(module)
        drop_privileges(*parse_run_as(run_as))
        set_parent_death_signal()  # a change of uid cleared it
        os.chdir(os.environ.get("HOME") or "/")
    # Asked now, while this process has a single thread (the probe forks); logged when refused.
    chromium_args()
    # The protocol owns the original stdout; everything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    asyncio.run(serve(factory, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Logging of every kubeshot process: one set-up, JSON lines or text, and the request's context.

Every daemon (the gateway and its capture workers, the operator, the capture pod) calls
`setup()` once; the CLI's `kubeshot capture` too. A JSON line carries `timestamp`, `level`,
`logger` and `message`, the context fields bound where the line was logged (`request_id`,
`identity`, `job`, `policy`) and, while a span is active, `trace_id` and `span_id`: the lines of
one capture can be joined by request id across the gateway, the operator and the capture pod,
and with its trace.

`identity` is the name a token was given (or `signed`/`anonymous`), never a token. The context
is a ContextVar: asyncio tasks started while it is bound (an asynchronous capture) inherit it.

This module sits below every other kubeshot package (the capture pod imports it): it imports
only the standard library, python-json-logger, and OpenTelemetry's API when it is installed.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any, Literal

try:  # the capture pod's image has no OpenTelemetry: its lines then carry no trace ids
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - depends on the image
    _trace = None  # type: ignore[assignment]

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")
# Read by processes started without a flag (the gateway's capture workers, the capture pod).
FORMAT_ENV = "KUBESHOT_LOG_FORMAT"
CONTEXT_FIELDS = ("request_id", "identity", "job", "policy")
# Also bound where no span is active but the trace is known (a capture worker, a capture pod).
TRACE_FIELDS = ("trace_id", "span_id")
# A context value longer than this is cut: log lines stay lines.
MAX_FIELD_LENGTH = 256
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("kubeshot_log_context", default=_EMPTY)


def _clean(fields: Mapping[str, object]) -> dict[str, str]:
    unknown = set(fields) - {*CONTEXT_FIELDS, *TRACE_FIELDS}
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    return {k: str(v)[:MAX_FIELD_LENGTH] for k, v in fields.items() if v is not None and v != ""}


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Bind context fields for the lines logged inside the block (and tasks started there)."""
    token = _context.set({**_context.get(), **_clean(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: object) -> None:
    """Add context fields to the current scope (opened by `bound`, which restores it)."""
    _context.set({**_context.get(), **_clean(fields)})


def context() -> dict[str, str]:
    """The context fields bound here and the active span's ids (to hand to another process)."""
    return {**_context.get(), **trace_ids()}


# A process's static context as JSON (a capture pod's, set by the operator in its environment).
CONTEXT_ENV = "KUBESHOT_LOG_CONTEXT"
# The same JSON for a warm capture pod, which exists before its job: on its assignment.
CONTEXT_HEADER = "Kubeshot-Log-Context"
MAX_CONTEXT_ENV_BYTES = 2048


def context_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The fields of $KUBESHOT_LOG_CONTEXT (see `parse_context`)."""
    import os

    return parse_context((os.environ if environ is None else environ).get(CONTEXT_ENV, ""))


def parse_context(raw: str) -> dict[str, str]:
    """The context fields of a JSON object; unknown fields, non-strings and bad JSON are dropped
    (a log line is never worth failing a capture for)."""
    import json

    if not raw or len(raw) > MAX_CONTEXT_ENV_BYTES:
        return {}
    try:
        document = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    known = {*CONTEXT_FIELDS, *TRACE_FIELDS}
    return _clean({k: v for k, v in document.items() if k in known and isinstance(v, str)})


def trace_ids() -> dict[str, str]:
    """`trace_id` and `span_id` of the active span, as W3C hex; empty without one."""
    if _trace is None:
        return {}
    span_context = _trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": f"{span_context.trace_id:032x}",
        "span_id": f"{span_context.span_id:016x}",
    }


class ContextFilter(logging.Filter):
    """Puts the static fields, the bound context and the trace ids on every record."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.static = _clean(static or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**self.static, **_context.get(), **trace_ids()}.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the context fields the record carries appended."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{key}={getattr(record, key)}"
            for key in (*CONTEXT_FIELDS, "trace_id")
            if getattr(record, key, None)
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def _json_formatter_class() -> type[logging.Formatter]:
    from pythonjsonlogger.json import JsonFormatter

    class RedactedJsonFormatter(JsonFormatter):
        """A traceback as the record carries it: a LogRecord factory (the gateway's
        redaction) may have put a cleaned `exc_text` there, which python-json-logger would
        otherwise ignore and format the exception anew."""

        def format(self, record: logging.LogRecord) -> str:
            if record.exc_info and record.exc_text:
                record = copy.copy(record)
                record.exc_info = None
            return super().format(record)

    return RedactedJsonFormatter


def json_formatter() -> logging.Formatter:
    formatter_class: Any = _json_formatter_class()
    formatter: logging.Formatter = formatter_class(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=True,
    )
    return formatter


def log_format(value: str | None, default: LogFormat) -> LogFormat:
    """`value` (a flag, else $KUBESHOT_LOG_FORMAT) as a format; ValueError for another word."""
    import os

    chosen = (value or os.environ.get(FORMAT_ENV) or default).strip().lower()
    if chosen not in FORMATS:
        raise ValueError(f"log format {chosen!r}: choose text or json")
    return chosen


_HANDLER_MARK = "_kubeshot_handler"


def setup(
    fmt: LogFormat,
    level: int | str = logging.INFO,
    *,
    static: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Log to `stream` (stderr) in `fmt` at `level`; replaces what an earlier call installed.

    `static`: context fields of the whole process (a capture pod's job and request id).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter(static))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for previous in list(root.handlers):
        if getattr(previous, _HANDLER_MARK, False):
            root.removeHandler(previous)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler

"""OpenTelemetry tracing of the gateway and the operator: off unless configured.

Configuration is OpenTelemetry's own environment (`TracingSettings`): an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) or
`OTEL_TRACES_EXPORTER=otlp|console` turns it on; `none`, `OTEL_SDK_DISABLED=true` or nothing at
all leaves it off, and every span below is then OpenTelemetry's no-op span. Spans go out over
OTLP/HTTP (protobuf), in batches, from a background thread.

The trace of one capture:
    gateway     "POST /v1/screenshot" ▸ admission ▸ capture ▸ queue wait ▸ worker capture ▸
                setup, navigate, wait, render, verify ▸ response
    kubernetes  the gateway's capture span ▸ create CaptureJob; the job carries its traceparent
                (annotation TRACEPARENT_ANNOTATION) ▸ the operator's "start capture pod" and
                "record capture pod" ▸ "capture pod" ▸ setup, navigate, wait, render, verify.
Capture workers and capture pods export nothing: they report when each phase of a capture started
and ended (`Timings.phases`, wall-clock nanoseconds) and the gateway or the operator records those
spans, with those times, in the trace. A worker needs no exporter of its own, and a capture pod
needs no network path beyond the one its NetworkPolicy gives it (the target and the upload port).

A traceparent from outside (a caller's header, an annotation anyone who may write CaptureJobs can
set) is parsed strictly (`parse_traceparent`). A caller's becomes a link of the request's span,
never its parent: trace ids are chosen by the gateway, not by whoever sends a header.

This module imports no other kubeshot package but `kubeshot.api` (the phases' model).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue
from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kubeshot.api import PhaseTiming

TRACER_NAME = "kubeshot"
# On a CaptureJob: the span of the gateway that created it, and the request it answers.
TRACEPARENT_ANNOTATION = "kubeshot.dev/traceparent"
REQUEST_ID_ANNOTATION = "kubeshot.dev/request-id"
# W3C Trace Context, version 00, lower-case hex: exactly 55 characters.
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# A request id as the gateway makes them (uuid4 hex); one read from an annotation must be one.
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")

Exporter = Literal["none", "otlp", "console"]

__all__ = ["SpanKind", "StatusCode"]  # re-exported: callers need no OpenTelemetry import

_provider: trace.TracerProvider | None = None


class TracingSettings(BaseSettings):
    """The OpenTelemetry environment variables kubeshot reads itself (the OTLP exporter reads
    the rest: headers, timeout, certificates; the SDK reads the sampler and the resource)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    traces_exporter: Exporter | None = Field(default=None, validation_alias="OTEL_TRACES_EXPORTER")
    """`otlp`, `console` (stderr, for a look) or `none`; unset: otlp when an endpoint is set."""
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    )
    """The OTLP/HTTP endpoint (the collector's :4318)."""
    protocol: Literal["http/protobuf"] | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
    )
    """Only http/protobuf is built in; `grpc` is refused rather than silently not used."""
    sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    """`true` turns tracing off whatever else is set."""
    service_name: str | None = Field(
        default=None, max_length=256, validation_alias="OTEL_SERVICE_NAME"
    )
    """The service's name in traces (default kubeshot-gateway, kubeshot-operator)."""

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and value.strip() and not re.match(r"^https?://", value.strip()):
            raise ValueError("an OTLP endpoint is an http:// or https:// URL")
        return value.strip() or None if value is not None else None

    @property
    def exporter(self) -> Exporter:
        if self.sdk_disabled:
            return "none"
        if self.traces_exporter is not None:
            return self.traces_exporter
        return "otlp" if self.endpoint else "none"


def setup(service_name: str) -> Exporter:
    """Turn tracing on as the environment says (`service_name` unless OTEL_SERVICE_NAME is set);
    returns the exporter in use. ValueError for a setting that cannot be honoured."""
    try:
        settings = TracingSettings()
    except ValidationError as exc:
        raise ValueError(f"invalid OpenTelemetry configuration: {exc}") from None
    if settings.exporter == "none":
        return "none"
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    from kubeshot import __version__

    # OTEL_RESOURCE_ATTRIBUTES adds to these; OTEL_SERVICE_NAME names the service instead.
    name = settings.service_name or service_name
    resource = Resource.create({SERVICE_NAME: name, SERVICE_VERSION: __version__})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if settings.exporter == "console":
        import sys

        exporter = ConsoleSpanExporter(out=sys.stderr)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    trace.set_tracer_provider(provider)
    return settings.exporter


def install(provider: trace.TracerProvider | None) -> None:
    """Make `provider` the one kubeshot's spans go to (None: OpenTelemetry's global one)."""
    global _provider
    _provider = provider


def tracer() -> trace.Tracer:
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return provider.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(
    name: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    links: Sequence[Link] = (),
) -> Iterator[Span]:
    """A span around the block, current inside it; an exception marks it as an error."""
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, links=links
    ) as current:
        yield current


def traceparent() -> str | None:
    """The W3C traceparent of the active span; None without one (tracing off)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def parse_traceparent(value: object) -> SpanContext | None:
    """A remote span context from a traceparent; None for anything that is not a valid one.

    Strict on purpose (it comes from callers and from annotations): version 00 only, lower-case
    hex, no zero ids, no extra parts; of the flags only `sampled` is kept.
    """
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, span_id, flags = (int(group, 16) for group in match.groups())
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))


def remote_parent(value: object) -> otel_context.Context | None:
    """A context whose parent is the span a traceparent names (None: not a valid one)."""
    span_context = parse_traceparent(value)
    if span_context is None:
        return None
    return trace.set_span_in_context(NonRecordingSpan(span_context), otel_context.Context())


def links_to(value: object) -> list[Link]:
    """A link to the span a caller's traceparent names (none for an invalid one)."""
    span_context = parse_traceparent(value)
    return [] if span_context is None else [Link(span_context)]


def new_trace() -> otel_context.Context:
    """An empty context: a span started in it is the root of a new trace."""
    return otel_context.Context()


def request_id(value: object) -> str | None:
    """A request id read from an annotation, if it is one the gateway could have made."""
    return value if isinstance(value, str) and _REQUEST_ID.fullmatch(value) else None


def record_phases(
    phases: Sequence[PhaseTiming],
    parent: otel_context.Context | Span | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> None:
    """The phases a worker or a capture pod reported, as spans with their own start and end
    (children of the active span, or of `parent`)."""
    if isinstance(parent, Span):
        parent = trace.set_span_in_context(parent, otel_context.Context())
    for phase in phases:
        start = phase.start_unix_nano
        child = tracer().start_span(
            phase.name.value, context=parent, attributes=attributes, start_time=start
        )
        child.end(end_time=phase.end_unix_nano)


def record_span(
    name: str,
    start_unix_nano: int,
    end_unix_nano: int,
    parent: otel_context.Context | None,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: str | None = None,
) -> otel_context.Context:
    """A finished span with the given times; returns a context with it as parent (for its
    children)."""
    recorded = tracer().start_span(
        name, context=parent, attributes=attributes, start_time=start_unix_nano
    )
    if error is not None:
        recorded.set_status(trace.Status(trace.StatusCode.ERROR, error))
    recorded.end(end_time=max(end_unix_nano, start_unix_nano))
    return trace.set_span_in_context(recorded, parent or otel_context.Context())


def set_attributes(**attributes: Any) -> None:
    """Attributes `kubeshot.<name>` on the active span (None values left out)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(
            {f"kubeshot.{k}": v for k, v in attributes.items() if v is not None and v != ""}
        )

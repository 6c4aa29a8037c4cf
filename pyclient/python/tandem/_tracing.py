"""OpenTelemetry in the client and the op workers, on ``opentelemetry-api``
only: the spans the client makes (``tandem.submit``, ``tandem.wait``), the
W3C trace context it puts in the gRPC metadata of every call, and the trace
context of a worker's step.

The SDK and its exporter are the application's business: until one
configures a tracer provider (``opentelemetry.trace.set_tracer_provider``),
the tracer is OTel's no-op one, a span is the parent's context passed on
(a few microseconds) and nothing is recorded or sent. ``tandem worker``
configures the SDK itself when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set
(:mod:`tandem._worker.telemetry`).

Spans are started with an explicit parent (the caller's current context)
and never made current by the client: a plan runs as a generator whose
steps the two clients drive, and a context attached in one step would leak
into the caller between steps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "ClientSpan",
    "Metadata",
    "tracer",
    "current_metadata",
    "step_context",
    "traceparent_of",
    "ids_of",
    "attached",
    "MAX_SPAN_IDS",
]

#: gRPC metadata: (key, value) pairs.
Metadata = tuple[tuple[str, str], ...]

#: The most job ids one span lists (``tandem.job_ids``); ``tandem.job_count``
#: has the exact number. A 10,000-job submit_many would otherwise make one
#: attribute of 270 KB.
MAX_SPAN_IDS = 256

#: The instrumentation scope of the package's spans.
SCOPE = "tandem"

_tracer: trace.Tracer | None = None
_W3C = TraceContextTextMapPropagator()


def tracer() -> trace.Tracer:
    """The package's tracer: a proxy that follows the global tracer provider,
    so a provider set after ``import tandem`` is used."""
    global _tracer
    if _tracer is None:
        from tandem import __version__

        _tracer = trace.get_tracer(SCOPE, __version__)
    return _tracer


class _MetadataSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key.lower(), value))  # gRPC metadata keys are lower case


_SETTER = _MetadataSetter()


def _inject(ctx: otel_context.Context | None) -> Metadata:
    carrier: list[tuple[str, str]] = []
    propagate.inject(carrier, context=ctx, setter=_SETTER)
    return tuple(carrier)


def current_metadata() -> Metadata | None:
    """The caller's current trace context as gRPC metadata (None when there
    is none): what a call made outside the client's own spans carries."""
    return _inject(None) or None


def _new_trace() -> Metadata:
    return (("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"),)


class ClientSpan:
    """One span of a client call (kind CLIENT, child of the caller's current
    span) and the metadata every gRPC call made for it carries.

    Used as a context manager: an exception other than the end of an
    iterator marks it failed (``error.type`` = the Tandem reason, else the
    exception's type) and it ends on the way out.
    """

    def __init__(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        links: Sequence[trace.SpanContext] = (),
        new_trace: bool = False,
    ) -> None:
        self.span = tracer().start_span(
            name,
            kind=trace.SpanKind.CLIENT,
            attributes=dict(attributes or {}),
            links=[trace.Link(c) for c in links if c.is_valid],
        )
        md = _inject(trace.set_span_in_context(self.span))
        if new_trace and not any(k == "traceparent" for k, _ in md):
            # Not traced here and no caller trace: still one W3C trace for the
            # call and its retries, so the services' logs of it share a trace id.
            md += _new_trace()
        self.metadata: Metadata | None = md or None

    @property
    def context(self) -> trace.SpanContext:
        return self.span.get_span_context()

    def set(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def set_ids(self, ids: Sequence[str]) -> None:
        """``tandem.job_id`` for one job, else ``tandem.job_ids`` (at most
        :data:`MAX_SPAN_IDS`) and ``tandem.job_count``."""
        if len(ids) == 1:
            self.span.set_attribute("tandem.job_id", ids[0])
        elif ids:
            self.span.set_attribute("tandem.job_ids", list(ids[:MAX_SPAN_IDS]))
            self.span.set_attribute("tandem.job_count", len(ids))

    def fail(self, err: BaseException) -> None:
        reason = getattr(err, "reason", "") or type(err).__name__
        self.span.set_attribute("error.type", reason)
        self.span.set_status(trace.Status(trace.StatusCode.ERROR, str(err)[:1024]))

    def end(self) -> None:
        self.span.end()

    def __enter__(self) -> ClientSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(
            exc, (GeneratorExit, StopIteration, StopAsyncIteration)
        ):
            self.fail(exc)
        self.end()


def op_names(steps: Iterable[Any]) -> list[str]:
    """The distinct op names of protobuf steps, in order (``tandem.ops``)."""
    return list(dict.fromkeys(s.op for s in steps))


# ---------------------------------------------------------------- worker steps


def step_context(traceparent: str) -> otel_context.Context:
    """The context whose span is the one a W3C ``traceparent`` names (an
    empty context when it is missing or malformed)."""
    if not traceparent:
        return otel_context.Context()
    return _W3C.extract({"traceparent": traceparent}, context=otel_context.Context())


def traceparent_of(span: trace.Span) -> str:
    """A span's context as a W3C traceparent ("" when it has none)."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def ids_of(traceparent: str) -> dict[str, str]:
    """``{"trace_id", "span_id"}`` of a well-formed traceparent (for log
    lines), else ``{}``."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return {}
    return {"trace_id": parts[1], "span_id": parts[2]}


@contextmanager
def attached(traceparent: str) -> Iterator[None]:
    """Makes the span a traceparent names current (for an op function's own
    spans); use it in a task or thread of its own."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(step_context(traceparent))
    try:
        yield
    finally:
        otel_context.detach(token)

"""The worker's traces: the OTel SDK set up from the standard environment,
and the ``tandem.worker.step`` span of each step.

When ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
is set, the worker process exports its spans over OTLP/gRPC as service
``tandem-worker``, as the orchestrator and compute do; the other standard
``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_INSECURE``, ``OTEL_BSP_*``, ...)
are the SDK's and the exporter's. That needs the ``tandem[otel]`` extra
(``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-grpc``);
without it the worker logs one warning and serves untraced. Unset, nothing
is set up and the spans are OTel's no-op ones: each step's logs still carry
the trace id and span id of the orchestrator's attempt.

A process that already has a tracer provider (``Worker.run()`` inside an
application that configured OTel) keeps it. The process pool's children
export nothing: they log with the step span's ids, which they are sent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from opentelemetry import trace

from tandem import _tracing
from tandem._worker.outcome import Failure
from tandem.v1 import worker_pb2

__all__ = ["SERVICE_NAME", "enabled", "setup", "step_span", "end_step_span"]

SERVICE_NAME = "tandem-worker"
SPAN_NAME = "tandem.worker.step"

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def enabled() -> bool:
    """Whether the environment asks for span export (the orchestrator's rule)."""
    return any(os.environ.get(v) for v in _ENDPOINT_VARS)


def _nothing() -> None:
    pass


def setup(
    worker_id: str, log: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> Callable[[], None]:
    """Installs an SDK tracer provider exporting over OTLP when
    :func:`enabled`; returns what flushes and stops it (a no-op otherwise)."""
    if not enabled():
        return _nothing
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        log.info("tracing: using the tracer provider this process configured")
        return _nothing
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as err:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK or its OTLP "
            "exporter is not installed (pip install 'tandem[otel]'); serving without traces",
            extra={"error": str(err)},
        )
        return _nothing
    resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": worker_id})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans over OTLP", extra={"service": SERVICE_NAME})
    return provider.shutdown


def step_span(req: worker_pb2.StepRequest, op: str, worker_id: str) -> trace.Span:
    """The span of one step request, child of the orchestrator's attempt
    span (``StepRequest.traceparent``); kind SERVER: it answers a request."""
    return _tracing.tracer().start_span(
        SPAN_NAME,
        context=_tracing.step_context(req.traceparent),
        kind=trace.SpanKind.SERVER,
        attributes={
            "tandem.op": op,
            "tandem.job_id": req.job_id,
            "tandem.attempt": req.attempt,
            "tandem.step": req.index,
            "tandem.worker_id": worker_id,
        },
    )


def end_step_span(span: trace.Span, outcome: bytes | Failure) -> None:
    """Records how the step ended (``tandem.outcome``: ``succeeded`` or
    ``failed`` with ``tandem.error_reason``) and ends the span."""
    if isinstance(outcome, Failure):
        span.set_attribute("tandem.outcome", "failed")
        span.set_attribute("tandem.error_reason", outcome.reason)
        span.set_attribute("error.type", outcome.reason)
        span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.message[:1024]))
    else:
        span.set_attribute("tandem.outcome", "succeeded")
        span.set_attribute("tandem.output_bytes", len(outcome))
    span.end()

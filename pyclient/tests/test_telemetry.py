"""Traces of the client and the op worker against the stub server and an
in-memory span exporter: span names, parents, attributes, the traceparent
every call carries, the worker step span and its log fields, and the SDK
set-up of `tandem worker` (with and without the `otel` extra)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

import tandem  # noqa: E402
from fake_server import FakeServer, status_error  # noqa: E402
from tandem import _tracing  # noqa: E402
from tandem._worker import telemetry  # noqa: E402
from tandem._worker.logs import JsonFormatter  # noqa: E402
from tandem._worker.runtime import Runtime, WorkerConfig  # noqa: E402
from tandem.v1 import compute_pb2, errors_pb2, worker_pb2  # noqa: E402

FAST = tandem.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@dataclass
class Spans:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.finished(name)
        assert len(found) == 1, [s.name for s in self.finished()]
        return found[0]


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    """An SDK provider of the test's own (the global one stays untouched)
    behind the package's tracer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_tracing, "_tracer", provider.get_tracer("tandem"))
    yield Spans(provider, exporter)
    provider.shutdown()


def ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def carried(tp: str) -> tuple[str, str]:
    m = TRACEPARENT.fullmatch(tp)
    assert m, tp
    return m.group(1), m.group(2)


# ---------------------------------------------------------------- the client


def test_submit_is_a_client_span_whose_context_every_retry_carries(
    fake: FakeServer, spans: Spans
) -> None:
    fake.service.submit_script = lambda n, r: (
        status_error(grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", "nats down")
        if n == 1
        else None
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        handle = client.submit(
            [tandem.Step("image.thumbnail", width=8), tandem.Step("hash.sha256")],
            b"x",
            queue="images",
        )
    span = spans.one("tandem.submit")
    assert span.kind is trace.SpanKind.CLIENT and span.parent is None
    assert dict(span.attributes or {}) == {
        "tandem.queue": "images",
        "tandem.ops": ("image.thumbnail", "hash.sha256"),
        "tandem.job_id": handle.id,
        "tandem.deduplicated": False,
    }
    assert [carried(tp) for tp in fake.service.traces_of("SubmitJob")] == [ids(span)] * 2


def test_spans_are_children_of_the_callers_span(fake: FakeServer, spans: Spans) -> None:
    app = spans.provider.get_tracer("app")
    with tandem.Client(fake.address) as client, app.start_as_current_span("request") as parent:
        client.submit("hash.sha256", b"x")
        client.queues()
    submit = spans.one("tandem.submit")
    assert submit.parent is not None and submit.parent.span_id == parent.get_span_context().span_id
    # A call outside the client's own spans carries the caller's context.
    (tp,) = fake.service.traces_of("ListQueues")
    assert carried(tp)[1] == f"{parent.get_span_context().span_id:016x}"


def test_a_call_outside_any_span_carries_no_trace(fake: FakeServer, spans: Spans) -> None:
    with tandem.Client(fake.address) as client:
        client.queues()
    assert fake.service.traces_of("ListQueues") == [""]


def test_result_is_a_wait_span_linked_to_its_submit(fake: FakeServer, spans: Spans) -> None:
    fake.service.watch_without_results = True  # so the wait calls GetJob too
    with tandem.Client(fake.address) as client:
        handle = client.submit("hash.sha256", b"x")
        handle.result(timeout=5)
    submit, wait = spans.one("tandem.submit"), spans.one("tandem.wait")
    assert wait.kind is trace.SpanKind.CLIENT
    assert dict(wait.attributes or {}) == {"tandem.call": "result", "tandem.job_id": handle.id}
    assert [link.context for link in wait.links] == [submit.context]
    for method in ("WatchJobs", "GetJob"):
        assert [carried(tp) for tp in fake.service.traces_of(method)] == [ids(wait)]


def test_submit_many_is_one_span(fake: FakeServer, spans: Spans) -> None:
    with tandem.Client(fake.address) as client:
        handles = client.submit_many(
            [tandem.JobSpec("hash.sha256", bytes([i]), queue="q") for i in range(5)], batch_size=2
        )
        jobs = client.wait([h.id for h in handles if isinstance(h, tandem.JobHandle)], timeout=5)
    span = spans.one("tandem.submit")
    attrs = dict(span.attributes or {})
    assert attrs["tandem.job_ids"] == tuple(jobs) and attrs["tandem.job_count"] == 5
    assert attrs["tandem.queue"] == "q" and attrs["tandem.rejected"] == 0
    assert {carried(tp) for tp in fake.service.traces_of("SubmitJobs")} == {ids(span)}
    wait = spans.one("tandem.wait")
    assert dict(wait.attributes or {})["tandem.job_count"] == 5


def test_a_failed_call_marks_its_span(fake: FakeServer, spans: Spans) -> None:
    fake.service.submit_script = lambda n, r: status_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", "full", retry_after=0.01
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.Overloaded):
            client.submit("hash.sha256", b"x")
        with pytest.raises(tandem.NotFound):
            list(client.watch(["nope"], timeout=5))
    for span, reason in (
        (spans.one("tandem.submit"), "QUEUE_FULL"),
        (spans.one("tandem.wait"), "JOB_NOT_FOUND"),
    ):
        assert span.status.status_code is trace.StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == reason


def test_a_watch_left_early_ends_its_span_without_error(fake: FakeServer, spans: Spans) -> None:
    with tandem.Client(fake.address) as client:
        a, b = (client.submit("hash.sha256", bytes([i])) for i in range(2))
        it = client.watch([a.id, b.id])
        next(it)
        assert not spans.finished("tandem.wait")
        it.close()
    span = spans.one("tandem.wait")
    assert span.status.status_code is trace.StatusCode.UNSET
    assert dict(span.attributes or {})["tandem.call"] == "watch"


def test_without_an_sdk_a_submit_still_starts_one_trace(fake: FakeServer) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    with tandem.Client(fake.address) as client:
        client.submit("hash.sha256", b"x")
        client.submit("hash.sha256", b"y")
    a, b = (carried(tp) for tp in fake.service.traces_of("SubmitJob"))
    assert a[0] != b[0]


def test_async_client_spans(fake: FakeServer, spans: Spans) -> None:
    async def main() -> None:
        async with tandem.AsyncClient(fake.address) as client:
            handle = await client.submit("hash.sha256", b"x", queue="q")
            await handle
            async for _ in client.watch([handle.id]):
                pass

    asyncio.run(main())
    submit = spans.one("tandem.submit")
    waits = spans.finished("tandem.wait")
    assert [dict(w.attributes or {})["tandem.call"] for w in waits] == ["result", "watch"]
    assert carried(fake.service.traces_of("SubmitJob")[0]) == ids(submit)
    assert [carried(tp) for tp in fake.service.traces_of("WatchJobs")] == [ids(w) for w in waits]


# ---------------------------------------------------------------- the worker

worker = tandem.Worker("traced")


@worker.op("traced.upper")
async def upper(data: bytes, *, ctx: tandem.StepContext) -> bytes:
    # The package's tracer: the test's provider (the `spans` fixture), or no-op.
    with _tracing.tracer().start_as_current_span("op.inner"):
        ctx.logger.info("upper-casing")
    return data.upper()


@worker.op("traced.refuse")
def refuse(data: bytes) -> bytes:
    with _tracing.tracer().start_as_current_span("op.thread"):  # in the thread pool
        raise tandem.PermanentError("not today")


@dataclass
class Msg:
    subject: str
    data: bytes
    reply: str = "_INBOX.1"
    answers: list[bytes] = field(default_factory=list)

    async def respond(self, data: bytes) -> None:
        self.answers.append(data)


ATTEMPT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ATTEMPT_SPAN = "00f067aa0ba902b7"


def step(op: str, job: str, traceparent: str = f"00-{ATTEMPT_TRACE}-{ATTEMPT_SPAN}-01") -> Msg:
    req = worker_pb2.StepRequest(
        job_id=job,
        attempt=2,
        index=1,
        step=compute_pb2.Step(op=op),
        input=b"abc",
        traceparent=traceparent,
    )
    return Msg(f"tandem.op.{op}", req.SerializeToString())


async def serve_steps(*msgs: Msg) -> list[worker_pb2.StepResponse]:
    runtime = Runtime(worker, WorkerConfig(pool="thread", worker_id="w1"))
    runtime._capacity = asyncio.Semaphore(runtime.concurrency)
    for m in msgs:
        await runtime._on_request(m)
    await asyncio.gather(*(s.task for s in list(runtime.steps.values()) if s.task))
    return [worker_pb2.StepResponse.FromString(m.answers[0]) for m in msgs]


def test_each_step_is_a_span_under_the_attempt(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ok, failed = asyncio.run(serve_steps(step("traced.upper", "j1"), step("traced.refuse", "j2")))
    assert ok.output == b"ABC" and failed.error.reason == errors_pb2.OP_FAILED
    by_job = {
        dict(s.attributes or {})["tandem.job_id"]: s for s in spans.finished("tandem.worker.step")
    }
    for job, outcome in (("j1", "succeeded"), ("j2", "failed")):
        span = by_job[job]
        assert span.kind is trace.SpanKind.SERVER
        assert span.parent is not None and f"{span.parent.span_id:016x}" == ATTEMPT_SPAN
        assert ids(span)[0] == ATTEMPT_TRACE
        attrs = dict(span.attributes or {})
        assert attrs["tandem.op"] == f"traced.{'upper' if job == 'j1' else 'refuse'}"
        assert (attrs["tandem.attempt"], attrs["tandem.step"]) == (2, 1)
        assert attrs["tandem.outcome"] == outcome
    assert dict(by_job["j2"].attributes or {})["tandem.error_reason"] == "OP_FAILED"
    assert by_job["j2"].status.status_code is trace.StatusCode.ERROR
    # The op's own span nests under the step's (an async op runs with it current).
    for name, job in (("op.inner", "j1"), ("op.thread", "j2")):
        inner = spans.one(name)
        assert inner.parent is not None and inner.parent.span_id == by_job[job].context.span_id
    # Its log lines carry the step span's ids.
    (line,) = [r for r in caplog.records if r.getMessage() == "upper-casing"]
    assert (getattr(line, "trace_id"), getattr(line, "span_id")) == ids(by_job["j1"])


def test_a_refused_step_is_a_failed_span(spans: Spans) -> None:
    (resp,) = asyncio.run(serve_steps(step("traced.nope", "j3")))
    assert resp.error.reason == errors_pb2.UNKNOWN_OP
    span = spans.one("tandem.worker.step")
    assert dict(span.attributes or {})["tandem.error_reason"] == "UNKNOWN_OP"


def test_without_an_sdk_logs_carry_the_attempts_ids(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    asyncio.run(serve_steps(step("traced.upper", "j4")))
    (line,) = [r for r in caplog.records if r.getMessage() == "upper-casing"]
    assert (getattr(line, "trace_id"), getattr(line, "span_id")) == (ATTEMPT_TRACE, ATTEMPT_SPAN)


def test_errors_are_logged_under_error_with_the_traceback_apart() -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.WARNING, __file__, 1, "op raised", (), sys.exc_info()
        )
    out = json.loads(JsonFormatter().format(record))
    assert out["error"] == "ValueError: bad input"
    assert "Traceback" in out["traceback"]


# ---------------------------------------------------------------- set-up


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, msg: str, extra: dict[str, Any] | None = None) -> None:
        self.lines.append(("info", msg, extra or {}))

    def warning(self, msg: str, extra: dict[str, Any] | None = None) -> None:
        self.lines.append(("warning", msg, extra or {}))


def test_setup_does_nothing_unless_an_endpoint_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    set_provider: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", set_provider.append)
    log = _Log()
    telemetry.setup("w1", log)()  # type: ignore[arg-type]
    assert not set_provider and not log.lines


def test_setup_without_the_extra_warns_once_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    set_provider: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", set_provider.append)
    log = _Log()
    telemetry.setup("w1", log)()  # type: ignore[arg-type]
    assert not set_provider
    assert [(level, "tandem[otel]" in msg) for level, msg, _ in log.lines] == [("warning", True)]


def test_setup_exports_as_tandem_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    set_provider: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", set_provider.append)
    stop = telemetry.setup("w1", _Log())  # type: ignore[arg-type]
    try:
        (provider,) = set_provider
        assert provider.resource.attributes["service.name"] == "tandem-worker"
        assert provider.resource.attributes["service.instance.id"] == "w1"
    finally:
        stop()

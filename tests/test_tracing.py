"""Traces across every process, exported over OTLP to a real receiver
(tests/otlp_receiver.py, on the official protocol definitions): one job
yields one trace whose spans come from the client, the orchestrator and
compute, with correct parent links, including across a retry."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

import tandem
from conftest import _ACTIVE
from harness import Stack, debug_fail_params, eventually
from otlp_receiver import Receiver, Span
from test_workers import Workers

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    r = Receiver()
    # Every process the stack starts inherits these (the standard variables).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    try:
        yield r
    finally:
        r.stop()


_PROVIDER: list[object] = []


@pytest.fixture
def client_tracing(receiver: Receiver) -> Iterator[Callable[[], None]]:
    """The test process is the traced client: an SDK tracer provider (set
    once per process, as OpenTelemetry allows) whose exporter points at this
    test's receiver. Yields a flush function."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    if not _PROVIDER:
        first = TracerProvider(resource=Resource.create({"service.name": "test-client"}))
        trace.set_tracer_provider(first)
        _PROVIDER.append(first)
    provider = _PROVIDER[0]
    assert isinstance(provider, TracerProvider)
    processor = SimpleSpanProcessor(OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True))
    provider.add_span_processor(processor)
    try:
        yield lambda: None if provider.force_flush() else None
    finally:
        processor.shutdown()


def _chain_ok(spans: list[Span]) -> list[str]:
    """Every span but the root has its parent in the trace."""
    ids = {s.span_id for s in spans}
    return [f"{s.service}/{s.name}" for s in spans if s.parent_id and s.parent_id not in ids]


def test_one_job_one_trace_across_processes_and_a_retry(
    new_stack: Callable[..., Stack], receiver: Receiver, client_tracing: Callable[[], None]
) -> None:
    stack = new_stack()
    client = stack.client()
    steps = [
        tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE", until_attempt=1)),
        tandem.Step("hash.sha256"),
    ]
    handle = client.submit(steps, b"traced", queue="fast", max_attempts=3)
    job = handle.wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED
    assert len(job.attempts) == 2, "the first attempt failed and was retried"
    trace_ids = {a.trace_id for a in job.attempts}
    assert len(trace_ids) == 1, f"every attempt in one trace: {trace_ids}"
    tid = trace_ids.pop()
    client_tracing()

    def complete() -> bool:
        spans = receiver.trace(tid)
        services = {s.service for s in spans}
        attempts = [s for s in spans if s.name == "tandem.job.attempt"]
        return {"test-client", "tandem-orchestrator", "tandem-compute"} <= services and len(
            attempts
        ) == 2

    eventually(complete, 60, f"spans of trace {tid} from the client, the orchestrator and compute")
    spans = receiver.trace(tid)
    assert not _chain_ok(spans), f"spans whose parent is not in the trace: {_chain_ok(spans)}"
    roots = [s for s in spans if not s.parent_id]
    assert len(roots) == 1 and roots[0].service == "test-client", roots
    by_id = {s.span_id: s for s in spans}

    def ancestors(s: Span) -> list[str]:
        out = []
        while s.parent_id in by_id:
            s = by_id[s.parent_id]
            out.append(s.name)
        return out

    compute = [s for s in spans if s.service == "tandem-compute"]
    assert compute and all("tandem.job.attempt" in ancestors(s) for s in compute), [
        (s.name, ancestors(s)) for s in compute
    ]
    attempts = sorted(
        (s for s in spans if s.name == "tandem.job.attempt"),
        key=lambda s: int(str(s.attributes.get("tandem.attempt", 0))),
    )
    assert [s.attributes.get("tandem.attempt") for s in attempts] == [1, 2]
    assert all("tandem.job.submit" in ancestors(s) for s in attempts)


def test_a_worker_step_is_a_span_under_its_attempt(
    new_stack: Callable[..., Stack], receiver: Receiver
) -> None:
    """A mixed pipeline (a compute op, then a Python op): the worker exports
    its step span as tandem-worker, a child of the job's attempt span, and
    its log lines about the step carry the trace id and that span's id."""
    stack = new_stack()
    workers = Workers(stack)
    _ACTIVE.append(workers)  # type: ignore[arg-type]
    try:
        workers.start("traced", "--log-level", "debug")
        data = b"traced through a worker"
        steps = [tandem.Step("compress.gzip"), tandem.Step("fixture.gunzip_upper")]
        job = stack.client().submit(steps, data).wait(timeout=60)
        assert job.state is tandem.JobState.SUCCEEDED and job.result == data.upper()
        tid = job.attempts[0].trace_id

        def linked() -> tuple[Span, Span] | None:
            spans = {s.span_id: s for s in receiver.trace(tid)}
            step = next((s for s in spans.values() if s.name == "tandem.worker.step"), None)
            if step is None or step.parent_id not in spans:
                return None
            return step, spans[step.parent_id]

        step, parent = eventually(linked, 60, f"the worker's step span and its parent in {tid}")
        log = workers.procs[0].log_tail(400)
    finally:
        workers.stop()
        _ACTIVE.remove(workers)  # type: ignore[arg-type]
    assert step.service == "tandem-worker" and parent.name == "tandem.job.attempt", parent
    assert step.attributes["tandem.op"] == "fixture.gunzip_upper"
    assert step.attributes["tandem.job_id"] == job.id
    assert step.attributes["tandem.attempt"] == 1
    assert step.attributes["tandem.outcome"] == "succeeded"
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    done = [x for x in lines if x.get("job_id") == job.id and x.get("msg") == "step done"]
    assert done and all((x["trace_id"], x["span_id"]) == (tid, step.span_id) for x in done), done

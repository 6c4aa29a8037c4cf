"""The clients' shared logic (tandem._core) without any I/O: plans are driven by
hand, sent the responses and errors a server would give."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import tandem
from fake_server import RpcError
from tandem import _core as core
from tandem._errors import make_error
from tandem._requests import bounded_groups, submit_request
from tandem._types import QueueInfo
from tandem.v1 import errors_pb2, jobs_pb2

FAST = tandem.RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)


def _job(job_id: str, state: int = jobs_pb2.JOB_STATE_SUCCEEDED) -> jobs_pb2.Job:
    return jobs_pb2.Job(id=job_id, state=state)  # type: ignore[arg-type]


def test_unary_retries_unavailable_then_converts() -> None:
    plan = core.unary(core.get_job("j1", True), FAST, threading.Event())
    send = next(plan)
    assert isinstance(send, core.Send) and send.method == "GetJob"
    assert send.request.job_id == "j1" and send.request.include_result
    pause = plan.send(tandem.Unavailable("down"))
    assert isinstance(pause, core.Sleep) and 0 <= pause.seconds <= 0.02
    assert isinstance(plan.send(None), core.Send)
    with pytest.raises(StopIteration) as done:
        plan.send(jobs_pb2.GetJobResponse(job=_job("j1")))
    assert done.value.value.id == "j1"


def test_unary_gives_up_and_never_retries_a_rejection_or_once_closed() -> None:
    plan = core.unary(core.cancel_job("j"), FAST, threading.Event())
    next(plan)
    for _ in range(FAST.max_attempts - 1):
        assert isinstance(plan.send(tandem.Unavailable("down")), core.Sleep)
        assert isinstance(plan.send(None), core.Send)
    with pytest.raises(tandem.Unavailable):
        plan.send(tandem.Unavailable("down"))

    plan = core.unary(core.cancel_job("j"), FAST, threading.Event())
    next(plan)
    with pytest.raises(tandem.Conflict):
        plan.send(tandem.Conflict("finished"))

    closed = threading.Event()
    closed.set()
    plan = core.unary(core.cancel_job("j"), FAST, closed)
    next(plan)
    with pytest.raises(tandem.Unavailable):
        plan.send(tandem.Unavailable("down"))


def test_a_waiters_call_is_retried_until_its_deadline() -> None:
    server_deadline = make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "", "context deadline exceeded")
    plan = core.unary(
        core.get_job("j", True), core.UntilDeadline(FAST, time.monotonic() + 60), threading.Event()
    )
    send = next(plan)
    assert isinstance(send, core.Send) and send.timeout is not None and 0 < send.timeout <= 60
    for _ in range(3 * FAST.max_attempts):
        assert isinstance(plan.send(server_deadline), core.Sleep)
        assert isinstance(plan.send(None), core.Send)
    with pytest.raises(tandem.NotFound):
        plan.send(make_error(grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", "gone"))

    # Once the waiter's deadline has passed, a transient failure is its Timeout.
    plan = core.unary(
        core.get_job("j", True), core.UntilDeadline(FAST, time.monotonic() - 1), threading.Event()
    )
    next(plan)
    with pytest.raises(tandem.Timeout, match="wait timed out: BROKER_UNAVAILABLE"):
        plan.send(make_error(grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", "nats down"))


@pytest.mark.parametrize(
    ("code", "reason", "resumed"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", True),  # the server's deadline, not ours
        (grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT", True),
        (grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", True),
        (grpc.StatusCode.ABORTED, "BROKER_UNAVAILABLE", True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", True),
        (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", True),
        (grpc.StatusCode.UNKNOWN, "", True),
        (grpc.StatusCode.CANCELLED, "CANCELLED", True),
        (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", False),
        (grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID", False),
        (grpc.StatusCode.ABORTED, "JOB_NOT_FOUND", False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "", False),  # a message over the size limit
        (grpc.StatusCode.UNIMPLEMENTED, "", False),
        (grpc.StatusCode.PERMISSION_DENIED, "", False),
    ],
)
def test_watch_reopens_unless_the_error_is_permanent(
    code: grpc.StatusCode, reason: str, resumed: bool
) -> None:
    w = core.Watch(["a"], None, False, 60.0, threading.Event())
    if resumed:
        w.broken(RpcError(code, reason))
        assert 0 <= w.reconnect_delay() <= tandem.RetryPolicy().initial_backoff
    else:
        with pytest.raises(tandem.TandemError) as info:
            w.broken(RpcError(code, reason))
        assert info.value.code is code


def test_a_live_queue_watch_reports_its_break() -> None:
    lost = RpcError(grpc.StatusCode.ABORTED, "BROKER_UNAVAILABLE", "events may be missing")
    w = core.Watch([], "q", False, None, threading.Event())
    assert w.wants_headers
    w.opened(False)  # the call failed before the server subscribed: nothing lost
    w.broken(lost)
    w.opened(True)
    with pytest.raises(tandem.Unavailable) as info:
        w.broken(lost)
    assert info.value.reason == "BROKER_UNAVAILABLE" and info.value.retryable

    # The caller's own deadline ends any watch with its Timeout.
    w = core.Watch(["a"], None, False, 0.0, threading.Event())
    with pytest.raises(tandem.Timeout, match="watch timed out after 0.0 s"):
        w.broken(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, ""))


def test_dead_letter_requests_select_given_ids_or_all() -> None:
    some = core.retry_dead_letters("q", ["a", "b"]).request
    assert list(some.job_ids) == ["a", "b"] and not some.all and some.queue == "q"
    every = core.purge_dead_letters("q", None).request
    assert list(every.job_ids) == [] and every.all
    assert (
        core.purge_dead_letters("q", None).convert(jobs_pb2.PurgeDeadLettersResponse(purged=3)) == 3
    )


def test_submit_many_retries_only_the_retryable_items() -> None:
    reqs = [submit_request("hash.sha256", bytes([i])) for i in range(3)]
    too_big = submit_request("hash.sha256", b"x" * 200_000)
    machine = core.SubmitMany(
        [*reqs, too_big], max_message_bytes=100_000, batch_size=2, policy=FAST
    )
    plan = machine.run(lambda job, dedup: (job.id, dedup))

    first = next(plan)
    assert isinstance(first, core.Send) and first.method == "SubmitJobs"
    assert [r.payload for r in first.request.jobs] == [b"\x00", b"\x01"]
    full = errors_pb2.Error(code=8, reason=errors_pb2.QUEUE_FULL, message="full")
    second = plan.send(
        jobs_pb2.SubmitJobsResponse(
            results=[
                jobs_pb2.SubmitJobsResult(submitted=jobs_pb2.SubmitJobResponse(job=_job("a"))),
                jobs_pb2.SubmitJobsResult(error=full),
            ]
        )
    )
    assert isinstance(second, core.Send) and [r.payload for r in second.request.jobs] == [b"\x02"]
    pause = plan.send(tandem.Unavailable("down"))  # the whole call failed: retried
    assert isinstance(pause, core.Sleep)
    again = plan.send(None)
    assert isinstance(again, core.Send)
    assert [r.payload for r in again.request.jobs] == [b"\x01", b"\x02"]
    assert again.metadata == first.metadata  # one trace for the whole submit_many
    with pytest.raises(StopIteration) as done:
        plan.send(
            jobs_pb2.SubmitJobsResponse(
                results=[
                    jobs_pb2.SubmitJobsResult(
                        submitted=jobs_pb2.SubmitJobResponse(job=_job("b"), deduplicated=True)
                    ),
                    jobs_pb2.SubmitJobsResult(submitted=jobs_pb2.SubmitJobResponse(job=_job("c"))),
                ]
            )
        )
    results: list[Any] = done.value.value
    assert results[:3] == [("a", False), ("b", True), ("c", False)]
    assert isinstance(results[3], tandem.InvalidJob) and results[3].reason == "PAYLOAD_TOO_LARGE"


def test_submit_many_reports_a_short_answer_as_internal() -> None:
    plan = core.SubmitMany(
        [submit_request("hash.sha256", b"")], max_message_bytes=1 << 20, batch_size=8, policy=FAST
    ).run(lambda job, dedup: job)
    next(plan)
    with pytest.raises(StopIteration) as done:
        plan.send(jobs_pb2.SubmitJobsResponse())
    assert isinstance(done.value.value[0], tandem.InternalError)


def test_watch_narrows_to_open_ids_and_finishes() -> None:
    w = core.Watch(["a", "b"], None, False, None, threading.Event())
    req, timeout = w.request()
    assert list(req.job_ids) == ["a", "b"] and timeout is None
    w.job(jobs_pb2.WatchJobsResponse(job=_job("a")))
    assert not w.finished and not w.ended()
    assert list(w.request()[0].job_ids) == ["b"]
    w.job(jobs_pb2.WatchJobsResponse(job=_job("b", jobs_pb2.JOB_STATE_RUNNING)))
    assert not w.finished
    w.job(jobs_pb2.WatchJobsResponse(job=_job("b")))
    assert w.finished
    assert 0 <= w.reconnect_delay() <= tandem.RetryPolicy().initial_backoff

    assert core.Watch([], "q", False, None, threading.Event()).ended()
    with pytest.raises(ValueError):
        core.watch_ids(None, None)
    with pytest.raises(tandem.Timeout):
        core.Watch(["a"], None, False, 0.0, threading.Event()).request()
    assert [len(g) for g in core.id_groups([str(i) for i in range(2500)])] == [1000, 1000, 500]


def test_map_plan_keeps_the_window_and_orders_outcomes() -> None:
    plan = core.MapPlan("hash.sha256", [b"1", b"2", b"3"], "q", window=2, batch_size=1)
    chunks = []
    for chunk in plan.chunks():
        chunks.append(chunk)
        assert plan.submitted(chunk, [tandem.NotFound("no queue")])[0][0] == chunk.indexes[0]
    assert len(chunks) == 2 and chunks[0].specs == [] and chunks[0].indexes == [0]
    batch = plan.next()
    assert batch.ids() == []
    assert list(plan.outcomes(batch, {}, return_exceptions=True))[0].reason == ""
    with pytest.raises(tandem.NotFound):
        list(plan.outcomes(batch, {}, return_exceptions=False))
    assert [c.indexes for c in plan.chunks()] == [[2]]  # room for one more


def test_map_plan_bounds_payload_bytes_in_flight(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70)
    inputs: list[Any] = [
        b"a" * 30,
        bytearray(b"b" * 30),
        big,
        memoryview(b"c" * 10),
        io.BytesIO(b"d" * 20),
    ]
    plan = core.MapPlan("hash.sha256", inputs, "", window=10, max_bytes=60, batch_size=10)

    def submit_all() -> list[tuple[list[int], int]]:
        out = []
        for chunk in plan.chunks():
            out.append((chunk.indexes, chunk.size))
            plan.submitted(chunk, [tandem.Job.from_proto(_job(f"j{i}")) for i in chunk.indexes])
        return out

    assert submit_all() == [([0, 1], 60)]  # 60 bytes in flight: nothing more fits
    plan.next()
    assert submit_all() == [([2], 70)]  # alone, though larger than the bound
    plan.next()
    # A file object is read when its turn comes, to know its size.
    assert submit_all() == [([3, 4], 30)]
    assert submit_all() == []
    with pytest.raises(ValueError):
        core.MapPlan("hash.sha256", [], "", window=0)


def test_missing_results_and_helpers() -> None:
    done = tandem.Job.from_proto(
        jobs_pb2.Job(id="a", state=jobs_pb2.JOB_STATE_SUCCEEDED, result_size=5)
    )  # a watch carries no bytes
    assert core.lacks_result(done, True)
    assert not core.lacks_result(done, False)
    assert core.wait_ids(["a", "b", "a"]) == ["a", "b"]
    assert list(bounded_groups([5, 5, 5, 20, 1], lambda n: n, 2, 12)) == [[5, 5], [5], [20], [1]]
    info = QueueInfo.from_proto(jobs_pb2.QueueInfo(name="q", depth=3, paused=True))
    assert (info.name, info.depth, info.paused, info.job_timeout) == ("q", 3, True, None)

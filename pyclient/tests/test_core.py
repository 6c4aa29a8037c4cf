"""The clients' shared logic (tandem._core) without any I/O: plans are driven by
hand, sent the responses and errors a server would give."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import tandem
from tandem import _core as core
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


def test_dead_letter_requests_select_given_ids_or_all() -> None:
    some = core.retry_dead_letters("q", ["a", "b"]).request
    assert list(some.job_ids) == ["a", "b"] and not some.all and some.queue == "q"
    every = core.purge_dead_letters("q", None).request
    assert list(every.job_ids) == [] and every.all
    assert core.purge_dead_letters("q", None).convert(
        jobs_pb2.PurgeDeadLettersResponse(purged=3)) == 3


def test_submit_many_retries_only_the_retryable_items() -> None:
    reqs = [submit_request("hash.sha256", bytes([i])) for i in range(3)]
    too_big = submit_request("hash.sha256", b"x" * 200_000)
    machine = core.SubmitMany([*reqs, too_big], max_message_bytes=100_000, batch_size=2,
                              policy=FAST)
    plan = machine.run(lambda job, dedup: (job.id, dedup))

    first = next(plan)
    assert isinstance(first, core.Send) and first.method == "SubmitJobs"
    assert [r.payload for r in first.request.jobs] == [b"\x00", b"\x01"]
    full = errors_pb2.Error(code=8, reason=errors_pb2.QUEUE_FULL, message="full")
    second = plan.send(jobs_pb2.SubmitJobsResponse(results=[
        jobs_pb2.SubmitJobsResult(submitted=jobs_pb2.SubmitJobResponse(job=_job("a"))),
        jobs_pb2.SubmitJobsResult(error=full),
    ]))
    assert isinstance(second, core.Send) and [r.payload for r in second.request.jobs] == [b"\x02"]
    pause = plan.send(tandem.Unavailable("down"))  # the whole call failed: retried
    assert isinstance(pause, core.Sleep)
    again = plan.send(None)
    assert isinstance(again, core.Send)
    assert [r.payload for r in again.request.jobs] == [b"\x01", b"\x02"]
    assert again.metadata == first.metadata  # one trace for the whole submit_many
    with pytest.raises(StopIteration) as done:
        plan.send(jobs_pb2.SubmitJobsResponse(results=[
            jobs_pb2.SubmitJobsResult(
                submitted=jobs_pb2.SubmitJobResponse(job=_job("b"), deduplicated=True)),
            jobs_pb2.SubmitJobsResult(submitted=jobs_pb2.SubmitJobResponse(job=_job("c"))),
        ]))
    results: list[Any] = done.value.value
    assert results[:3] == [("a", False), ("b", True), ("c", False)]
    assert isinstance(results[3], tandem.InvalidJob) and results[3].reason == "PAYLOAD_TOO_LARGE"


def test_submit_many_reports_a_short_answer_as_internal() -> None:
    plan = core.SubmitMany([submit_request("hash.sha256", b"")], max_message_bytes=1 << 20,
                           batch_size=8, policy=FAST).run(lambda job, dedup: job)
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
    assert 0 <= w.reconnect_delay() <= 0.05

    assert core.Watch([], "q", False, None, threading.Event()).ended()
    with pytest.raises(ValueError):
        core.watch_ids(None, None)
    with pytest.raises(tandem.Timeout):
        core.Watch(["a"], None, False, 0.0, threading.Event()).request()
    assert [len(g) for g in core.id_groups([str(i) for i in range(2500)])] == [1000, 1000, 500]


def test_map_plan_keeps_the_window_and_orders_outcomes() -> None:
    plan: core.MapPlan[Any] = core.MapPlan("hash.sha256", [b"1", b"2", b"3"], "q",
                                           window=2, batch_size=1)
    chunks = []
    for chunk in plan.chunks():
        chunks.append(chunk)
        plan.submitted([tandem.NotFound("no queue")])
    assert len(chunks) == 2 and chunks[0][0].queue == "q"
    batch, ids = plan.next()
    assert ids == []
    assert list(plan.outcomes(batch, {}, return_exceptions=True))[0].reason == ""
    with pytest.raises(tandem.NotFound):
        list(plan.outcomes(batch, {}, return_exceptions=False))
    assert len(list(plan.chunks())) == 1  # room for one more


def test_missing_results_and_helpers() -> None:
    done = tandem.Job.from_proto(jobs_pb2.Job(id="a", state=jobs_pb2.JOB_STATE_SUCCEEDED,
                                              result_size=5))  # a watch carries no bytes
    assert core.missing_results({"a": done}, True) == ["a"]
    assert core.missing_results({"a": done}, False) == []
    assert core.wait_ids(["a", "b", "a"]) == ["a", "b"]
    assert list(bounded_groups([5, 5, 5, 20, 1], lambda n: n, 2, 12)) == [[5, 5], [5], [20], [1]]
    info = QueueInfo.from_proto(jobs_pb2.QueueInfo(name="q", depth=3, paused=True))
    assert (info.name, info.depth, info.paused, info.job_timeout) == ("q", 3, True, None)

"""The client's own logic against an in-process stub server: retries with
idempotency keys, per-item batch errors, watch reconnects, outcomes."""

from __future__ import annotations

import asyncio
import hashlib
import re

import grpc
import pytest

import tandem
from fake_server import FakeServer, failed_outcome, status_error
from tandem.v1 import errors_pb2, jobs_pb2

FAST = tandem.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.02)


def test_submit_and_result(fake: FakeServer) -> None:
    with tandem.Client(fake.address, retry=FAST) as client:
        handle = client.submit("hash.sha256", b"hello", labels={"a": "b"})
        assert handle.job.state is tandem.JobState.QUEUED
        assert handle.result(timeout=5) == hashlib.sha256(b"hello").digest()
        assert not handle.deduplicated


def test_submit_retries_unavailable_with_the_same_key(fake: FakeServer) -> None:
    fake.service.submit_script = lambda n, r: (
        status_error(grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", "nats down")
        if n <= 2
        else None
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        handle = client.submit("hash.sha256", b"x")
    assert fake.service.submit_calls == 3
    keys = set(fake.service.keys_seen)
    assert len(keys) == 1 and next(iter(keys)).startswith("auto-")
    # One W3C trace for the logical submit, carried by each retry.
    traces = set(fake.service.traces_seen)
    assert len(traces) == 1 and re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traces.pop())
    assert handle.id


def test_submit_retries_overloaded_then_gives_up(fake: FakeServer) -> None:
    fake.service.submit_script = lambda n, r: status_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_FULL",
        "queue default is full (max_depth 5)",
        {"queue": "default", "limit": "5"},
        retry_after=0.01,
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.Overloaded) as info:
            client.submit("hash.sha256", b"x")
    assert fake.service.submit_calls == FAST.max_attempts
    assert info.value.retry_after == pytest.approx(0.01)
    assert info.value.metadata["queue"] == "default"
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_invalid_job_is_not_retried(fake: FakeServer) -> None:
    fake.service.submit_script = lambda n, r: status_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_OP",
        'step 0 (nope): unknown op "nope"',
        {"step": "0", "op": "nope"},
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.InvalidJob, match="unknown op") as info:
            client.submit("nope", b"x")
    assert fake.service.submit_calls == 1
    assert info.value.reason == "UNKNOWN_OP"
    assert info.value.metadata == {"step": "0", "op": "nope"}


def test_explicit_idempotency_key_dedupes(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        a = client.submit("hash.sha256", b"x", idempotency_key="k1")
        b = client.submit("hash.sha256", b"x", idempotency_key="k1")
    assert a.id == b.id and b.deduplicated and not a.deduplicated


def test_unreachable_server_is_unavailable() -> None:
    with tandem.Client("127.0.0.1:1", retry=tandem.NO_RETRY, timeout=2) as client:
        with pytest.raises(tandem.Unavailable):
            client.submit("hash.sha256", b"x")


def test_job_failed_carries_error_and_attempts(fake: FakeServer) -> None:
    fake.service.outcome = failed_outcome(
        "COMPUTE_UNAVAILABLE", code=14, state=jobs_pb2.JOB_STATE_DEAD
    )
    with tandem.Client(fake.address) as client:
        handle = client.submit("image.thumbnail", b"x")
        with pytest.raises(tandem.JobFailed) as info:
            handle.result(timeout=5)
    err = info.value
    assert err.state == "DEAD" and err.attempts == 3 and err.job_id == handle.id
    assert isinstance(err.error, tandem.Unavailable)
    assert err.reason == "COMPUTE_UNAVAILABLE"
    assert "DEAD after 3 attempts" in str(err)


def test_cancelled_job_raises_cancelled(fake: FakeServer) -> None:
    def cancelled(job: jobs_pb2.Job, payload: bytes) -> None:
        job.state = jobs_pb2.JOB_STATE_CANCELLED

    fake.service.outcome = cancelled
    with tandem.Client(fake.address) as client:
        with pytest.raises(tandem.Cancelled):
            client.submit("hash.sha256", b"x").result(timeout=5)


def test_cancel_finished_job_is_conflict(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        h = client.submit("hash.sha256", b"x")
        with pytest.raises(tandem.Conflict):
            h.cancel()


def test_get_unknown_job_is_not_found(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        with pytest.raises(tandem.NotFound) as info:
            client.get("nope")
    assert info.value.reason == "JOB_NOT_FOUND"


def test_watch_reconnects_after_broken_stream(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        handles = [client.submit("hash.sha256", bytes([i])) for i in range(3)]
        fake.service.break_watch_after = 1
        final = client.wait([h.id for h in handles], timeout=10)
    assert fake.service.watch_calls == 2
    assert {j.id for j in final.values()} == {h.id for h in handles}
    for i, h in enumerate(handles):
        assert final[h.id].result == hashlib.sha256(bytes([i])).digest()


def test_submit_many_reports_per_item_errors_and_retries_full_items(fake: FakeServer) -> None:
    def item(n: int, r: jobs_pb2.SubmitJobRequest) -> errors_pb2.Error | None:
        if r.payload == b"bad":
            return errors_pb2.Error(code=3, reason=errors_pb2.PARAM_INVALID, message="bad param")
        if r.payload == b"full" and n <= 5:
            return errors_pb2.Error(
                code=8,
                reason=errors_pb2.QUEUE_FULL,
                message="full",
                metadata={"retry_after_ms": "1"},
            )
        return None

    fake.service.item_script = item
    specs = [tandem.JobSpec("hash.sha256", p) for p in (b"a", b"bad", b"full", b"b")]
    with tandem.Client(fake.address, retry=FAST) as client:
        results = client.submit_many(specs, batch_size=3)
        assert isinstance(results[1], tandem.InvalidJob)
        ok = [r for r in results if isinstance(r, tandem.JobHandle)]
        assert len(ok) == 3
        assert results[2].result(timeout=5) == hashlib.sha256(b"full").digest()  # type: ignore[union-attr]
    assert fake.service.batch_calls >= 3


def test_map_yields_in_order_and_returns_exceptions(fake: FakeServer) -> None:
    fake.service.item_script = lambda n, r: (
        errors_pb2.Error(code=3, reason=errors_pb2.INPUT_CORRUPT, message="corrupt")
        if r.payload == b"3"
        else None
    )
    inputs = [str(i).encode() for i in range(10)]
    with tandem.Client(fake.address) as client:
        out = list(
            client.map("hash.sha256", inputs, batch_size=3, window=4, return_exceptions=True)
        )
        assert isinstance(out[3], tandem.InvalidJob)
        for i, r in enumerate(out):
            if i != 3:
                assert r == hashlib.sha256(inputs[i]).digest()
        with pytest.raises(tandem.InvalidJob):
            list(client.map("hash.sha256", inputs, batch_size=3))


def test_ops_queues_and_dead_letters(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        ops = client.ops()
        zstd = ops.get("compress.zstd")
        assert zstd is not None and zstd.params[0].type == "int" and zstd.params[0].max == 22
        assert ops.limits is not None and ops.limits.max_steps == 16
        q = client.queues()[0]
        assert (q.name, q.depth, q.job_timeout) == ("default", 3, 60.0)
        fake.service.outcome = failed_outcome("COMPUTE_UNAVAILABLE", 14, jobs_pb2.JOB_STATE_DEAD)
        h = client.submit("hash.sha256", b"x")
        dl = client.dead_letters("default")
        assert dl.total == 1 and dl.jobs[0].id == h.id
        assert client.retry_dead_letters("default") == [h.id]
        assert client.purge_dead_letters("default", [h.id]) == 0


def test_async_client(fake: FakeServer) -> None:
    async def main() -> None:
        fake.service.submit_script = lambda n, r: (
            status_error(grpc.StatusCode.UNAVAILABLE, "", "down") if n == 1 else None
        )
        async with tandem.AsyncClient(fake.address, retry=FAST) as client:
            h = await client.submit("hash.sha256", b"async")
            assert await h == hashlib.sha256(b"async").digest()
            many = await client.submit_many(
                [tandem.JobSpec("hash.sha256", b"1"), tandem.JobSpec("hash.sha256", b"2")]
            )
            ids = [r.id for r in many if isinstance(r, tandem.AsyncJobHandle)]
            final = await client.wait(ids, timeout=5)
            assert len(final) == 2
            out = [r async for r in client.map("hash.sha256", [b"a", b"b", b"c"], batch_size=2)]
            assert out == [hashlib.sha256(x).digest() for x in (b"a", b"b", b"c")]
            with pytest.raises(tandem.NotFound):
                await client.get("missing")
            assert (await client.ops()).get("compress.zstd") is not None

    asyncio.run(main())


def test_wait_on_more_ids_than_one_watch_takes(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        results = client.submit_many(
            [tandem.JobSpec("hash.sha256", str(i).encode()) for i in range(1500)]
        )
        ids = [r.id for r in results if isinstance(r, tandem.JobHandle)]
        final = client.wait(ids, timeout=30)
    assert len(final) == 1500
    assert fake.service.watch_calls == 2


def test_client_is_shared_across_threads(fake: FakeServer) -> None:
    import threading

    errors: list[BaseException] = []
    with tandem.Client(fake.address) as client:

        def work(t: int) -> None:
            try:
                for i in range(20):
                    data = f"{t}/{i}".encode()
                    assert (
                        client.submit("hash.sha256", data).result(timeout=10)
                        == hashlib.sha256(data).digest()
                    )
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    assert not errors
    assert len(fake.service.jobs) == 160


def test_async_watch_reconnects_and_job_failed(fake: FakeServer) -> None:
    async def main() -> None:
        async with tandem.AsyncClient(fake.address) as client:
            handles = [await client.submit("hash.sha256", bytes([i])) for i in range(3)]
            fake.service.break_watch_after = 1
            final = await client.wait([h.id for h in handles], timeout=10)
            assert len(final) == 3
            fake.service.outcome = failed_outcome("INPUT_CORRUPT")
            bad = await client.submit("image.info", b"x")
            with pytest.raises(tandem.JobFailed) as info:
                await bad
            assert isinstance(info.value.error, tandem.InvalidJob)

    asyncio.run(main())
    assert fake.service.watch_calls >= 2


def test_wait_on_nothing(fake: FakeServer) -> None:
    with tandem.Client(fake.address) as client:
        assert client.wait([]) == {}


def test_sync_and_async_clients_have_the_same_methods() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in vars(cls) if not n.startswith("_")}

    assert public(tandem.Client) == public(tandem.AsyncClient)
    assert public(tandem.JobHandle) == public(tandem.AsyncJobHandle)


def test_address_list_survives_one_server_down() -> None:
    a, b = FakeServer(), FakeServer()
    try:
        with tandem.Client(f"{a.address},{b.address}", retry=FAST) as client:
            for i in range(6):
                client.submit("hash.sha256", bytes([i]))
            assert a.service.submit_calls > 0 and b.service.submit_calls > 0
            a.stop()
            before = b.service.submit_calls
            for i in range(6):
                client.submit("hash.sha256", bytes([i]))
            assert b.service.submit_calls >= before + 6
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------- waiting through failures

# How a WatchJobs (or GetJob) call fails while NATS restarts: every answer the
# orchestrator may give during a broker blip, each retryable or a break of the
# stream, none the caller's own deadline.
BLIP = [
    status_error(grpc.StatusCode.DEADLINE_EXCEEDED, "", "context deadline exceeded"),
    status_error(grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", "nats: connection closed"),
    status_error(grpc.StatusCode.ABORTED, "BROKER_UNAVAILABLE", "connection to NATS was lost"),
    status_error(grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT", "nats: timeout"),
    status_error(grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", "kv get failed"),
    status_error(grpc.StatusCode.UNAVAILABLE, "", "Socket closed"),
]


def _blip(n: int, request: object) -> grpc.Status | None:
    return BLIP[n - 1] if n <= len(BLIP) else None


def test_wait_and_result_outlast_a_broker_blip(fake: FakeServer) -> None:
    with tandem.Client(fake.address, retry=FAST) as client:
        handles = [client.submit("hash.sha256", bytes([i])) for i in range(3)]
        fake.service.watch_script = _blip
        final = client.wait([h.id for h in handles], timeout=30)
        assert fake.service.watch_calls == len(BLIP) + 1
        assert [final[h.id].result for h in handles] == [
            hashlib.sha256(bytes([i])).digest() for i in range(3)
        ]

        fake.service.watch_calls = 0
        assert handles[0].result(timeout=30) == hashlib.sha256(b"\x00").digest()
        assert fake.service.watch_calls == len(BLIP) + 1


def test_wait_fetches_results_through_a_blip(fake: FakeServer) -> None:
    # The GetJob for result bytes the watch did not carry outlasts the
    # client's retry policy (FAST: 4 attempts) while the caller's timeout lasts.
    fake.service.watch_without_results = True
    fake.service.get_script = _blip
    with tandem.Client(fake.address, retry=FAST) as client:
        handle = client.submit("hash.sha256", b"x")
        assert handle.result(timeout=30) == hashlib.sha256(b"x").digest()
    assert fake.service.get_calls == len(BLIP) + 1


def test_async_wait_outlasts_a_broker_blip(fake: FakeServer) -> None:
    async def main() -> None:
        async with tandem.AsyncClient(fake.address, retry=FAST) as client:
            handle = await client.submit("hash.sha256", b"a")
            fake.service.watch_script = _blip
            assert await handle.result(timeout=30) == hashlib.sha256(b"a").digest()
            fake.service.watch_calls = 0
            fake.service.watch_without_results = True
            fake.service.get_script = _blip
            final = await client.wait([handle.id], timeout=30)
            assert final[handle.id].result == hashlib.sha256(b"a").digest()

    asyncio.run(main())
    assert fake.service.watch_calls == len(BLIP) + 1
    assert fake.service.get_calls == len(BLIP) + 1


def test_map_outlasts_a_broker_blip(fake: FakeServer) -> None:
    fake.service.submit_script = _blip  # each SubmitJobs call, more than FAST retries
    fake.service.watch_script = _blip
    inputs = [str(i).encode() for i in range(5)]
    seen: list[tuple[int, str]] = []
    with tandem.Client(fake.address, retry=FAST) as client:
        out = list(
            client.map(
                "hash.sha256",
                inputs,
                batch_size=2,
                timeout=30,
                on_result=lambda i, r: seen.append((i, type(r).__name__)),
            )
        )
    assert out == [hashlib.sha256(x).digest() for x in inputs]
    assert sorted(seen) == [(i, "Job") for i in range(5)]


def test_async_map_outlasts_a_broker_blip(fake: FakeServer) -> None:
    fake.service.submit_script = _blip
    fake.service.watch_script = _blip

    async def main() -> list[object]:
        async with tandem.AsyncClient(fake.address, retry=FAST) as client:
            return [r async for r in client.map("hash.sha256", [b"a", b"b"], timeout=30)]

    assert asyncio.run(main()) == [hashlib.sha256(x).digest() for x in (b"a", b"b")]


def test_watch_ends_on_a_permanent_error_or_its_own_deadline(fake: FakeServer) -> None:
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.NotFound):
            client.wait(["no-such-job"], timeout=30)
        assert fake.service.watch_calls == 1

        h = client.submit("hash.sha256", b"x")
        fake.service.watch_script = lambda n, r: status_error(
            grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID", "bad watch"
        )
        with pytest.raises(tandem.InvalidJob):
            h.result(timeout=30)

        # The server's deadlines do not end the watch; the caller's does.
        fake.service.watch_calls = 0
        fake.service.watch_script = lambda n, r: BLIP[0]
        with pytest.raises(tandem.Timeout, match="watch timed out after 0.5 s"):
            h.result(timeout=0.5)
        assert fake.service.watch_calls > 1


def test_map_times_out_when_the_service_stays_down(fake: FakeServer) -> None:
    fake.service.submit_script = lambda n, r: BLIP[1]
    with tandem.Client(fake.address, retry=FAST) as client:
        out = list(client.map("hash.sha256", [b"a"], timeout=0.3, return_exceptions=True))
    # Only the deadline stopped the submit's retries.
    assert isinstance(out[0], tandem.Timeout) and "map timed out" in str(out[0])
    assert fake.service.batch_calls > FAST.max_attempts


def test_queue_watch_retries_its_opening_then_reports_a_lost_broker(fake: FakeServer) -> None:
    fake.service.watch_script = lambda n, r: BLIP[1] if n == 1 else None
    fake.service.queue_events = [jobs_pb2.Job(id="j1", state=jobs_pb2.JOB_STATE_RUNNING)]
    fake.service.queue_end = status_error(
        grpc.StatusCode.ABORTED,
        "BROKER_UNAVAILABLE",
        'watch of queue "default" ended: the connection to NATS was lost, events in between '
        "may be missing",
        {"queue": "default"},
    )
    seen: list[str] = []
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.Unavailable) as info:
            for job in client.watch(queue="default", timeout=30):
                seen.append(job.id)
    assert seen == ["j1"]
    assert fake.service.watch_calls == 2  # the failed opening, then the live stream
    err = info.value
    assert err.reason == "BROKER_UNAVAILABLE" and err.code is grpc.StatusCode.ABORTED
    assert err.retryable and "may be missing" in err.message


def test_async_queue_watch_reports_a_lost_broker(fake: FakeServer) -> None:
    # Live (headers came) though no event did: the break is reported.
    fake.service.queue_end = status_error(
        grpc.StatusCode.UNAVAILABLE, "BROKER_UNAVAILABLE", "nats: connection closed"
    )

    async def main() -> None:
        async with tandem.AsyncClient(fake.address, retry=FAST) as client:
            with pytest.raises(tandem.Unavailable):
                async for _ in client.watch(queue="default", timeout=30):
                    pass

    asyncio.run(main())
    assert fake.service.watch_calls == 1


def test_a_status_with_a_huge_message_keeps_its_type(fake: FakeServer) -> None:
    # Past gRPC's default metadata limit (16 KiB) the status would be dropped
    # and the call would read as RESOURCE_EXHAUSTED (Overloaded).
    fake.service.submit_script = lambda n, r: status_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_OP",
        "unknown op " + "é" * 200_000,
        {"op": "x" * 200_000},
    )
    with tandem.Client(fake.address, retry=FAST) as client:
        with pytest.raises(tandem.InvalidJob) as info:
            client.submit("nope", b"x")
    assert info.value.reason == "UNKNOWN_OP" and len(info.value.metadata["op"]) == 200_000
    assert fake.service.submit_calls == 1

"""Job semantics through the real stack: retries, dead letters, permanent
failures, idempotency, cancel, timeouts, admission at max depth."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid

import pytest

import tandem
from harness import Stack, debug_fail_params, eventually, sleep_params

NO_RETRY = tandem.NO_RETRY


def test_retry_then_succeed(client: tandem.Client) -> None:
    # Fails with UNAVAILABLE on attempts 1 and 2, succeeds on 3 (queue
    # "fast": max_attempts 3).
    steps = [
        tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE", until_attempt=2)),
        tandem.Step("hash.sha256"),
    ]
    job = client.submit(steps, b"retry me", queue="fast").wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED, job.last_error
    assert job.attempt == 3
    assert len(job.attempts) == 3
    assert all(isinstance(a.error, tandem.Unavailable) for a in job.attempts[:2])
    assert job.attempts[2].error is None
    assert job.result == hashlib.sha256(b"retry me").digest()


def test_poison_goes_dead_then_retry_from_dlq_succeeds(client: tandem.Client) -> None:
    # Fails on attempts 1..3: with max_attempts 3 the job goes DEAD. A retry
    # from the dead-letter queue starts fresh attempts (numbered on from 4),
    # where the fault is gone.
    steps = [
        tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE", until_attempt=3)),
        tandem.Step("hash.sha256"),
    ]
    handle = client.submit(steps, b"poison", queue="fast")
    with pytest.raises(tandem.JobFailed) as info:
        handle.result(timeout=60)
    assert info.value.state == "DEAD"
    assert info.value.attempts == 3
    assert isinstance(info.value.error, tandem.Unavailable)

    dead = client.dead_letters("fast", limit=1000)
    assert handle.id in [j.id for j in dead.jobs]
    entry = next(j for j in dead.jobs if j.id == handle.id)
    assert entry.last_error is not None and len(entry.attempts) == 3

    assert client.retry_dead_letters("fast", [handle.id]) == [handle.id]
    assert handle.result(timeout=60) == hashlib.sha256(b"poison").digest()
    assert handle.id not in [j.id for j in client.dead_letters("fast", limit=1000).jobs]


def test_retry_from_dlq_runs_the_job_again(client: tandem.Client) -> None:
    # Whatever the attempt numbering, a retried dead letter runs again with a
    # fresh budget of attempts and leaves the dead-letter queue meanwhile.
    steps = [tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE"))]
    handle = client.submit(steps, b"dead twice", queue="fast")
    first = handle.wait(timeout=60)
    assert first.state is tandem.JobState.DEAD and len(first.attempts) == 3
    assert client.retry_dead_letters("fast", [handle.id]) == [handle.id]
    assert client.get(handle.id).state is not tandem.JobState.DEAD
    second = eventually(
        lambda: (j := client.get(handle.id)).state is tandem.JobState.DEAD
        and len(j.attempts) > 3
        and j,
        60,
        "the retried job to run its fresh attempts",
    )
    assert len(second.attempts) == 6
    eventually(
        lambda: handle.id in [j.id for j in client.dead_letters("fast", limit=1000).jobs],
        10,
        "the job to be back in the dead-letter queue",
    )


def test_purge_dead_letters(client: tandem.Client) -> None:
    steps = [tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE"))]
    handle = client.submit(steps, b"purge me", queue="fast")
    assert handle.wait(timeout=60).state is tandem.JobState.DEAD
    assert client.purge_dead_letters("fast", [handle.id]) == 1
    assert handle.id not in [j.id for j in client.dead_letters("fast", limit=1000).jobs]
    with pytest.raises(tandem.NotFound):
        client.retry_dead_letters("fast", [handle.id])


def test_permanent_error_fails_at_once(client: tandem.Client) -> None:
    steps = [tandem.Step("debug.fail", debug_fail_params(client, "INVALID_ARGUMENT"))]
    with pytest.raises(tandem.JobFailed) as info:
        client.submit(steps, b"x", queue="fast").result(timeout=60)
    assert info.value.state == "FAILED"
    assert info.value.attempts == 1, "a permanent error is never retried"
    assert isinstance(info.value.error, tandem.InvalidJob)


def test_corrupt_image_fails_with_clear_error(client: tandem.Client) -> None:
    bad = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    with pytest.raises(tandem.JobFailed) as info:
        client.submit("image.info", bad).result(timeout=60)
    assert info.value.state == "FAILED"
    assert info.value.error.reason == "INPUT_CORRUPT"
    assert info.value.error.metadata.get("step") == "0"


def test_idempotent_resubmits_make_one_job(client: tandem.Client) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    first = client.submit("hash.sha256", b"once", idempotency_key=key)
    again = [client.submit("hash.sha256", b"once", idempotency_key=key) for _ in range(5)]
    assert not first.deduplicated
    assert all(h.deduplicated and h.id == first.id for h in again)
    job = first.wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED and len(job.attempts) == 1
    # After it finished, a resubmit still returns the same finished job.
    late = client.submit("hash.sha256", b"once", idempotency_key=key)
    assert late.id == first.id and late.deduplicated
    assert late.job.state is tandem.JobState.SUCCEEDED


def test_concurrent_idempotent_submits_make_one_job(stack: Stack) -> None:
    key = f"idem-concurrent-{uuid.uuid4().hex}"
    ids: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def submit() -> None:
        with stack.client() as c:
            barrier.wait()
            try:
                ids.append(c.submit("hash.sha256", b"race", idempotency_key=key).id)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=submit) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(set(ids)) == 1 and len(ids) == 16
    with stack.client() as c:
        job = c.get(ids[0])
        job = c.wait([ids[0]], timeout=60)[ids[0]]
    assert job.state is tandem.JobState.SUCCEEDED and len(job.attempts) == 1


def test_same_key_on_another_queue_is_another_job(client: tandem.Client) -> None:
    key = f"idem-q-{uuid.uuid4().hex}"
    a = client.submit("hash.sha256", b"q", idempotency_key=key, queue="default")
    b = client.submit("hash.sha256", b"q", idempotency_key=key, queue="fast")
    assert a.id != b.id


def test_cancel_queued_job_never_runs(client: tandem.Client) -> None:
    # Queue "single" has one worker: a sleeper holds it, the next job waits.
    sleeper = client.submit(
        [tandem.Step("debug.sleep", sleep_params(client, 3000))], b"", queue="single"
    )
    eventually(
        lambda: client.get(sleeper.id).state is tandem.JobState.RUNNING, 20, "the sleeper to run"
    )
    queued = client.submit("hash.sha256", b"never", queue="single")
    assert client.get(queued.id).state is tandem.JobState.QUEUED
    cancelled = client.cancel(queued.id)
    assert cancelled.state is tandem.JobState.CANCELLED
    assert sleeper.wait(timeout=60).state is tandem.JobState.SUCCEEDED

    # The signal that the worker has had the cancelled job's message: the
    # queue holds nothing, waiting or in flight (it was acked without running).
    def consumed() -> bool:
        q = next(q for q in client.queues() if q.name == "single")
        return q.depth == 0 and q.in_flight == 0

    eventually(consumed, 30, "the worker to take and drop the cancelled job's message")
    job = client.get(queued.id)
    assert job.state is tandem.JobState.CANCELLED
    assert job.attempts == [] and job.attempt == 0
    with pytest.raises(tandem.Cancelled):
        queued.result(timeout=5)


def test_cancel_running_job(client: tandem.Client, stack: Stack) -> None:
    handle = client.submit(
        [tandem.Step("debug.sleep", sleep_params(client, 8000))], b"", queue="fast"
    )
    eventually(lambda: client.get(handle.id).state is tandem.JobState.RUNNING, 20, "job to run")
    assert client.cancel(handle.id).state in (tandem.JobState.CANCELLED, tandem.JobState.RUNNING)
    job = handle.wait(timeout=30)
    assert job.state is tandem.JobState.CANCELLED
    # The call was stopped, not waited out: the attempt ended (its record
    # closed by the worker) before the 8 s the op would have slept.
    eventually(
        lambda: client.get(handle.id).attempts[-1].finished_at is not None,
        20,
        "the attempt to be closed",
    )
    a = client.get(handle.id).attempts[-1]
    assert a.finished_at is not None and a.started_at is not None
    assert (a.finished_at - a.started_at).total_seconds() < 8, "cancel must stop the compute call"
    # The compute worker is free again: a quick job runs at once.
    assert client.submit("hash.sha256", b"after cancel", queue="fast").result(timeout=30)
    stack.assert_healthy()


def test_cancel_finished_job_is_conflict(client: tandem.Client) -> None:
    handle = client.submit("hash.sha256", b"done")
    handle.wait(timeout=60)
    with pytest.raises(tandem.Conflict) as info:
        handle.cancel()
    assert info.value.reason == "JOB_STATE_CONFLICT"


def test_job_timeout(client: tandem.Client) -> None:
    # Queue "short": job_timeout 1 s, max_attempts 1.
    handle = client.submit(
        [tandem.Step("debug.sleep", sleep_params(client, 10_000))], b"", queue="short"
    )
    with pytest.raises(tandem.JobFailed) as info:
        handle.result(timeout=60)
    assert isinstance(info.value.error, tandem.Timeout), info.value.error
    assert info.value.state in ("DEAD", "FAILED")
    # The deadline cut the attempt short of the op's 10 s.
    a = client.get(handle.id).attempts[-1]
    assert a.finished_at is not None and a.started_at is not None
    assert (a.finished_at - a.started_at).total_seconds() < 10


def test_per_job_timeout_override(client: tandem.Client) -> None:
    handle = client.submit(
        [tandem.Step("debug.sleep", sleep_params(client, 10_000))],
        b"",
        queue="fast",
        timeout=1.0,
        max_attempts=1,
    )
    assert handle.job.timeout == pytest.approx(1.0)
    with pytest.raises(tandem.JobFailed) as info:
        handle.result(timeout=60)
    assert isinstance(info.value.error, tandem.Timeout)


def test_unknown_queue(client: tandem.Client) -> None:
    with pytest.raises(tandem.NotFound) as info:
        client.submit("hash.sha256", b"x", queue="no-such-queue")
    assert info.value.reason == "QUEUE_NOT_FOUND"


def test_max_depth_gives_overloaded_and_loses_nothing(stack: Stack) -> None:
    client = stack.client(retry=NO_RETRY)
    client.pause_queue("tiny")
    accepted: list[tandem.JobHandle] = []
    try:
        with pytest.raises(tandem.Overloaded) as info:
            for i in range(50):
                accepted.append(client.submit("hash.sha256", f"deep {i}".encode(), queue="tiny"))
        assert info.value.reason == "QUEUE_FULL"
        assert info.value.retry_after is not None and info.value.retry_after > 0
        assert len(accepted) == 5
        info_q = next(q for q in client.queues() if q.name == "tiny")
        assert info_q.paused and info_q.depth == 5
    finally:
        client.resume_queue("tiny")
    final = client.wait([h.id for h in accepted], timeout=60)
    for i, h in enumerate(accepted):
        assert final[h.id].state is tandem.JobState.SUCCEEDED
        assert final[h.id].result == hashlib.sha256(f"deep {i}".encode()).digest()


def test_client_retry_rides_out_a_full_queue(stack: Stack) -> None:
    client = stack.client(
        retry=tandem.RetryPolicy(max_attempts=50, initial_backoff=0.05, max_backoff=0.3)
    )
    client.pause_queue("tiny")
    handles: list[tandem.JobHandle] = []
    try:
        handles = [
            client.submit("hash.sha256", f"full {i}".encode(), queue="tiny") for i in range(5)
        ]
        resumer = threading.Timer(1.0, lambda: stack.client().resume_queue("tiny"))
        resumer.start()
        # The queue is full: this submit retries (same idempotency key) until
        # the resumed workers make room.
        handles.append(client.submit("hash.sha256", b"full extra", queue="tiny"))
        resumer.join()
    finally:
        client.resume_queue("tiny")
    final = client.wait([h.id for h in handles], timeout=60)
    assert len(set(final)) == 6
    assert all(j.state is tandem.JobState.SUCCEEDED for j in final.values())


def test_watch_queue_sees_events(stack: Stack) -> None:
    # A queue watch sees changes from when it is subscribed on: keep
    # submitting until it reports one of ours SUCCEEDED.
    client = stack.client()
    succeeded: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        with stack.client() as c:
            try:
                for job in c.watch(queue="fast", timeout=30):
                    if job.state is tandem.JobState.SUCCEEDED and job.labels.get("w") == "1":
                        succeeded.add(job.id)
                    if stop.is_set():
                        return
            except (tandem.Timeout, tandem.Cancelled):
                return  # the watch timed out, or the client closed under it

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    submitted: list[str] = []
    deadline = time.monotonic() + 20
    while not (succeeded & set(submitted)) and time.monotonic() < deadline:
        submitted.append(
            client.submit("hash.sha256", b"watched", queue="fast", labels={"w": "1"}).id
        )
        time.sleep(0.3)
    stop.set()
    assert succeeded & set(submitted), "the queue watch saw none of the submitted jobs succeed"


def test_queues_lists_configured_queues(client: tandem.Client) -> None:
    names = {q.name for q in client.queues()}
    assert {"default", "fast", "short", "tiny", "single"} <= names
    fast = next(q for q in client.queues() if q.name == "fast")
    assert fast.max_attempts == 3


def test_dead_letter_is_held_by_the_broker(client: tandem.Client, stack: Stack) -> None:
    # Looks at JetStream itself (nats-py): the dead job's message sits in the
    # dead-letter stream (subject tandem.dlq.<queue>.<job id>, the layout in
    # orchestrator-go/internal/broker), payload included.
    import asyncio

    import nats

    steps = [tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE"))]
    handle = client.submit(steps, b"held by the broker", queue="fast")
    assert handle.wait(timeout=60).state is tandem.JobState.DEAD
    subject = f"tandem.dlq.fast.{handle.id}"

    async def look() -> tuple[str, bytes]:
        nc = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=1)
        try:
            jsm = nc.jsm()
            stream = await jsm.find_stream_name_by_subject(subject)
            msg = await jsm.get_last_msg(stream, subject)
            return stream, msg.data or b""
        finally:
            await nc.close()

    stream, data = asyncio.run(look())
    assert stream
    assert b"held by the broker" in data

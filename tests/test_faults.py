"""Fault tests: kill processes in the middle of many jobs. Each asserts that
every accepted job ends SUCCEEDED with the right result, none is lost and
none ran to two results.

Marked slow: CI runs them; a developer may skip them with -m "not slow".
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable

import pytest

import tandem
from harness import FAULT_QUEUES_TOML, Stack, eventually
from tandem._health import check_address

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WAIT = 180.0

# Each job holds a compute worker for a few ms, so that a few thousand jobs
# take seconds and a fault lands mid-run; the output is sha256(payload).
JOB_STEPS = [tandem.Step("debug.sleep", ms=4), tandem.Step("hash.sha256")]


class Tracker(threading.Thread):
    """Watches jobs to the end through one client (reconnecting across
    faults) and records each job's final record."""

    def __init__(self, client: tandem.Client, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.ids = ids
        self.final: dict[str, tandem.Job] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for job in self.client.watch(self.ids, include_result=True, timeout=WAIT):
                if job.done:
                    self.final[job.id] = job
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def wait_done(self, n: int, timeout: float = 60) -> None:
        """Waits until n jobs finished; then checks the fault will land
        mid-run (some still unfinished)."""
        eventually(
            lambda: len(self.final) >= n or self.error is not None, timeout, f"{n} jobs to finish"
        )
        assert self.error is None, f"watching failed: {self.error!r}"
        assert len(self.final) < len(self.ids), "all jobs finished before the fault"
        print(f"fault after {len(self.final)}/{len(self.ids)} jobs finished")

    def finish(self) -> dict[str, tandem.Job]:
        self.join(WAIT + 10)
        assert self.error is None, f"watching failed: {self.error!r}"
        return self.final


def submit(client: tandem.Client, n: int, tag: str) -> dict[str, bytes]:
    """Submits n jobs (with idempotency keys); returns id → expected result."""
    payloads = [f"{tag}/{i}/{uuid.uuid4().hex}".encode() * 8 for i in range(n)]
    specs = [
        tandem.JobSpec(JOB_STEPS, p, idempotency_key=f"{tag}-{i}") for i, p in enumerate(payloads)
    ]
    results = client.submit_many(specs)
    rejected = [r for r in results if not isinstance(r, tandem.JobHandle)]
    assert not rejected, f"{len(rejected)} submits rejected, first: {rejected[0]!r}"
    handles = [r for r in results if isinstance(r, tandem.JobHandle)]
    assert len({h.id for h in handles}) == n
    return {h.id: hashlib.sha256(p).digest() for h, p in zip(handles, payloads)}


def assert_all_succeeded_once(final: dict[str, tandem.Job], expected: dict[str, bytes]) -> None:
    missing = set(expected) - set(final)
    assert not missing, f"{len(missing)} jobs never finished, e.g. {sorted(missing)[:3]}"
    by_state: dict[str, int] = {}
    for job in final.values():
        by_state[job.state.name] = by_state.get(job.state.name, 0) + 1
    assert by_state == {"SUCCEEDED": len(expected)}, by_state
    wrong = [i for i, j in final.items() if j.result != expected[i]]
    assert not wrong, f"{len(wrong)} wrong results, e.g. {wrong[:3]}"
    # An attempt cut off by a crash has no error and no finish time; one that
    # completed without error produced a result. At most one may have.
    twice = [
        j
        for j in final.values()
        if sum(1 for a in j.attempts if a.error is None and a.finished_at is not None) > 1
    ]
    assert not twice, (
        f"{len(twice)} jobs recorded more than one successful attempt, e.g. "
        f"{twice[0].id}: {twice[0].attempts}"
        if twice
        else ""
    )


def assert_broker_clean(nats_url: str) -> None:
    """Looks at JetStream directly (nats-py): no work-queue stream holds a
    message and no consumer has pending or unacked work."""
    import asyncio

    import nats
    from nats.js.api import RetentionPolicy

    async def check() -> list[str]:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
        problems = []
        try:
            jsm = nc.jsm()
            for info in await jsm.streams_info():
                name = info.config.name or ""
                if info.config.retention == RetentionPolicy.WORK_QUEUE and info.state.messages:
                    problems.append(f"stream {name} holds {info.state.messages} messages")
                for c in await jsm.consumers_info(name):
                    if c.num_pending or c.num_ack_pending:
                        problems.append(
                            f"consumer {name}/{c.name}: pending {c.num_pending}, "
                            f"unacked {c.num_ack_pending}"
                        )
        finally:
            await nc.close()
        return problems

    def clean() -> bool:
        return asyncio.run(check()) == []

    try:
        eventually(clean, 30, "JetStream to hold no pending work")
    except AssertionError:
        raise AssertionError(f"broker not clean: {asyncio.run(check())}") from None


def assert_queue_drained(client: tandem.Client) -> None:
    def drained() -> bool:
        q = next(q for q in client.queues() if q.name == "default")
        return q.depth == 0 and q.in_flight == 0 and q.dead_letters == 0

    eventually(drained, 30, "the default queue to drain (depth, in flight, dead = 0)")


def fault_stack(new_stack: Callable[..., Stack], **kwargs: object) -> Stack:
    return new_stack(
        queues_toml=FAULT_QUEUES_TOML, orchestrator_args=("--drain-timeout", "10s"), **kwargs
    )


def test_sigkill_compute_mid_run(new_stack: Callable[..., Stack]) -> None:
    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 2000, "kill-compute")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(100)
    stack.computes[0].kill()
    # The outage was seen (breakers open, health NOT_SERVING) before it ends.
    eventually(
        lambda: not check_address(stack.addresses[0], timeout=1.0),
        30,
        "the orchestrator to report NOT_SERVING while compute is down",
    )
    stack.computes[0].start()
    final = tracker.finish()
    assert_all_succeeded_once(final, expected)
    # The outage must not burn attempts: at most the one cut by the kill.
    burnt = [j for j in final.values() if len(j.attempts) > 2]
    assert not burnt, f"{len(burnt)} jobs used more than 2 attempts, e.g. {burnt[0].attempts}"
    assert_queue_drained(client)
    assert_broker_clean(stack.nats_url)
    stack.assert_healthy()


def test_sigkill_orchestrator_mid_run(new_stack: Callable[..., Stack]) -> None:
    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 1000, "kill-orch")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(100)
    stack.orchestrators[0].kill()
    time.sleep(1)
    stack.orchestrators[0].start()
    assert_all_succeeded_once(tracker.finish(), expected)
    assert_queue_drained(client)
    stack.assert_healthy()


def test_sigkill_nats_mid_run_and_restart_on_same_store(new_stack: Callable[..., Stack]) -> None:
    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 1000, "kill-nats")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(100)
    assert stack.nats is not None
    stack.nats.kill()
    eventually(
        lambda: not check_address(stack.addresses[0], timeout=1.0),
        30,
        "the orchestrator to report NOT_SERVING while NATS is down",
    )
    time.sleep(1)
    stack.nats.start()
    assert_all_succeeded_once(tracker.finish(), expected)
    assert_queue_drained(client)
    assert_broker_clean(stack.nats_url)
    stack.assert_healthy()


def test_sigterm_orchestrator_drains_and_a_new_one_finishes(
    new_stack: Callable[..., Stack],
) -> None:
    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 1000, "drain")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(100)
    t0 = time.monotonic()
    code = stack.orchestrators[0].terminate(timeout=40)
    assert code == 0, f"orchestrator exited {code} on SIGTERM"
    assert time.monotonic() - t0 < 20, "drain took longer than the drain timeout"
    stack.orchestrators[0].start()
    assert_all_succeeded_once(tracker.finish(), expected)
    assert_queue_drained(client)


def test_two_orchestrators_kill_one(new_stack: Callable[..., Stack]) -> None:
    stack = fault_stack(new_stack, orchestrators=2)
    a, b = stack.client(stack.addresses[0]), stack.client(stack.addresses[1])
    expected = submit(a, 500, "two-a")
    expected.update(submit(b, 500, "two-b"))
    tracker = Tracker(stack.client(stack.addresses[1]), list(expected))
    tracker.start()
    tracker.wait_done(100)
    stack.orchestrators[0].kill()
    # A client given both addresses goes on through the survivor.
    both = stack.client(",".join(stack.addresses))
    late = {
        both.submit("hash.sha256", f"late {i}".encode()).id: hashlib.sha256(
            f"late {i}".encode()
        ).digest()
        for i in range(20)
    }
    assert_all_succeeded_once(tracker.finish(), expected)
    assert_all_succeeded_once(both.wait(list(late), timeout=WAIT), late)
    assert_queue_drained(b)
    assert_broker_clean(stack.nats_url)


def test_submits_retry_through_an_orchestrator_restart(new_stack: Callable[..., Stack]) -> None:
    # A client submitting while the orchestrator restarts: its retries (same
    # idempotency key) land once the orchestrator is back; nothing is lost or
    # doubled.
    stack = fault_stack(new_stack)
    client = stack.client(
        retry=tandem.RetryPolicy(max_attempts=100, initial_backoff=0.05, max_backoff=0.5)
    )
    expected: dict[str, bytes] = {}
    stop = threading.Event()

    def bounce() -> None:
        time.sleep(0.5)
        stack.orchestrators[0].kill()
        time.sleep(1.0)
        stack.orchestrators[0].start()
        stop.set()

    t = threading.Thread(target=bounce)
    t.start()
    i = 0
    while not stop.is_set() or i < 50:
        payload = f"bounce {i}".encode()
        h = client.submit("hash.sha256", payload, idempotency_key=f"bounce-{i}")
        expected[h.id] = hashlib.sha256(payload).digest()
        i += 1
    t.join()
    assert len(expected) == i, "an idempotency key made two jobs"
    final = client.wait(list(expected), timeout=WAIT)
    assert_all_succeeded_once(final, expected)


def test_sigterm_lets_running_jobs_finish(new_stack: Callable[..., Stack]) -> None:
    from harness import sleep_params

    stack = fault_stack(new_stack)
    client = stack.client()
    steps = [tandem.Step("debug.sleep", sleep_params(client, 1500)), tandem.Step("hash.sha256")]
    handles = [client.submit(steps, f"drain {i}".encode()) for i in range(4)]
    eventually(
        lambda: any(client.get(h.id).state is tandem.JobState.RUNNING for h in handles),
        20,
        "a job to run",
    )
    running = [h.id for h in handles if client.get(h.id).state is tandem.JobState.RUNNING]
    code = stack.orchestrators[0].terminate(timeout=40)
    assert code == 0, f"orchestrator exited {code} on SIGTERM"
    stack.orchestrators[0].start()
    final = client.wait([h.id for h in handles], timeout=60)
    for i, h in enumerate(handles):
        job = final[h.id]
        assert job.state is tandem.JobState.SUCCEEDED
        assert job.result == hashlib.sha256(f"drain {i}".encode()).digest()
    # The ones running at SIGTERM finished during the drain: one attempt.
    assert running
    assert [len(final[i].attempts) for i in running] == [1] * len(running)


def _watch_health(address: str, stop: threading.Event, seen: list[bool]) -> threading.Thread:
    """Polls the orchestrator's health until stop; appends each answer."""

    def run() -> None:
        while not stop.is_set():
            seen.append(check_address(address, timeout=1.0))
            time.sleep(0.2)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sigstop_compute_under_load_burns_no_attempts(new_stack: Callable[..., Stack]) -> None:
    # A frozen compute accepts connections and answers nothing: an outage.
    # The breaker must open (health NOT_SERVING, no pulls) and the calls the
    # freeze cut off must be handed back, not counted as TIMEOUT attempts.
    import signal

    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 1000, "freeze-compute")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(50)
    stop, seen = threading.Event(), list[bool]()
    poller = _watch_health(stack.addresses[0], stop, seen)
    stack.computes[0].signal(signal.SIGSTOP)
    try:
        # Several job timeouts (5 s) long, like the 35 s freeze that burnt
        # attempts before.
        eventually(lambda: seen and not seen[-1], 30, "health NOT_SERVING while compute is frozen")
        time.sleep(12)
    finally:
        stack.computes[0].signal(signal.SIGCONT)
    eventually(lambda: seen and seen[-1], 30, "health SERVING again after the thaw")
    stop.set()
    poller.join()
    final = tracker.finish()
    assert_all_succeeded_once(final, expected)
    timeouts = [j for j in final.values() if any(a.error is not None for a in j.attempts)]
    assert not timeouts, (
        f"{len(timeouts)} jobs had an attempt burnt by the freeze, e.g. {timeouts[0].attempts}"
        if timeouts
        else ""
    )
    assert_queue_drained(client)
    stack.assert_healthy()


def test_sigstop_nats_under_load(new_stack: Callable[..., Stack]) -> None:
    # A frozen broker: every NATS call hangs until its own deadline. Nothing
    # acknowledged may be lost or doubled, and watchers ride it out.
    import signal

    stack = fault_stack(new_stack)
    client = stack.client()
    expected = submit(client, 1000, "freeze-nats")
    tracker = Tracker(stack.client(), list(expected))
    tracker.start()
    tracker.wait_done(100)
    assert stack.nats is not None
    stack.nats.signal(signal.SIGSTOP)
    try:
        time.sleep(8)
    finally:
        stack.nats.signal(signal.SIGCONT)
    assert_all_succeeded_once(tracker.finish(), expected)
    assert_queue_drained(client)
    assert_broker_clean(stack.nats_url)
    stack.assert_healthy()


def test_orchestrator_started_before_its_broker(new_stack: Callable[..., Stack]) -> None:
    # The normal case in a compose or Kubernetes start order: the
    # orchestrator must wait for NATS (NOT_SERVING meanwhile), not exit.
    stack = fault_stack(new_stack)
    assert stack.nats is not None
    stack.orchestrators[0].kill()
    stack.nats.kill()
    orch = stack.orchestrators[0]
    orch.start(wait=False)
    eventually(
        lambda: orch.running and _health_answers(orch.address),
        30,
        "the orchestrator to answer health checks without NATS",
    )
    time.sleep(2)
    assert orch.running, f"the orchestrator exited without NATS; log:\n{orch.log_tail()}"
    assert not check_address(orch.address, timeout=2.0), "SERVING without NATS"
    client = stack.client(retry=tandem.RetryPolicy(max_attempts=1))
    with pytest.raises(tandem.Unavailable) as info:
        client.submit("hash.sha256", b"early")
    assert info.value.reason == "BROKER_UNAVAILABLE"
    stack.nats.start()
    eventually(lambda: check_address(orch.address, timeout=2.0), 60, "SERVING once NATS is up")
    assert (
        stack.client().submit("hash.sha256", b"late").result(timeout=60)
        == hashlib.sha256(b"late").digest()
    )


def _health_answers(address: str) -> bool:
    """The health service answers at all (SERVING or NOT_SERVING)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        try:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return True
        except grpc.RpcError as e:
            return e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_waiting_callers_ride_out_a_broker_restart(new_stack: Callable[..., Stack]) -> None:
    # result() and watch() callers whose timeouts are minutes away must not
    # see a 2 s broker restart.
    from harness import sleep_params

    stack = fault_stack(new_stack)
    client = stack.client()
    steps = [tandem.Step("debug.sleep", sleep_params(client, 3000)), tandem.Step("hash.sha256")]
    handles = [client.submit(steps, f"ride {i}".encode()) for i in range(4)]
    results: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def wait_one(h: tandem.JobHandle) -> None:
        try:
            results[h.id] = h.result(timeout=WAIT)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=wait_one, args=(h,), daemon=True) for h in handles]
    for t in threads:
        t.start()
    tracker = Tracker(stack.client(), [h.id for h in handles])
    tracker.start()
    eventually(
        lambda: any(client.get(h.id).state is tandem.JobState.RUNNING for h in handles),
        20,
        "a job to run",
    )
    assert stack.nats is not None
    stack.nats.kill()
    time.sleep(2)
    stack.nats.start()
    for t in threads:
        t.join(WAIT + 10)
    assert not errors, f"a waiting caller saw the broker restart: {errors[0]!r}"
    for i, h in enumerate(handles):
        assert results[h.id] == hashlib.sha256(f"ride {i}".encode()).digest()
    final = tracker.finish()
    assert {j.state for j in final.values()} == {tandem.JobState.SUCCEEDED}

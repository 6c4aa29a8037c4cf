"""Op workers end to end: real `tandem worker workers_fixture:worker`
processes (tests/workers_fixture) beside the Rust compute ops, against real
nats-server, compute and orchestrator processes.

One module stack with one process-pool worker serves the tests that kill
nothing (each test that adds a worker stops it again); the fault tests
(`slow`) get a private stack. Every wait is bounded and waits for a signal:
a job state, a progress report, a worker appearing in ListWorkers, a pid
disappearing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tandem
from conftest import _ACTIVE
from harness import Stack, eventually, make_stack
from tandem._stack import Process

pytestmark = pytest.mark.timeout(240)

TESTS = Path(__file__).resolve().parent
FIXTURE = "workers_fixture:worker"
WAIT = 120.0
#: Heartbeat interval of the test workers: a worker is lost after 5 of them.
INTERVAL = 0.2

QUEUES = """
[[queue]]
name = "default"
max_attempts = 5
backoff_base = "100ms"
backoff_cap = "500ms"
job_timeout = "60s"
max_workers = 8

# Enough attempts that a retry routed to a frozen worker again and again
# cannot use them up (the queue group picks a worker at random).
[[queue]]
name = "patient"
max_attempts = 40
backoff_base = "50ms"
backoff_cap = "100ms"
job_timeout = "60s"
"""


class Workers:
    """The `tandem worker` processes of one stack; on a test failure their
    logs join the report (conftest calls ``logs()``)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = stack.client()
        self.procs: list[Process] = []

    def start(
        self,
        worker_id: str,
        *args: str,
        target: str = FIXTURE,
        wait: bool = True,
        interval: float = INTERVAL,
    ) -> Process:
        argv = [
            sys.executable,
            "-m",
            "tandem.cli",
            "worker",
            target,
            "--nats-url",
            self.stack.nats_url,
            "--id",
            worker_id,
            "--heartbeat-interval",
            str(interval),
            "--cancel-grace",
            "1",
            *args,
        ]
        p = Process(
            f"worker-{worker_id}",
            argv,
            log_path=self.stack.tmp / f"logs/worker-{worker_id}.log",
            env={"PYTHONPATH": str(TESTS)},
            ready=lambda: self.live(worker_id) is not None,
            ready_timeout=60.0,
            group=True,  # SIGKILL reaches its pool processes too
        )
        self.procs.append(p)
        p.start(wait=wait)
        return p

    def live(self, worker_id: str) -> tandem.WorkerInfo | None:
        return next((w for w in self.client.workers() if w.id == worker_id), None)

    def logs(self) -> list[tuple[str, str]]:
        return [(f"{self.stack.name}: {p.name}", p.log_tail(80)) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.stop(timeout=40.0)


@dataclass
class Env:
    stack: Stack
    workers: Workers
    client: tandem.Client


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    stack = make_stack(tmp_path_factory.mktemp("workers"), name="workers", queues_toml=QUEUES)
    _ACTIVE.append(stack)
    workers: Workers | None = None
    try:
        stack.start()
        workers = Workers(stack)
        _ACTIVE.append(workers)  # type: ignore[arg-type]
        workers.start("shared", "--concurrency", "2")
        yield Env(stack, workers, stack.client())
    finally:
        if workers is not None:
            workers.stop()
            _ACTIVE.remove(workers)  # type: ignore[arg-type]
        stack.stop()
        _ACTIVE.remove(stack)


@pytest.fixture
def private(new_stack: Callable[..., Stack]) -> Iterator[Workers]:
    """A private stack (for tests that kill or freeze things) and its workers."""
    stack = new_stack(queues_toml=QUEUES)
    workers = Workers(stack)
    _ACTIVE.append(workers)  # type: ignore[arg-type]
    try:
        yield workers
    finally:
        workers.stop()
        _ACTIVE.remove(workers)  # type: ignore[arg-type]


def final(client: tandem.Client, job_id: str, timeout: float = WAIT) -> tandem.Job:
    return client.wait([job_id], timeout=timeout)[job_id]


def wait_for_progress(
    client: tandem.Client, job_id: str, pred: Callable[[tandem.Progress], bool]
) -> tandem.Job:
    """The first record of the job whose progress satisfies ``pred``."""
    for job in client.watch([job_id], timeout=60):
        if job.progress is not None and job.state is tandem.JobState.RUNNING and pred(job.progress):
            return job
        assert not job.done, f"job ended before the progress looked for: {job}"
    raise AssertionError("watch ended")


def pid_of(progress: tandem.Progress) -> int:
    return int(progress.message.split()[1])


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def successful_attempts(job: tandem.Job) -> int:
    return sum(1 for a in job.attempts if a.error is None and a.finished_at is not None)


# ---------------------------------------------------------------- catalogue and data


def test_ops_are_registered_with_their_schema(env: Env) -> None:
    ops = env.client.ops()
    spec = ops.get("fixture.params")
    assert spec is not None and spec.provider == "worker" and spec.live_workers >= 1
    params = {p.name: p for p in spec.params}
    assert (params["level"].type, params["level"].min, params["level"].max) == ("int", 1, 9)
    assert params["level"].default == "5" and not params["level"].required
    assert params["mode"].type == "enum" and params["mode"].choices == ["fast", "small"]
    assert params["flag"].type == "bool" and params["flag"].default == "false"
    assert params["label"].type == "string" and params["label"].max == 8
    assert params["label"].description == "a short label"
    assert spec.description == "Echoes its parsed params as JSON (types included)."
    gunzip = ops.get("fixture.gunzip_upper")
    assert gunzip is not None and gunzip.version == "1"
    assert gunzip.output_content_type == "text/plain"
    compute = ops.get("hash.sha256")
    assert compute is not None and compute.provider == "compute"
    info = env.workers.live("shared")
    assert info is not None and info.pool == "process" and info.concurrency == 2
    assert info.pid == env.workers.procs[0].pid
    assert {o.name for o in info.ops} >= {"fixture.gunzip_upper", "fixture.sleep"}


def test_mixed_pipeline_rust_python_rust(env: Env) -> None:
    data = b"".join(f"line {i} of a tandem test\n".encode() for i in range(2000))
    steps = [
        tandem.Step("compress.gzip", level=9),
        tandem.Step("fixture.gunzip_upper"),
        tandem.Step("hash.sha256"),
    ]
    digest = env.client.submit(steps, data).result(timeout=WAIT)
    assert digest == hashlib.sha256(data.upper()).digest()
    from tandem import local

    if local.available():
        zipped = local.run([tandem.Step("compress.gzip", level=9)], data)
        assert digest == local.run("hash.sha256", gzip.decompress(zipped).upper())
    # A Python step's output is the job's result, with the op's content type.
    job = env.client.submit(steps[:2], data).wait(timeout=WAIT)
    assert job.result == data.upper() and job.result_content_type == "text/plain"


def test_async_and_sync_ops(env: Env) -> None:
    job = env.client.submit(tandem.Step("fixture.upper_async", repeat=2), b"abc").wait(WAIT)
    assert job.state is tandem.JobState.SUCCEEDED and job.result == b"ABCABC"
    out = env.client.submit(
        tandem.Step("fixture.params", level=3, mode="small", flag=True, label="ok", count=-7),
        b"",
    ).result(timeout=WAIT)
    assert json.loads(out) == {
        "level": 3,
        "mode": "small",
        "flag": True,
        "label": "ok",
        "count": -7,
        "types": ["int", "str", "bool", "str"],
    }
    defaults = json.loads(env.client.submit("fixture.params", b"").result(timeout=WAIT))
    assert (defaults["level"], defaults["mode"], defaults["count"]) == (5, "fast", None)


@pytest.mark.parametrize(
    ("params", "reason", "param"),
    [
        ({"level": "30"}, "PARAM_OUT_OF_RANGE", "level"),
        ({"level": "three"}, "PARAM_INVALID", "level"),
        ({"mode": "medium"}, "PARAM_INVALID", "mode"),
        ({"flag": "yes"}, "PARAM_INVALID", "flag"),
        ({"label": "nine char"}, "PARAM_OUT_OF_RANGE", "label"),
        ({"colour": "red"}, "PARAM_INVALID", "colour"),
    ],
)
def test_params_are_rejected_at_submit_by_the_registered_schema(
    env: Env, params: dict[str, str], reason: str, param: str
) -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        env.client.submit(tandem.Step("fixture.params", params), b"")
    assert info.value.reason == reason
    assert info.value.metadata.get("param") == param


def test_large_payload_through_a_python_step(env: Env) -> None:
    data = os.urandom(50 << 20)
    job = env.client.submit("fixture.reverse", data).wait(timeout=WAIT)
    assert job.state is tandem.JobState.SUCCEEDED, job.last_error
    assert job.result_size == len(data) and job.result == data[::-1]


# ---------------------------------------------------------------- errors


def test_permanent_error_fails_at_once(env: Env) -> None:
    job = final(env.client, env.client.submit("fixture.fail", b"x").id)
    assert job.state is tandem.JobState.FAILED and job.attempt == 1
    err = job.last_error
    assert err is not None and err.reason == "OP_FAILED" and not err.retryable
    assert err.message == "PermanentError: the input is no good"
    assert err.metadata.get("why") == "fixture" and err.metadata.get("op") == "fixture.fail"


def test_retryable_errors_are_retried(env: Env) -> None:
    c = env.client
    dead = c.submit(tandem.Step("fixture.fail", mode="retryable"), b"x", max_attempts=3)
    flaky = c.submit(tandem.Step("fixture.fail", mode="retryable", until_attempt=2), b"flaky")
    crash = c.submit(tandem.Step("fixture.fail", mode="crash", until_attempt=1), b"crash")
    jobs = c.wait([dead.id, flaky.id, crash.id], timeout=WAIT)

    d = jobs[dead.id]
    assert d.state is tandem.JobState.DEAD and d.attempt == 3
    assert [a.error.reason for a in d.attempts if a.error] == ["OP_ERROR"] * 3
    assert d.attempts[0].error is not None
    assert d.attempts[0].error.message == "RetryableError: flaky dependency (attempt 1)"

    f = jobs[flaky.id]
    assert f.state is tandem.JobState.SUCCEEDED and f.attempt == 3 and f.result == b"flaky"
    assert [a.error.reason if a.error else None for a in f.attempts] == [
        "OP_ERROR",
        "OP_ERROR",
        None,
    ]

    k = jobs[crash.id]
    assert k.state is tandem.JobState.SUCCEEDED and k.attempt == 2
    assert k.attempts[0].error is not None
    assert k.attempts[0].error.message == "KeyError: 'no such thing'"


# ---------------------------------------------------------------- progress and cancel


def test_progress_is_seen_by_a_watcher_and_the_cli(env: Env) -> None:
    handle = env.client.submit(tandem.Step("fixture.sleep", ms=120_000), b"zz")
    job = wait_for_progress(env.client, handle.id, lambda p: "sleeping" in p.message)
    assert job.progress is not None and 0 <= job.progress.fraction < 1 and job.progress.step == 0
    cli = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "get", handle.id],
        env={**os.environ, "TANDEM_ADDRESS": env.stack.address},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0 and "progress: step 0" in cli.stdout, cli.stdout + cli.stderr
    # The op looks at ctx.cancelled: a cancel ends it well within the grace.
    handle.cancel()
    assert final(env.client, handle.id).state is tandem.JobState.CANCELLED
    eventually(
        lambda: (w := env.workers.live("shared")) is not None and w.in_flight == 0,
        30,
        "the worker to finish the cancelled step",
    )


def test_cancel_stops_a_gil_holding_process_op(env: Env) -> None:
    handle = env.client.submit(tandem.Step("fixture.spin", seconds=300), b"")
    job = wait_for_progress(env.client, handle.id, lambda p: p.message.startswith("pid "))
    assert job.progress is not None
    pid = pid_of(job.progress)
    worker_pid = env.workers.procs[0].pid
    assert alive(pid) and pid != worker_pid
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[2]) == worker_pid, "the op does not run in a pool process of the worker"
    # Heartbeats go on while the child holds its GIL: the step stays attempt 1.
    handle.cancel()
    done = final(env.client, handle.id)
    assert done.state is tandem.JobState.CANCELLED and done.attempt == 1
    # --cancel-grace 1: the busy loop ignores the flag, so the worker
    # terminates the process, reaps it and starts a fresh one.
    eventually(lambda: not alive(pid), 30, f"pool process {pid} to be stopped")
    log = env.workers.procs[0].log_text()
    assert "stopping the step's pool process" in log
    eventually(
        lambda: "pool process started" in env.workers.procs[0].log_text(),
        60,
        "a fresh pool process",
    )
    # The pool is whole again: two steps at once still run.
    handles = [env.client.submit(tandem.Step("fixture.sleep", ms=10), b"%d" % i) for i in range(4)]
    results = env.client.wait([h.id for h in handles], timeout=WAIT)
    assert all(j.state is tandem.JobState.SUCCEEDED for j in results.values())


def test_cancel_abandons_a_thread_that_ignores_it(env: Env) -> None:
    c, workers = env.client, env.workers
    p = workers.start("threads", "--pool", "thread", target="workers_fixture:threads")
    try:
        handle = c.submit(tandem.Step("fixture_threads.block", seconds=120), b"")
        wait_for_progress(c, handle.id, lambda pr: pr.message == "blocking")
        handle.cancel()
        assert final(c, handle.id).state is tandem.JobState.CANCELLED
        # A thread cannot be killed: after the grace the step is answered,
        # the thread left to finish, and the log says so.
        eventually(lambda: "a thread cannot be stopped" in p.log_text(), 30, "the abandon")
        eventually(
            lambda: (w := workers.live("threads")) is not None and w.in_flight == 0,
            30,
            "the abandoned step to leave the count",
        )
        job = c.submit(tandem.Step("fixture_threads.block", seconds=1), b"next").wait(WAIT)
        assert job.state is tandem.JobState.SUCCEEDED and job.result == b"next"
    finally:
        # Exits 0 although the abandoned thread still sleeps.
        assert p.terminate(timeout=40) == 0


def test_a_full_worker_answers_overloaded_and_the_attempt_does_not_count(env: Env) -> None:
    c, workers = env.client, env.workers
    p = workers.start(
        "busy",
        "--pool",
        "thread",
        "--concurrency",
        "1",
        "--backlog",
        "0",
        target="workers_fixture:threads",
    )
    try:
        handles = [
            c.submit(tandem.Step("fixture_threads.block", seconds=1), b"%d" % i) for i in range(3)
        ]
        done = c.wait([h.id for h in handles], timeout=WAIT)
        for i, h in enumerate(handles):
            job = done[h.id]
            assert job.state is tandem.JobState.SUCCEEDED and job.result == b"%d" % i
            assert job.attempt == 1 and [a.error for a in job.attempts] == [None], job.attempts
        if not env.stack.external:  # the orchestrator says why it handed jobs back
            log = env.stack.orchestrators[0].log_text()
            assert "worker busy is busy (1 running, 0 waiting)" in log
    finally:
        assert p.terminate(timeout=40) == 0


def test_a_long_step_that_heartbeats_is_not_redelivered(env: Env) -> None:
    # 3 s is 15 heartbeat intervals: without heartbeats it would be lost
    # after 5 of them.
    job = final(env.client, env.client.submit(tandem.Step("fixture.sleep", ms=3000), b"x").id)
    assert job.state is tandem.JobState.SUCCEEDED and job.result == b"x"
    assert job.attempt == 1 and len(job.attempts) == 1 and job.attempts[0].error is None


# ---------------------------------------------------------------- availability


def test_jobs_wait_while_no_worker_serves_their_op(env: Env) -> None:
    c, workers = env.client, env.workers
    # Register the op once, then stop its only worker.
    p = workers.start("other", target="workers_fixture:other")
    assert p.terminate(timeout=40) == 0
    eventually(
        lambda: (op := c.ops().get("fixture_other.echo")) is not None and op.live_workers == 0,
        30,
        "the op to have no live worker",
    )
    payloads = [f"wait-{i}-{uuid.uuid4().hex}".encode() for i in range(3)]
    handles = [c.submit("fixture_other.echo", pl) for pl in payloads]
    # Each job is offered, finds no worker and goes back uncounted (an
    # attempt this short writes nothing, so the orchestrator's log is where
    # the offer shows).
    log = env.stack.orchestrators[0].log_path

    def handed_back() -> set[str]:
        ids: set[str] = set()
        for line in log.read_text(errors="replace").splitlines():
            if (
                '"job handed back; the attempt does not count"' in line
                and '"OP_UNAVAILABLE' in line
            ):
                ids.update(h.id for h in handles if h.id in line)
        return ids

    eventually(
        lambda: handed_back() == {h.id for h in handles},
        60,
        "every job to be offered and handed back",
    )
    for h in handles:
        job = c.get(h.id)
        assert job.state in (
            tandem.JobState.QUEUED,
            tandem.JobState.RETRYING,
            tandem.JobState.RUNNING,
        )
        assert not [a for a in job.attempts if a.error is not None], job.attempts
        assert job.last_error is None
    workers.start("other-2", target="workers_fixture:other")
    try:
        done = c.wait([h.id for h in handles], timeout=WAIT)
        for h, pl in zip(handles, payloads):
            job = done[h.id]
            assert job.state is tandem.JobState.SUCCEEDED and job.result == pl
            assert job.attempt == 1 and len(job.attempts) == 1
    finally:
        assert workers.procs[-1].terminate(timeout=40) == 0


def test_two_workers_share_the_load(env: Env) -> None:
    c, workers = env.client, env.workers
    before = {w.id: w.succeeded for w in c.workers()}
    second = workers.start("second", "--pool", "thread", "--concurrency", "2")
    try:
        n = 40
        handles = [c.submit(tandem.Step("fixture.sleep", ms=50), b"%d" % i) for i in range(n)]
        done = c.wait([h.id for h in handles], timeout=WAIT)
        assert all(j.state is tandem.JobState.SUCCEEDED for j in done.values())

        def counts() -> dict[str, int] | None:
            now = {w.id: w.succeeded - before.get(w.id, 0) for w in c.workers()}
            return now if sum(now.values()) >= n else None

        ran = eventually(counts, 30, "both workers' counts to reach the jobs")
        assert ran["shared"] > 0 and ran["second"] > 0, ran
        assert (w := workers.live("second")) is not None and w.pool == "thread"
    finally:
        assert second.terminate(timeout=40) == 0


def test_sigterm_drains_a_worker_and_loses_nothing(env: Env) -> None:
    c, workers = env.client, env.workers
    drainer = workers.start("drainer", "--concurrency", "2")
    handles = [c.submit(tandem.Step("fixture.sleep", ms=600), b"%d" % i) for i in range(12)]
    eventually(
        lambda: (w := workers.live("drainer")) is not None and w.in_flight > 0,
        60,
        "the draining worker to run steps",
    )
    assert drainer.terminate(timeout=60) == 0
    log = drainer.log_text()
    assert "draining" in log and '"msg": "drained"' in log
    drained = json.loads(next(line for line in log.splitlines() if '"msg": "drained"' in line))
    assert drained["succeeded"] > 0  # it finished what it had started
    done = c.wait([h.id for h in handles], timeout=WAIT)
    for i, h in enumerate(handles):
        job = done[h.id]
        assert job.state is tandem.JobState.SUCCEEDED and job.result == b"%d" % i
        assert job.attempt == 1 and [a.error for a in job.attempts] == [None], job.attempts


def test_cli_lists_workers_and_worker_ops(env: Env) -> None:
    run_env = {**os.environ, "TANDEM_ADDRESS": env.stack.address}
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "workers", "--json"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = {w["id"]: w for w in json.loads(out.stdout)["workers"]}
    assert "fixture.sleep" in listed["shared"]["ops"] and listed["shared"]["pool"] == "process"
    ops = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "ops"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ops.returncode == 0, ops.stderr
    line = next(x for x in ops.stdout.splitlines() if "fixture.gunzip_upper" in x)
    assert "worker (1 live)" in line


def test_bad_target_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "worker", "workers_fixture:nothing"],
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "has no 'nothing'" in out.stderr


# ---------------------------------------------------------------- faults


@pytest.mark.slow
def test_a_frozen_worker_is_lost_and_its_step_retried(private: Workers) -> None:
    private.stack.require_process_control()
    c = private.client
    frozen = private.start("frozen")
    handle = c.submit(tandem.Step("fixture.sleep", ms=2000), b"frozen")
    wait_for_progress(c, handle.id, lambda p: p.message.startswith("pid "))
    private.start("healthy")
    frozen.signal(signal.SIGSTOP)
    try:
        job = final(c, handle.id)
    finally:
        frozen.signal(signal.SIGCONT)
    assert job.state is tandem.JobState.SUCCEEDED and job.result == b"frozen"
    # The step cut off by the freeze costs its attempt (WORKER_LOST); a retry
    # the queue group hands to the frozen worker again is never accepted
    # there, so it is taken back uncounted: exactly two attempts.
    assert len(job.attempts) == 2, job.attempts
    first = job.attempts[0].error
    assert first is not None and first.reason == "WORKER_LOST", job.attempts
    assert job.attempts[-1].error is None and successful_attempts(job) == 1


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_run_loses_nothing(private: Workers) -> None:
    private.stack.require_process_control()
    c = private.client
    victim = private.start("victim", "--concurrency", "2", "--backlog", "2")
    private.start("survivor", "--concurrency", "2", "--backlog", "2")
    n = 300
    payloads = [f"kill/{i}/{uuid.uuid4().hex}".encode() * 4 for i in range(n)]
    steps = [tandem.Step("fixture.sleep", ms=20), tandem.Step("hash.sha256")]
    results = c.submit_many(
        [tandem.JobSpec(steps, p, idempotency_key=f"k{i}") for i, p in enumerate(payloads)]
    )
    handles = [r for r in results if isinstance(r, tandem.JobHandle)]
    assert len(handles) == n
    expected = {h.id: hashlib.sha256(p).digest() for h, p in zip(handles, payloads)}
    eventually(
        lambda: (w := private.live("victim")) is not None and w.succeeded >= 30,
        WAIT,
        "the victim to have run 30 steps",
    )
    victim.kill()
    ran = sum(w.succeeded for w in c.workers())
    assert ran < n, "every job finished before the kill"
    print(f"SIGKILL after about {ran}/{n} steps")
    done = c.wait(list(expected), timeout=WAIT * 2)
    states = {j.state.name for j in done.values()}
    assert states == {"SUCCEEDED"}, states
    wrong = [i for i, j in done.items() if j.result != expected[i]]
    assert not wrong, f"{len(wrong)} wrong results"
    twice = [j.id for j in done.values() if successful_attempts(j) != 1]
    assert not twice, f"{len(twice)} jobs without exactly one successful attempt"
    lost = [a.error.reason for j in done.values() for a in j.attempts if a.error]
    assert set(lost) <= {"WORKER_LOST"}, set(lost)


@pytest.mark.slow
def test_a_worker_rides_out_a_nats_restart(private: Workers) -> None:
    private.stack.require_process_control()
    c = private.client
    worker = private.start("rider")
    assert c.submit("fixture.upper_async", b"before").result(timeout=WAIT) == b"BEFORE"
    assert private.stack.nats is not None
    private.stack.nats.restart()
    eventually(lambda: "reconnected to NATS" in worker.log_text(), 60, "the worker to reconnect")
    assert worker.running
    job = c.submit("fixture.upper_async", b"after").wait(timeout=WAIT)
    assert job.state is tandem.JobState.SUCCEEDED and job.result == b"AFTER"


def test_tandem_top_once_and_tandem_jobs(env: Env) -> None:
    """`tandem top --once` and `tandem jobs` as a person runs them: the CLI in
    a process of its own, against the stack with a live op worker."""
    key, value = "run", uuid.uuid4().hex[:12]
    job = env.client.submit("hash.sha256", b"top", labels={key: value}).wait(timeout=WAIT)
    assert job.state is tandem.JobState.SUCCEEDED

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tandem.cli", "--address", env.stack.address, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    env.client.pause_queue("patient")
    try:
        top = cli("top", "--once")
        assert top.returncode == 0, top.stderr
        rows = {line.split("│")[1].strip(): line for line in top.stdout.splitlines() if "│" in line}
        assert env.stack.address in top.stdout and "shared" in rows, top.stdout
        assert "paused" in rows["patient"] and "paused" not in rows["default"], top.stdout
        assert "fixture.gunzip_upper" in rows["shared"], top.stdout
        frame = json.loads(cli("top", "--once", "--json").stdout)
    finally:
        env.client.resume_queue("patient")
    queues = {q["name"]: q for q in frame["queues"]}
    assert queues["patient"]["paused"] and not queues["default"]["paused"]
    assert [w["id"] for w in frame["workers"]] == ["shared"] and frame["error"] is None

    found = cli("jobs", "--label", f"{key}={value}", "--state", "succeeded", "--json")
    assert found.returncode == 0, found.stderr
    assert [j["id"] for j in json.loads(found.stdout)["jobs"]] == [job.id]
    table = cli("jobs", "-q", "default", "--label", key)
    assert job.id in table.stdout and f"{key}={value}" in table.stdout, table.stdout

"""Drives the Tandem side of one benchmark run (runs in the main venv).

Uses the generated gRPC stubs directly with grpc.aio: SubmitJob (single,
a window of calls in flight) or SubmitJobs (batch), and one WatchJobs
stream on the queue, opened before the first submit, which delivers every
job's terminal state with its result bytes (include_result). Each arrival is
stamped when the stream yields it, the counterpart of the Celery driver's
Redis pub/sub monitor.

Prints one JSON line with "bench_result".
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import workloads  # noqa: E402

try:
    from tandem.v1 import compute_pb2, compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc
except ImportError:  # not installed yet: the generated code is plain Python
    sys.path.insert(0, os.path.join(ROOT, "pyclient", "python"))
    from tandem.v1 import compute_pb2, compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc

import grpc  # noqa: E402
from tandem._errors import from_rpc_error  # noqa: E402

MAX_MSG = 256 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MSG),
    ("grpc.max_receive_message_length", MAX_MSG),
]
LATENCY_WORKLOADS = ("latency", "user-latency")
SHA256_WORKLOADS = ("tiny", "latency", "user-tiny", "user-latency")
TERMINAL = {
    jobs_pb2.JOB_STATE_SUCCEEDED,
    jobs_pb2.JOB_STATE_FAILED,
    jobs_pb2.JOB_STATE_DEAD,
    jobs_pb2.JOB_STATE_CANCELLED,
}


def retryable(e: grpc.RpcError) -> bool:
    """Whether to send again: the error catalogue's word, as for the client's own retries."""
    return from_rpc_error(e).retryable


def declared_params(compute_address: str) -> dict[str, set[str]] | None:
    """op name -> declared param names, from the compute service's ListOps."""
    if not compute_address:
        return None
    with grpc.insecure_channel(compute_address) as ch:
        resp = compute_pb2_grpc.ComputeServiceStub(ch).ListOps(
            compute_pb2.ListOpsRequest(), timeout=10
        )
    return {op.name: {p.name for p in op.params} for op in resp.ops}


def to_proto_steps(steps: list[dict[str, Any]]) -> list[Any]:
    return [compute_pb2.Step(op=s["op"], params=s.get("params", {})) for s in steps]


class Collector:
    """Learns each job's terminal state (with its result bytes).

    Two ways, as a client of Tandem would: WatchJobs on given job ids (a KV
    watch on the server: lossless; what tandem.Client.wait/map use), opened
    for groups of ids as they are submitted; and, for the latency workload,
    WatchJobs on the whole queue (core NATS events: lowest latency, but the
    server drops events when it falls behind), with job-id watches sweeping
    up whatever it missed (counted in "watch_missed").
    """

    GROUP = 256  # ids per job-id watch (throughput runs)
    FLUSH = 0.005  # seconds a partial group waits for more ids

    def __init__(
        self, stub: Any, queue: str, timeout: float, use_queue_watch: bool, group: int = GROUP
    ) -> None:
        self.group_size = group
        self.stub = stub
        self.queue = queue
        self.timeout = timeout
        self.use_queue_watch = use_queue_watch
        self.done: dict[str, tuple[float, Any]] = {}
        self.pending: set[str] = set()
        self.submitted_at: dict[str, float] = {}
        self.all_submitted = False
        self.finished = asyncio.Event()
        self.group: list[str] = []
        self.group_started = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.call: Any = None
        self.error: BaseException | None = None
        self.missed = 0
        self.swept: set[str] = set()

    def record(self, j: Any) -> None:
        if j.id in self.done:
            return
        self.done[j.id] = (time.perf_counter(), j)
        if j.id in self.pending:
            self.pending.discard(j.id)
            if self.all_submitted and not self.pending:
                self.finished.set()

    def spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def start(self) -> None:
        if self.use_queue_watch:
            # With a deadline: the orchestrator (as of this writing) refuses
            # a watch without one ("context requires a deadline").
            self.call = self.stub.WatchJobs(
                jobs_pb2.WatchJobsRequest(queue=self.queue, include_result=True),
                timeout=self.timeout,
            )
            await self.call.initial_metadata()  # sent once the server's subscription is live
            self.spawn(self._read_queue())
            self.spawn(self._sweep())
        self.spawn(self._flusher())

    async def _read_queue(self) -> None:
        try:
            async for ev in self.call:
                if ev.job.state in TERMINAL:
                    self.record(ev.job)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e
                self.finished.set()

    async def _watch_ids(self, ids: list[str]) -> None:
        remaining = {i for i in ids if i not in self.done}
        delay = 0.02
        while remaining:
            try:
                call = self.stub.WatchJobs(
                    jobs_pb2.WatchJobsRequest(job_ids=sorted(remaining), include_result=True),
                    timeout=self.timeout,
                )
                async for ev in call:
                    j = ev.job
                    if j.state in TERMINAL and j.id in remaining:
                        remaining.discard(j.id)
                        self.record(j)
                        if not remaining:
                            break
                call.cancel()
                remaining = {i for i in remaining if i not in self.done}
                if remaining:  # the stream ended early: reopen after a pause
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
            except grpc.aio.AioRpcError as e:
                if not retryable(e) and e.code() != grpc.StatusCode.INTERNAL:
                    self.error = e
                    self.finished.set()
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _flush(self) -> None:
        if self.group:
            ids, self.group = self.group, []
            self.spawn(self._watch_ids(ids))

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH)
            if self.group and time.perf_counter() - self.group_started >= self.FLUSH:
                self._flush()

    async def _sweep(self) -> None:
        """Queue-watch mode: jobs still pending 2 s after their submit are
        fetched through a job-id watch (the queue watch missed them, or they
        are slow; either way the id watch returns them when terminal)."""
        while True:
            await asyncio.sleep(0.5)
            now = time.perf_counter()
            late = [
                i
                for i in self.pending
                if i not in self.swept and now - self.submitted_at.get(i, now) > 2.0
            ]
            if late:
                self.swept.update(late)
                self.missed += len(late)
                for s in range(0, len(late), self.GROUP):
                    self.spawn(self._watch_ids(late[s : s + self.GROUP]))

    def submitted(self, job_id: str) -> None:
        if job_id in self.done:
            return
        self.pending.add(job_id)
        self.submitted_at[job_id] = time.perf_counter()
        if not self.use_queue_watch:
            if not self.group:
                self.group_started = time.perf_counter()
            self.group.append(job_id)
            if len(self.group) >= self.group_size:
                self._flush()

    def mark_all_submitted(self) -> None:
        self._flush()
        self.all_submitted = True
        if not self.pending:
            self.finished.set()

    def reset(self) -> None:
        self.done.clear()
        self.pending.clear()
        self.submitted_at.clear()
        self.swept.clear()
        self.missed = 0
        self.all_submitted = False
        self.finished.clear()

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        for t in list(self.tasks):
            t.cancel()
        for t in list(self.tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass


class Submitter:
    def __init__(self, stub: Any, queue: str, steps: list[Any]) -> None:
        self.stub = stub
        self.queue = queue
        self.steps = steps
        self.retries = 0
        self.rejected: list[str] = []

    def request(self, payload: bytes) -> Any:
        return jobs_pb2.SubmitJobRequest(queue=self.queue, steps=self.steps, payload=payload)

    async def one(self, payload: bytes) -> str:
        req = self.request(payload)
        delay = 0.01
        while True:
            try:
                resp = await self.stub.SubmitJob(req, timeout=60)
                return str(resp.job.id)
            except grpc.aio.AioRpcError as e:
                if not retryable(e):
                    raise
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def many(self, payloads: list[bytes]) -> list[str]:
        """SubmitJobs; items rejected as retryable (queue full) are sent again."""
        ids: list[str | None] = [None] * len(payloads)
        todo = list(range(len(payloads)))
        delay = 0.01
        while todo:
            req = jobs_pb2.SubmitJobsRequest(jobs=[self.request(payloads[i]) for i in todo])
            try:
                resp = await self.stub.SubmitJobs(req, timeout=120)
            except grpc.aio.AioRpcError as e:
                if not retryable(e):
                    raise
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            again = []
            for i, r in zip(todo, resp.results):
                if r.WhichOneof("outcome") == "submitted":
                    ids[i] = r.submitted.job.id
                elif r.error.code in (8, 14):  # RESOURCE_EXHAUSTED (queue full), UNAVAILABLE
                    again.append(i)
                else:
                    self.rejected.append(f"code {r.error.code}: {r.error.message}")
            if again:
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            todo = again
        return [i for i in ids if i is not None]


def verify(
    workload: str, payloads: list[bytes], ids: list[str], done: dict[str, tuple[float, Any]]
) -> tuple[int, str, int]:
    """(errors, note, result bytes): all SUCCEEDED, digests equal for tiny,
    a sample checked for the others (with tandem._native when present)."""
    errors = 0
    note = ""
    result_bytes = 0
    for i, jid in enumerate(ids):
        got = done.get(jid)
        if got is None:
            errors += 1
            note = note or f"job {jid}: no terminal state seen"
            continue
        j = got[1]
        if j.state != jobs_pb2.JOB_STATE_SUCCEEDED:
            errors += 1
            note = note or f"job {jid}: {jobs_pb2.JobState.Name(j.state)}: {j.last_error.message}"
            continue
        res = bytes(j.result)
        result_bytes += len(res)
        if not res and j.result_size:
            note = note or "results not delivered inline by WatchJobs"
            continue
        if workload in SHA256_WORKLOADS:
            d = hashlib.sha256(payloads[i % len(payloads)])
            if res not in (d.digest(), d.hexdigest().encode()):
                errors += 1
                note = note or f"sha256 mismatch: {res[:80]!r}"
        elif i == 0 and workload == "compress":
            try:
                from tandem import _native

                back = _native.run([{"op": "decompress.zstd", "params": {}}], res)
                if back != payloads[0]:
                    errors += 1
                    note = note or "zstd round trip mismatch"
            except ImportError:
                pass
        elif i == 0 and workload == "thumbnails":
            if not (res.startswith(b"\x89PNG") or res[:4] == b"RIFF" or res[:2] == b"\xff\xd8"):
                errors += 1
                note = note or f"thumbnail is not an image: {res[:16]!r}"
        elif i == 0 and workload == "user-thumbnails":
            # The Python op runs Celery's Pillow code: the bytes must be the
            # ones that code makes here (same Pillow, pinned in both venvs).
            import transforms

            kw = workloads.plan()["user-thumbnails"].celery_kwargs
            if res != transforms.pillow_thumbnail(payloads[0], **kw):
                errors += 1
                note = note or f"Pillow thumbnail differs from bench/transforms.py's: {res[:16]!r}"
    return errors, note, result_bytes


async def run(args: argparse.Namespace) -> dict[str, Any]:
    source = workloads.input_set(args.workload)
    is_latency = args.workload in LATENCY_WORKLOADS
    _, payloads = workloads.load_workload(args.data, source)
    if args.limit:
        payloads = payloads[: args.limit]
    spec = workloads.plan()[workloads.throughput_spec(args.workload)]
    # Python ops are the orchestrator's to list (ListOps there has both the
    # compute service's ops and the live op workers').
    user = args.workload in workloads.USER_WORKLOADS
    ops_at = args.address if user else args.compute_address
    steps = workloads.resolve_steps(spec.steps_as_dicts(), declared_params(ops_at))
    pb_steps = to_proto_steps(steps)

    ch = grpc.aio.insecure_channel(args.address, options=CHANNEL_OPTIONS)
    stub = jobs_pb2_grpc.JobServiceStub(ch)
    sub = Submitter(stub, args.queue, pb_steps)
    col = Collector(
        stub,
        args.queue,
        args.timeout + 300,
        use_queue_watch=args.collect == "queue" or (args.collect == "auto" and is_latency),
        group=args.group,
    )
    try:
        await col.start()
        # Warm-up, which also proves the watch stream is live before timing.
        if args.warmup:
            for i in range(args.warmup):
                col.submitted(await sub.one(payloads[i % len(payloads)]))
            col.mark_all_submitted()
            try:
                await asyncio.wait_for(col.finished.wait(), 60)
            except asyncio.TimeoutError:
                raise SystemExit(
                    "tandem warm-up: WatchJobs delivered no terminal state within 60s"
                ) from None
            if col.error:
                raise SystemExit(f"tandem warm-up: WatchJobs failed: {col.error}")
            col.reset()
            sub.retries = 0

        ids: list[str] = []
        sends: list[float] = []
        lag_max = 0.0
        if is_latency:
            n = args.count
            sched = workloads.poisson_schedule(args.rate, n)
            ids = [""] * n
            sends = [0.0] * n
            inflight: set[asyncio.Task[None]] = set()

            async def send(i: int) -> None:
                jid = await sub.one(payloads[i % len(payloads)])
                ids[i] = jid
                col.submitted(jid)

            t0 = time.perf_counter() + 0.05
            for i, off in enumerate(sched):
                due = t0 + off
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    lag_max = max(lag_max, now - due)
                sends[i] = due  # from the intended send time: no coordinated omission
                t = asyncio.create_task(send(i))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.gather(*inflight)
            submit_done = time.perf_counter()
        else:
            n = len(payloads)
            if args.start_at:  # concurrent clients (run.py --clients) start together
                await asyncio.sleep(max(0.0, args.start_at - time.perf_counter()))
            t0 = time.perf_counter()
            if args.submit == "single":
                ids = [""] * n
                it = iter(range(n))

                async def worker() -> None:
                    for i in it:
                        jid = await sub.one(payloads[i])
                        ids[i] = jid
                        col.submitted(jid)

                await asyncio.gather(*(worker() for _ in range(args.window)))
            else:
                chunks = [
                    list(range(s, min(n, s + args.batch_size)))
                    for s in range(0, n, args.batch_size)
                ]
                cit = iter(chunks)
                ids = [""] * n

                async def bworker() -> None:
                    for chunk in cit:
                        got = await sub.many([payloads[i] for i in chunk])
                        if len(got) != len(chunk):
                            raise SystemExit(
                                f"tandem batch submit rejected items: {sub.rejected[:3]}"
                            )
                        for i, jid in zip(chunk, got):
                            ids[i] = jid
                            col.submitted(jid)

                await asyncio.gather(*(bworker() for _ in range(args.batch_window)))
            submit_done = time.perf_counter()
        col.mark_all_submitted()
        timed_out = False
        try:
            await asyncio.wait_for(col.finished.wait(), args.timeout)
        except asyncio.TimeoutError:
            timed_out = True
        t_end = time.perf_counter()
        if not timed_out and col.error is None:
            t_end = max(col.done[j][0] for j in ids)
        done = dict(col.done)
    finally:
        await col.close()
        await ch.close()

    errors, note, result_bytes = verify(args.workload, payloads, ids, done)
    if col.error is not None:
        note = f"WatchJobs failed: {col.error}; " + note
    out: dict[str, Any] = {
        "bench_result": 1,
        "driver": "tandem",
        "workload": args.workload,
        "submit": args.submit,
        "jobs": n,
        "errors": errors,
        "note": note,
        "timed_out": timed_out,
        "submit_retries": sub.retries,
        "watch_missed": col.missed,
        "submit_seconds": submit_done - t0,
        "elapsed_seconds": t_end - t0,
        # perf_counter is CLOCK_MONOTONIC: comparable across processes (run.py --clients)
        "t0": t0,
        "t_end": t_end,
        "result_bytes": result_bytes,
        "input_bytes": sum(len(payloads[i % len(payloads)]) for i in range(n)),
        "steps": steps,
    }
    if is_latency:
        out.update(
            {
                "rate": args.rate,
                "send_lag_max": lag_max,
                "latencies": [done[j][0] - sends[i] for i, j in enumerate(ids) if j in done],
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="orchestrator host:port")
    ap.add_argument(
        "--compute-address", default="", help="compute host:port (ListOps, for param names)"
    )
    ap.add_argument("--queue", default="bench")
    ap.add_argument("--data", required=True)
    ap.add_argument(
        "--workload",
        required=True,
        choices=["tiny", "thumbnails", "compress", "latency", *workloads.USER_WORKLOADS],
    )
    ap.add_argument("--submit", default="single", choices=["single", "batch"])
    ap.add_argument("--window", type=int, default=64, help="single submits in flight")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--batch-window", type=int, default=2, help="batch submits in flight")
    ap.add_argument("--group", type=int, default=Collector.GROUP, help="ids per job-id watch")
    ap.add_argument(
        "--collect",
        choices=["auto", "ids", "queue"],
        default="auto",
        help="how results are learnt: job-id watches, or the queue watch with an id-watch sweep "
        "(auto: queue for latency, ids otherwise)",
    )
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N inputs")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--start-at",
        type=float,
        default=0.0,
        help="time.perf_counter() to start the timed part at (concurrent clients)",
    )
    args = ap.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

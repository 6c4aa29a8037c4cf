"""Drives the taskiq side of one benchmark run (bench venv).

Submits with taskiq's own client (``task.kiq``: one JetStream publish each,
acknowledged by the server) and learns each result as the result backend
stores it: taskiq-nats' Object Store backend publishes the result's chunks
on ``$O.<bucket>.C.<nuid>`` and then its meta on ``$O.<bucket>.M.<name>``;
one core NATS subscription on ``$O.<bucket>.>`` sees both, stamps the meta's
arrival and keeps the bytes (the counterpart of the Celery driver's Redis
pub/sub monitor: cheaper for the client than polling the backend per task).
A result the subscription missed is read from the backend afterwards.

taskiq has no batch submit: "batch" sends 500 kiq calls at once (gathered),
then the next 500; "single" keeps 64 kiq calls in flight, as Tandem's driver.

Prints one JSON line with "bench_result".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import pickle
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


class Monitor:
    """done[task_id] = (arrival time, return value or None, is_err)."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.chunks: dict[str, list[bytes]] = {}
        self.done: dict[str, tuple[float, Any, bool]] = {}
        self.expected = -1
        self.all_done = asyncio.Event()

    async def handler(self, msg: Any) -> None:
        t = time.perf_counter()
        kind = msg.subject.split(".", 3)[2]
        if kind == "C":
            self.chunks.setdefault(msg.subject.rsplit(".", 1)[1], []).append(msg.data)
            return
        if kind != "M":
            return
        meta = json.loads(msg.data)
        data = b"".join(self.chunks.pop(meta.get("nuid", ""), []))
        value: Any = None
        is_err = False
        try:
            res = pickle.loads(data)  # taskiq's PickleSerializer, from our own worker
            value, is_err = res.get("return_value"), bool(res.get("is_err"))
        except Exception:  # noqa: BLE001 - read it from the backend later
            value = None
        self.done[meta["name"]] = (t, value, is_err)
        if 0 <= self.expected <= len(self.done):
            self.all_done.set()

    def expect(self, n: int) -> None:
        self.expected = n
        if len(self.done) >= n:
            self.all_done.set()

    def reset(self) -> None:
        self.done.clear()
        self.expected = -1
        self.all_done.clear()


def check(workload: str, payload: bytes, value: Any) -> str:
    """'' when a result is right, else what is wrong."""
    if workload in ("tiny", "latency"):
        return "" if value == hashlib.sha256(payload).hexdigest() else "sha256 mismatch"
    if workload == "thumbnails":
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(value))) as im:
            if max(im.size) > workloads.THUMB_BOX:
                return f"thumbnail too large: {im.size}"
    return ""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ["BENCH_NATS_URL"] = args.nats_url
    import nats

    import taskiq_app

    source = "tiny" if args.workload == "latency" else args.workload
    _, payloads = workloads.load_workload(args.data, source)
    if args.limit:
        payloads = payloads[: args.limit]
    spec = workloads.plan()[source]
    task = {"bench.sha256": taskiq_app.sha256, "bench.thumbnail": taskiq_app.thumbnail}[
        spec.celery_task
    ]
    kwargs = spec.celery_kwargs
    encoded = [base64.b64encode(p).decode() for p in payloads]

    mon = Monitor(taskiq_app.RESULTS_BUCKET)
    nc = await nats.connect(args.nats_url)
    await nc.subscribe(
        f"$O.{taskiq_app.RESULTS_BUCKET}.>", cb=mon.handler, pending_bytes_limit=1 << 30
    )
    await nc.flush()
    broker = taskiq_app.broker
    await broker.startup()

    async def kick(i: int) -> str:
        t = await task.kiq(encoded[i % len(encoded)], **kwargs)
        return str(t.task_id)

    try:
        if args.warmup:
            warm = [await kick(i) for i in range(args.warmup)]
            mon.expect(len(warm))
            try:
                await asyncio.wait_for(mon.all_done.wait(), 120)
            except asyncio.TimeoutError:
                raise SystemExit("taskiq warm-up: no results within 120s") from None
            mon.reset()

        sends: list[float] = []
        lag_max = 0.0
        if args.workload == "latency":
            n = args.count
            sched = workloads.poisson_schedule(args.rate, n)
            ids = [""] * n
            sends = [0.0] * n
            inflight: set[asyncio.Task[None]] = set()
            mon.expect(n)

            async def send(i: int) -> None:
                ids[i] = await kick(i)

            t0 = time.perf_counter() + 0.05
            for i, off in enumerate(sched):
                due = t0 + off
                now = time.perf_counter()
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    lag_max = max(lag_max, now - due)
                sends[i] = due
                tk = asyncio.create_task(send(i))
                inflight.add(tk)
                tk.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.gather(*inflight)
        else:
            n = len(payloads)
            mon.expect(n)
            ids = [""] * n
            if args.start_at:  # concurrent clients (run.py --clients) start together
                await asyncio.sleep(max(0.0, args.start_at - time.perf_counter()))
            t0 = time.perf_counter()
            if args.submit == "single":
                it = iter(range(n))

                async def worker() -> None:
                    for i in it:
                        ids[i] = await kick(i)

                await asyncio.gather(*(worker() for _ in range(args.window)))
            else:
                for s in range(0, n, args.batch_size):
                    idx = range(s, min(n, s + args.batch_size))
                    kicked = await asyncio.gather(*(kick(i) for i in idx))
                    for i, tid in zip(idx, kicked):
                        ids[i] = tid
        submit_done = time.perf_counter()
        timed_out = False
        deadline = time.perf_counter() + args.timeout
        try:
            await asyncio.wait_for(mon.all_done.wait(), args.timeout)
        except asyncio.TimeoutError:
            timed_out = True
        # The subscription also sees other clients' results (run.py
        # --clients): done when this client's own tasks are all in.
        missing = [t for t in ids if t not in mon.done]
        while not timed_out and missing:
            if time.perf_counter() > deadline:
                timed_out = True
                break
            await asyncio.sleep(0.002)
            missing = [t for t in missing if t not in mon.done]
        t_end = time.perf_counter()
        if not timed_out and all(i in mon.done for i in ids):
            t_end = max(mon.done[i][0] for i in ids)
        done = dict(mon.done)
        # Results whose bytes the subscription did not get: from the backend.
        for i, tid in enumerate(ids):
            if tid in done and done[tid][1] is None:
                r = await taskiq_app.result_backend.get_result(tid)
                done[tid] = (done[tid][0], r.return_value, r.is_err)
    finally:
        await broker.shutdown()
        await nc.close()

    errors = 0
    note = ""
    for i, tid in enumerate(ids):
        got = done.get(tid)
        if got is None:
            errors += 1
            note = note or f"task {tid}: no result"
            continue
        if got[2]:
            errors += 1
            note = note or f"task {tid}: error {got[1]!r:.200}"
            continue
        if args.workload in ("tiny", "latency") or i == 0:
            bad = check(args.workload, payloads[i % len(payloads)], got[1])
            if bad:
                errors += 1
                note = note or bad
    out: dict[str, Any] = {
        "bench_result": 1,
        "driver": "taskiq",
        "workload": args.workload,
        "submit": args.submit,
        "jobs": n,
        "errors": errors,
        "note": note,
        "timed_out": timed_out,
        "submit_seconds": submit_done - t0,
        "elapsed_seconds": t_end - t0,
        # perf_counter is CLOCK_MONOTONIC: comparable across processes (run.py --clients)
        "t0": t0,
        "t_end": t_end,
        "input_bytes": sum(len(payloads[i % len(payloads)]) for i in range(n)),
    }
    if args.workload == "latency":
        out.update(
            {
                "rate": args.rate,
                "send_lag_max": lag_max,
                "latencies": [done[t][0] - sends[i] for i, t in enumerate(ids) if t in done],
            }
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--data", required=True, help="workload cache dir")
    ap.add_argument("--workload", required=True, choices=["tiny", "thumbnails", "latency"])
    ap.add_argument("--submit", default="single", choices=["single", "batch"])
    ap.add_argument("--window", type=int, default=64, help="single: kiq calls in flight")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument(
        "--start-at",
        type=float,
        default=0.0,
        help="time.perf_counter() to start the timed part at (concurrent clients)",
    )
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

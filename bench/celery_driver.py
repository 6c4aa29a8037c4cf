"""Drives the Celery side of one benchmark run (runs in the bench venv).

Submits a workload through Celery's own client (Task.apply_async, or a
group for "batch"), and learns each result the way Celery's Redis result
backend delivers it: the worker stores the result and PUBLISHes it on the
result key's channel. Celery's client subscribes per task; this driver holds
one pattern subscription (celery-task-meta-*) instead, read by a thread that
stamps each arrival. That is cheaper for the client than Celery's own
AsyncResult.get(), so it favours Celery, and it gives an arrival time for
every job, which the latency workload needs.

Prints one JSON line with "bench_result".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402

PREFIX = b"celery-task-meta-"


class ResultMonitor(threading.Thread):
    """Stamps each published task result: done[task_id] = (t, raw meta)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(PREFIX.decode() + "*")
        # Wait for the subscription to be confirmed before anything is sent.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=1.0)
            if msg and msg["type"] == "psubscribe":
                break
        else:
            raise RuntimeError("redis psubscribe not confirmed")
        self.done: dict[str, tuple[float, bytes]] = {}
        self.expected = -1
        self.all_done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        ps = self.pubsub
        done = self.done
        clock = time.perf_counter
        while not self.stop.is_set():
            msg = ps.get_message(timeout=0.05)
            if msg is None or msg["type"] != "pmessage":
                continue
            t = clock()
            done[msg["channel"][len(PREFIX) :].decode()] = (t, msg["data"])
            if 0 <= self.expected <= len(done):
                self.all_done.set()

    def expect(self, n: int) -> None:
        self.expected = n
        if len(self.done) >= n:
            self.all_done.set()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=2)
        self.pubsub.close()


def verify(
    workload: str, payloads: list[bytes], ids: list[str], done: dict[str, tuple[float, bytes]]
) -> tuple[int, str]:
    """(errors, note): every result present and SUCCESS, digests equal for
    tiny, and a sample decoded for the others."""
    import msgpack

    errors = 0
    note = ""
    for i, tid in enumerate(ids):
        got = done.get(tid)
        if got is None:
            errors += 1
            continue
        meta = msgpack.unpackb(got[1], raw=False)
        if meta.get("status") != "SUCCESS":
            errors += 1
            note = note or f"task {tid}: {meta.get('status')} {meta.get('result')!r:.200}"
            continue
        res = meta["result"]
        if workload in ("tiny", "latency"):
            if res != hashlib.sha256(payloads[i % len(payloads)]).hexdigest():
                errors += 1
                note = note or "sha256 mismatch"
        elif i == 0 and workload == "compress":
            import zstandard

            if zstandard.ZstdDecompressor().decompress(res) != payloads[0]:
                errors += 1
                note = note or "zstd round trip mismatch"
        elif i == 0 and workload == "thumbnails":
            from PIL import Image

            with Image.open(io.BytesIO(res)) as im:
                if max(im.size) > workloads.THUMB_BOX:
                    errors += 1
                    note = note or f"thumbnail too large: {im.size}"
    return errors, note


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument(
        "--data", required=True, help="workload cache dir (workloads.py generate --out)"
    )
    ap.add_argument(
        "--workload", required=True, choices=["tiny", "thumbnails", "compress", "latency"]
    )
    ap.add_argument("--submit", default="single", choices=["single", "batch"])
    ap.add_argument("--rate", type=float, default=0.0, help="latency: offered jobs/s")
    ap.add_argument("--count", type=int, default=0, help="latency: jobs to send")
    ap.add_argument("--batch-size", type=int, default=500)
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

    os.environ["BENCH_REDIS_URL"] = args.redis_url
    from celery import group

    from celery_app import app

    # See the module docstring: results are read by ResultMonitor.
    app.backend.on_task_call = lambda producer, task_id: None

    source = "tiny" if args.workload == "latency" else args.workload
    manifest, payloads = workloads.load_workload(args.data, source)
    if args.limit:
        payloads = payloads[: args.limit]
    spec = workloads.plan()[source]
    task = app.tasks[spec.celery_task]
    kwargs = spec.celery_kwargs

    mon = ResultMonitor(args.redis_url)
    mon.start()
    try:
        # Warm-up: worker processes import their libraries, connections open.
        if args.warmup:
            warm = [
                task.apply_async(args=(payloads[i % len(payloads)],), kwargs=kwargs).id
                for i in range(args.warmup)
            ]
            mon.expect(len(warm))
            if not mon.all_done.wait(120):
                raise SystemExit("celery warm-up timed out")
            mon.all_done.clear()
            mon.done.clear()
            mon.expected = -1

        sends: list[float] = []
        lag_max = 0.0
        if args.workload == "latency":
            n = args.count
            sched = workloads.poisson_schedule(args.rate, n)
            mon.expect(n)
            ids = []
            t0 = time.perf_counter() + 0.05
            for i, off in enumerate(sched):
                due = t0 + off
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                else:
                    lag_max = max(lag_max, now - due)
                ids.append(task.apply_async(args=(payloads[i % len(payloads)],), kwargs=kwargs).id)
                sends.append(due)  # latency from the intended send time (no coordinated omission)
            submit_done = time.perf_counter()
        else:
            n = len(payloads)
            mon.expect(n)
            if args.start_at:  # concurrent clients (run.py --clients) start together
                time.sleep(max(0.0, args.start_at - time.perf_counter()))
            t0 = time.perf_counter()
            if args.submit == "single":
                ids = [task.apply_async(args=(p,), kwargs=kwargs).id for p in payloads]
            else:
                ids = []
                for s in range(0, n, args.batch_size):
                    chunk = payloads[s : s + args.batch_size]
                    res = group(task.s(p, **kwargs) for p in chunk).apply_async()
                    ids.extend(r.id for r in res.results)
            submit_done = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        ok = mon.all_done.wait(args.timeout)
        # The pattern subscription also sees other clients' results (run.py
        # --clients): done when this client's own tasks are all in.
        missing = [tid for tid in ids if tid not in mon.done]
        while ok and missing:
            if time.monotonic() > deadline:
                ok = False
                break
            time.sleep(0.002)
            missing = [tid for tid in missing if tid not in mon.done]
        t_end = time.perf_counter()
        if ok and not missing:
            t_end = max(mon.done[tid][0] for tid in ids)
        done = dict(mon.done)
    finally:
        mon.close()

    errors, note = verify(args.workload, payloads, ids, done)
    out: dict[str, Any] = {
        "bench_result": 1,
        "driver": "celery",
        "workload": args.workload,
        "submit": args.submit,
        "jobs": n,
        "errors": errors,
        "note": note,
        "timed_out": not ok,
        "submit_seconds": submit_done - t0,
        "elapsed_seconds": t_end - t0,
        # perf_counter is CLOCK_MONOTONIC: comparable across processes (run.py --clients)
        "t0": t0,
        "t_end": t_end,
        "input_bytes": sum(len(payloads[i % len(payloads)]) for i in range(n)),
    }
    if args.workload == "latency":
        lat = [done[tid][0] - sends[i] for i, tid in enumerate(ids) if tid in done]
        out.update({"rate": args.rate, "latencies": lat, "send_lag_max": lag_max})
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

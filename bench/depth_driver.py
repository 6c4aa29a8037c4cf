"""The depth run of issue 15 (runs in the main venv: tandem + nats-py).

Against one Tandem stack whose orchestrator uses an external nats-server
(--nats-url), so that server's memory and fsyncs are its own:

1. result TTL: a steady load on a queue with a short result_ttl while the
   record bucket's bytes and messages are sampled (bounded, or growing?);
2. baseline: a backlog of --baseline jobs submitted to a paused queue, then
   resumed: the drain rate at a shallow depth;
3. depth: --jobs jobs submitted with AsyncClient.submit_many (batches of
   1,000, auto idempotency keys) to the paused queue, nothing consuming: the
   client-alone submit rate, and the rate of the first and the last --slice
   jobs; JetStream store bytes (queue stream + job records KV, and every
   stream) and nats-server RSS (/proc/PID/status VmRSS) before and after;
   then resumed: the drain rate of the first --slice jobs at full depth;
4. writes: --writes-jobs jobs run end to end on the idle queue while every
   stream's last sequence is noted (messages stored per job, per stream) and,
   with --strace, nats-server's fsync/fdatasync calls are counted.

Prints one JSON line with "bench_result".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

# Stream names of today's layout (orchestrator-go/internal/broker); other
# names can be given (--queue-stream, --records-stream) when it changes.
QUEUE_STREAM_PREFIX = "TANDEM_Q_"
RECORDS_STREAM = "KV_tandem_jobs"


# ---------------------------------------------------------------- pure helpers


def vm_rss_bytes(status_text: str) -> int:
    """VmRSS of a /proc/PID/status text, in bytes."""
    m = re.search(r"^VmRSS:\s+(\d+)\s+kB", status_text, re.M)
    if not m:
        raise ValueError("no VmRSS line in /proc status")
    return int(m.group(1)) * 1024


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return vm_rss_bytes(f.read())


def strace_calls(summary: str, names: tuple[str, ...] = ("fsync", "fdatasync")) -> int:
    """Sum of the "calls" column of ``strace -c`` for the given syscalls."""
    total = 0
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in names:
            # % time, seconds, usecs/call, calls, [errors], syscall
            total += int(parts[3])
    return total


def stream_deltas(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], jobs: int
) -> dict[str, dict[str, float]]:
    """Per stream: messages stored (last_seq delta) and bytes delta per job."""
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(before) | set(after)):
        b = before.get(name, {"last_seq": 0, "bytes": 0, "messages": 0})
        a = after.get(name, {"last_seq": 0, "bytes": 0, "messages": 0})
        stored = a["last_seq"] - b["last_seq"]
        if stored == 0 and a["bytes"] == b["bytes"]:
            continue
        out[name] = {
            "stored": float(stored),
            "stored_per_job": stored / jobs if jobs else 0.0,
            "bytes_delta": float(a["bytes"] - b["bytes"]),
        }
    return out


def bounded(samples: list[tuple[float, int]], tolerance: float = 1.25) -> dict[str, Any]:
    """Whether a sampled size stops growing: the largest value in the last
    third of the run against the largest in the middle third."""
    if len(samples) < 6:
        return {"bounded": None, "note": "too few samples"}
    n = len(samples)
    mid = [v for _, v in samples[n // 3 : 2 * n // 3]]
    last = [v for _, v in samples[2 * n // 3 :]]
    mid_max, last_max = max(mid), max(last)
    ratio = last_max / mid_max if mid_max else float("inf")
    return {
        "bounded": ratio <= tolerance,
        "middle_third_max": mid_max,
        "last_third_max": last_max,
        "ratio": ratio,
        "tolerance": tolerance,
    }


# ---------------------------------------------------------------- JetStream


async def stream_states(js: Any) -> dict[str, dict[str, int]]:
    """name -> {last_seq, bytes, messages} of every stream in the account."""
    out: dict[str, dict[str, int]] = {}
    for si in await js.streams_info():
        st = si.state
        out[si.config.name] = {
            "last_seq": int(st.last_seq or 0),
            "bytes": int(st.bytes or 0),
            "messages": int(st.messages or 0),
        }
    return out


def store_bytes(states: dict[str, dict[str, int]], names: list[str]) -> int:
    """Bytes of the named streams; of every stream when none of them exists
    (a changed layout: the figure then covers everything Tandem stores)."""
    if not any(n in states for n in names):
        return sum(v["bytes"] for v in states.values())
    return sum(states[n]["bytes"] for n in names if n in states)


def records_size(states: dict[str, dict[str, int]], name: str) -> tuple[int, int]:
    """(bytes, messages) of the job-records stream, or of every stream
    when it does not exist."""
    if name in states:
        return states[name]["bytes"], states[name]["messages"]
    return (
        sum(v["bytes"] for v in states.values()),
        sum(v["messages"] for v in states.values()),
    )


# ---------------------------------------------------------------- phases


class Depth:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.out: dict[str, Any] = {"bench_result": 1, "driver": "depth", "errors": 0, "note": ""}
        self.payload_size = args.payload_bytes

    def payload(self, i: int) -> bytes:
        return f"{i:016d}".encode()[: self.payload_size].ljust(self.payload_size, b".")

    def jobspecs(self, queue: str, start: int, n: int) -> list[Any]:
        import tandem

        return [
            tandem.JobSpec(steps=self.a.op, payload=self.payload(start + i), queue=queue)
            for i in range(n)
        ]

    async def queue_info(self, client: Any, queue: str) -> Any:
        for q in await client.queues():
            if q.name == queue:
                return q
        raise SystemExit(f"depth: no queue {queue!r} on the orchestrator")

    async def submit_timed(
        self, client: Any, queue: str, n: int, start: int = 0
    ) -> tuple[float, list[tuple[int, float]], int]:
        """submit_many in calls of --batch jobs; (seconds, [(jobs so far, t)], rejected)."""
        marks: list[tuple[int, float]] = []
        rejected = 0
        t0 = time.perf_counter()
        done = 0
        # A timing mark every few calls, and at least two per slice (a
        # small run uses smaller calls for that).
        chunk = max(1, min(self.a.batch * self.a.calls_per_chunk, self.a.slice // 2))
        batch = min(self.a.batch, chunk)
        while done < n:
            k = min(chunk, n - done)
            res = await client.submit_many(self.jobspecs(queue, start + done, k), batch_size=batch)
            rejected += sum(1 for r in res if isinstance(r, Exception))
            done += k
            marks.append((done, time.perf_counter() - t0))
        return time.perf_counter() - t0, marks, rejected

    async def drain(
        self, client: Any, queue: str, total: int, first: int
    ) -> tuple[float, float, float]:
        """Resumes ``queue`` and waits until nothing is waiting or running:
        (seconds for everything, seconds for the first ``first`` jobs, left)."""
        await client.resume_queue(queue)
        t0 = time.perf_counter()
        t_first = 0.0
        deadline = t0 + self.a.timeout
        while True:
            q = await self.queue_info(client, queue)
            now = time.perf_counter()
            gone = total - q.depth - q.in_flight
            if not t_first and gone >= first:
                t_first = now - t0
            if q.depth == 0 and q.in_flight == 0:
                return now - t0, t_first or (now - t0), 0
            if now > deadline:
                return now - t0, t_first, float(q.depth + q.in_flight)
            await asyncio.sleep(self.a.poll)

    async def ttl_phase(self, client: Any, js: Any) -> None:
        a = self.a
        if a.ttl_seconds <= 0:
            return
        rate, seconds = a.ttl_rate, a.ttl_seconds
        tick = 0.1
        per_tick = max(1, round(rate * tick))
        samples: list[tuple[float, int]] = []
        msgs: list[tuple[float, int]] = []
        t0 = time.perf_counter()
        sent = 0
        rejected = 0
        next_sample = 0.0
        records_found = True
        while True:
            now = time.perf_counter() - t0
            if now >= seconds:
                break
            res = await client.submit_many(self.jobspecs(a.ttl_queue, sent, per_tick))
            rejected += sum(1 for r in res if isinstance(r, Exception))
            sent += per_tick
            if now >= next_sample:
                st = await stream_states(js)
                if a.records_stream not in st:
                    records_found = False
                rb, rm = records_size(st, a.records_stream)
                samples.append((now, rb))
                msgs.append((now, rm))
                next_sample = now + a.ttl_sample
            lag = t0 + (sent / per_tick) * tick - time.perf_counter()
            if lag > 0:
                await asyncio.sleep(lag)
        elapsed = time.perf_counter() - t0
        # Bytes the bucket still gains per job once records expire (the last
        # third of the run, all past the TTL): KV delete markers, kept for
        # the bucket's marker TTL, or records that do not expire.
        tail = samples[2 * len(samples) // 3 :]
        residual = None
        if len(tail) >= 2 and tail[-1][0] > tail[0][0] and sent:
            residual = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0]) / (sent / elapsed)
        self.out["ttl"] = {
            "residual_bytes_per_job": residual,
            "queue": a.ttl_queue,
            "result_ttl_seconds": a.ttl_result_ttl,
            "rate": sent / elapsed,
            "seconds": elapsed,
            "jobs": sent,
            "rejected": rejected,
            "records_stream": a.records_stream if records_found else "all streams",
            "bytes_samples": samples,
            "message_samples": msgs,
            "bytes": bounded(samples),
            "messages": bounded(msgs),
        }
        if rejected:
            self.out["errors"] += rejected
            self.out["note"] += f"ttl: {rejected} submits rejected; "

    async def run(self) -> dict[str, Any]:
        import nats
        import tandem

        a = self.a
        nc = await nats.connect(a.nats_url)
        js = nc.jetstream()
        client = tandem.AsyncClient(a.address, timeout=120)
        queue_stream = a.queue_stream or QUEUE_STREAM_PREFIX + a.queue
        store_names = [queue_stream, a.records_stream]
        self.out.update(
            {
                "jobs": a.jobs,
                "slice": a.slice,
                "baseline_jobs": a.baseline,
                "payload_bytes": a.payload_bytes,
                "op": a.op,
                "batch": a.batch,
                "store_streams": store_names,
            }
        )
        try:
            await self.ttl_phase(client, js)

            # baseline: a shallow backlog, drained
            if a.baseline:
                await client.pause_queue(a.queue)
                _, _, rej = await self.submit_timed(client, a.queue, a.baseline, start=10**9)
                total, _, left = await self.drain(client, a.queue, a.baseline, a.baseline)
                self.out["baseline"] = {
                    "jobs": a.baseline,
                    "drain_seconds": total,
                    "drain_rate": a.baseline / total,
                    "left": left,
                    "rejected": rej,
                }
                if left or rej:
                    self.out["errors"] += int(left) + rej
                    self.out["note"] += f"baseline: {left} not drained, {rej} rejected; "

            # depth
            await client.pause_queue(a.queue)
            before = await stream_states(js)
            rss0 = rss_of(a.nats_pid) if a.nats_pid else 0
            seconds, marks, rej = await self.submit_timed(client, a.queue, a.jobs)
            after = await stream_states(js)
            rss1 = rss_of(a.nats_pid) if a.nats_pid else 0
            q = await self.queue_info(client, a.queue)

            def rate_between(lo: int, hi: int) -> float:
                t_lo = next(t for n, t in reversed([(0, 0.0), *marks]) if n <= lo)
                n_lo = next(n for n, t in reversed([(0, 0.0), *marks]) if n <= lo)
                n_hi, t_hi = next((n, t) for n, t in marks if n >= hi)
                return (n_hi - n_lo) / (t_hi - t_lo) if t_hi > t_lo else 0.0

            s = min(a.slice, a.jobs)
            self.out["submit"] = {
                "seconds": seconds,
                "rate": a.jobs / seconds,
                "first_slice_rate": rate_between(0, s),
                "last_slice_rate": rate_between(a.jobs - s, a.jobs),
                "rejected": rej,
                "depth_reported": q.depth,
            }
            sb0, sb1 = store_bytes(before, store_names), store_bytes(after, store_names)
            all0 = sum(v["bytes"] for v in before.values())
            all1 = sum(v["bytes"] for v in after.values())
            self.out["store"] = {
                "streams": [n for n in store_names if n in after] or ["all streams"],
                "bytes_before": sb0,
                "bytes_after": sb1,
                "bytes_per_job": (sb1 - sb0) / a.jobs,
                "all_streams_bytes_per_job": (all1 - all0) / a.jobs,
                "per_stream": stream_deltas(before, after, a.jobs),
            }
            if a.nats_pid:
                self.out["rss"] = {
                    "pid": a.nats_pid,
                    "bytes_before": rss0,
                    "bytes_after": rss1,
                    "bytes_per_job": (rss1 - rss0) / a.jobs,
                }
            if rej:
                self.out["errors"] += rej
                self.out["note"] += f"depth: {rej} submits rejected; "
            total, first, left = await self.drain(client, a.queue, a.jobs, s)
            self.out["drain"] = {
                "seconds": total,
                "rate": a.jobs / total,
                "first_slice_rate": s / first if first else 0.0,
                "left": left,
            }
            if left:
                self.out["errors"] += int(left)
                self.out["note"] += f"depth: {left} jobs not drained in time; "

            # writes per job, on the idle queue, end to end
            if a.writes_jobs:
                await self.writes_phase(client, js)
        finally:
            await client.close()
            await nc.close()
        return self.out

    async def writes_phase(self, client: Any, js: Any) -> None:
        a = self.a
        before = await stream_states(js)
        tracer = None
        if a.strace and a.nats_pid and shutil.which("strace"):
            tracer = subprocess.Popen(
                ["strace", "-c", "-f", "-e", "trace=fsync,fdatasync", "-p", str(a.nats_pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            await asyncio.sleep(1.0)  # attached to every thread
        t0 = time.perf_counter()
        res = await client.submit_many(self.jobspecs(a.queue, 2 * 10**9, a.writes_jobs))
        handles = [r for r in res if not isinstance(r, Exception)]
        got = await client.wait([h.id for h in handles], timeout=a.timeout, include_result=False)
        seconds = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the last acks and deletes
        after = await stream_states(js)
        fsyncs = None
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            try:
                _, err = tracer.communicate(timeout=30)
                fsyncs = strace_calls(err)
            except subprocess.TimeoutExpired:
                tracer.kill()
        n = a.writes_jobs
        per = stream_deltas(before, after, n)
        ok = sum(1 for j in got.values() if j.state.name == "SUCCEEDED")
        self.out["writes"] = {
            "jobs": n,
            "succeeded": ok,
            "seconds": seconds,
            "per_stream": per,
            "stored_per_job": sum(v["stored"] for v in per.values()) / n,
            "fsyncs": fsyncs,
            "fsyncs_per_job": None if fsyncs is None else fsyncs / n,
            "fsync_counter": "strace -c -f on nats-server" if tracer is not None else None,
        }
        if ok != n:
            self.out["errors"] += n - ok
            self.out["note"] += f"writes: {n - ok} of {n} jobs did not succeed; "


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="orchestrator host:port")
    ap.add_argument("--nats-url", required=True, help="the orchestrator's nats-server")
    ap.add_argument("--nats-pid", type=int, default=0, help="that server's pid (RSS, strace)")
    ap.add_argument("--queue", default="depth")
    ap.add_argument("--queue-stream", default="", help=f"default {QUEUE_STREAM_PREFIX}<queue>")
    ap.add_argument("--records-stream", default=RECORDS_STREAM)
    ap.add_argument("--op", default="hash.sha256")
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--slice", type=int, default=100_000, help="first/last N jobs compared")
    ap.add_argument("--baseline", type=int, default=10_000)
    ap.add_argument("--payload-bytes", type=int, default=16)
    ap.add_argument("--batch", type=int, default=1000, help="jobs per SubmitJobs call")
    ap.add_argument("--calls-per-chunk", type=int, default=10, help="calls per timing mark")
    ap.add_argument("--ttl-queue", default="ttl")
    ap.add_argument("--ttl-result-ttl", type=float, default=2.0, help="that queue's result_ttl")
    ap.add_argument("--ttl-seconds", type=float, default=20.0, help="0: no TTL phase")
    ap.add_argument("--ttl-rate", type=float, default=200.0)
    ap.add_argument("--ttl-sample", type=float, default=0.5)
    ap.add_argument("--writes-jobs", type=int, default=1000)
    ap.add_argument("--strace", action="store_true", help="count nats-server fsyncs with strace")
    ap.add_argument("--poll", type=float, default=0.2)
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    if args.slice > args.jobs:
        args.slice = args.jobs
    out = asyncio.run(Depth(args).run())
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())

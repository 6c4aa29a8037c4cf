"""Single-job round trips through Tandem's public Python client (main venv).

One job at a time, closed loop: ``tandem.Client.submit(op, payload)``, then
``JobHandle.wait()`` until its result is in the client; the latency of each
is submit → result. This is the issue-15 "single-job round trip at low load"
(whatever the client does to learn results, this measures it as users get it).

Prints one JSON line with "bench_result" (latencies in seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True, help="orchestrator host:port")
    ap.add_argument("--queue", default="bench")
    ap.add_argument("--data", required=True, help="workload cache dir")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--op", default="hash.sha256")
    args = ap.parse_args()

    import tandem

    _, payloads = workloads.load_workload(args.data, "tiny")
    lat: list[float] = []
    errors = 0
    note = ""
    with tandem.Client(args.address, queue=args.queue, timeout=60) as c:
        for i in range(args.warmup + args.count):
            p = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            job = c.submit(args.op, p).wait(timeout=60)
            dt = time.perf_counter() - t0
            ok = job.state == tandem.JobState.SUCCEEDED and bytes(job.result or b"") in (
                hashlib.sha256(p).digest(),
                hashlib.sha256(p).hexdigest().encode(),
            )
            if not ok:
                errors += 1
                note = note or f"job {job.id}: {job.state.name}"
            if i >= args.warmup:
                lat.append(dt)
    t = sum(lat)
    out: dict[str, Any] = {
        "bench_result": 1,
        "driver": "roundtrip",
        "workload": "roundtrip",
        "jobs": args.count,
        "errors": errors,
        "note": note,
        "timed_out": False,
        "elapsed_seconds": t,
        # closed loop, one in flight: the offered rate is what it reached
        "rate": args.count / t if t else 0.0,
        "latencies": lat,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

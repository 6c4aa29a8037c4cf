"""The in-process limit: the same pipeline through tandem._native, no network.

One thread per core (the module releases the GIL while computing), each
taking the next input; the figure is what the Rust core alone does with the
machine. Prints one JSON line with "bench_result".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def declared_params_native(native: Any) -> dict[str, set[str]] | None:
    """op -> param names from tandem._native.list_ops(), whatever its shape
    (a list of dicts or objects, or a JSON string); None if unreadable."""
    try:
        ops = native.list_ops()
        if isinstance(ops, (str, bytes)):
            ops = json.loads(ops)
        if isinstance(ops, dict):
            ops = ops.get("ops", ops)
        out: dict[str, set[str]] = {}
        for op in ops:
            name = op["name"] if isinstance(op, dict) else getattr(op, "name")
            params = op.get("params", []) if isinstance(op, dict) else getattr(op, "params", [])
            names = set()
            for p in params:
                if isinstance(p, str):
                    names.add(p)
                elif isinstance(p, dict):
                    names.add(p["name"])
                else:
                    names.add(getattr(p, "name"))
            out[name] = names
        return out or None
    except Exception:  # noqa: BLE001 - fall back to the names as written
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--workload", required=True, choices=["tiny", "thumbnails", "compress"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps-json", default="", help="resolved steps (else resolved via list_ops)")
    args = ap.parse_args()

    from tandem import _native

    _, payloads = workloads.load_workload(args.data, args.workload)
    spec = workloads.plan()[args.workload]
    if args.steps_json:
        steps = json.loads(args.steps_json)
    else:
        steps = workloads.resolve_steps(spec.steps_as_dicts(), declared_params_native(_native))
    _native.run(steps, payloads[0])  # warm-up

    lock = threading.Lock()
    it = iter(range(len(payloads)))
    out_bytes = [0]
    errors: list[str] = []

    def worker() -> None:
        local = 0
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                break
            try:
                local += len(_native.run(steps, payloads[i]))
            except Exception as e:  # noqa: BLE001
                errors.append(str(e))
        with lock:
            out_bytes[0] += local

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench_result": 1,
                "driver": "native",
                "workload": args.workload,
                "jobs": len(payloads),
                "errors": len(errors),
                "note": errors[0] if errors else "",
                "elapsed_seconds": elapsed,
                "input_bytes": sum(len(p) for p in payloads),
                "result_bytes": out_bytes[0],
                "threads": args.threads,
                "steps": steps,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures, ratios and the terminal table: pure functions, no services.

A *measurement* is one figure of one system on one workload, repeated:

    {"system": "tandem/always", "workload": "tiny/batch", "metric": "throughput",
     "unit": "jobs/s", "runs": [..], "median": .., "min": .., "max": ..}

Latency measurements carry "metric": "p50" | "p99" | "p999" (ms) and a
"load" label. report.build_rows() pairs each figure with its Celery reference
(same durability class, Celery's reliable settings) and its limit.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any, Iterable, Sequence

from workloads import USER_WORKLOADS

# Durability classes: each Tandem mode is compared with the Celery/Redis
# setting and the raw JetStream mode that survive the same failures.
SYSTEMS: dict[str, dict[str, str]] = {
    "tandem/always": {
        "kind": "tandem",
        "durability": "always",
        "label": "Tandem, JetStream sync always",
    },
    "tandem/interval": {
        "kind": "tandem",
        "durability": "interval",
        "label": "Tandem, JetStream sync interval",
    },
    "celery-reliable/aof-always": {
        "kind": "celery",
        "durability": "always",
        "label": "Celery reliable, Redis appendfsync always",
    },
    "celery-reliable/default": {
        "kind": "celery",
        "durability": "interval",
        "label": "Celery reliable, Redis default persistence",
    },
    "celery-fast/aof-always": {
        "kind": "celery",
        "durability": "always",
        "label": "Celery fast, Redis appendfsync always",
    },
    "celery-fast/default": {
        "kind": "celery",
        "durability": "interval",
        "label": "Celery fast, Redis default persistence",
    },
    "jetstream/always": {
        "kind": "limit",
        "durability": "always",
        "label": "raw JetStream, sync always",
    },
    "jetstream/interval": {
        "kind": "limit",
        "durability": "interval",
        "label": "raw JetStream, sync interval",
    },
    "native": {"kind": "limit", "durability": "none", "label": "tandem._native in-process"},
    # The second peer (issue 15): taskiq with taskiq-nats' JetStream broker
    # and NATS Object Store result backend, acks when saved.
    "taskiq/sync-always": {
        "kind": "peer",
        "durability": "always",
        "label": "taskiq + taskiq-nats JetStream, nats-server sync always",
    },
    "taskiq/default": {
        "kind": "peer",
        "durability": "interval",
        "label": "taskiq + taskiq-nats JetStream, nats-server default sync",
    },
}
TASKIQ_PEER = {"always": "taskiq/sync-always", "interval": "taskiq/default"}

CELERY_REFERENCE = {"always": "celery-reliable/aof-always", "interval": "celery-reliable/default"}
JETSTREAM_LIMIT = {"always": "jetstream/always", "interval": "jetstream/interval"}

# Which limit figure bounds each workload: (system key or durability map, workload, metric).
LIMIT_OF = {
    "tiny/single": ("jetstream", "jetstream/pubsub", "throughput"),
    "tiny/batch": ("jetstream", "jetstream/pubsub", "throughput"),
    # A Python op's job crosses the same broker; the native figure is the
    # Rust op's, no bound for Pillow, so user-thumbnails has no limit.
    "user-tiny/single": ("jetstream", "jetstream/pubsub", "throughput"),
    "user-tiny/batch": ("jetstream", "jetstream/pubsub", "throughput"),
    "thumbnails": ("native", "thumbnails", "throughput"),
    "compress": ("native", "compress", "throughput"),
}

LOWER_IS_BETTER = {"p50", "p99", "p999"}


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of unsorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/p999/max in milliseconds from latencies in seconds."""
    ms = [x * 1000.0 for x in latencies_s]
    return {
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "p999": percentile(ms, 99.9),
        "max": max(ms),
        "count": float(len(ms)),
    }


def summarize(runs: Sequence[float]) -> dict[str, float]:
    if not runs:
        raise ValueError("no runs")
    return {
        "median": float(statistics.median(runs)),
        "min": float(min(runs)),
        "max": float(max(runs)),
    }


def calibrated_count(rate: float, full: int, target_seconds: float, min_count: int) -> int:
    """How many inputs a throughput run uses: the workload's full count when
    the system gets through it within target_seconds at the probed rate,
    else what fits (never fewer than min_count, never more than full)."""
    if full <= 0:
        raise ValueError("full must be positive")
    if rate <= 0 or math.isnan(rate):
        return min(full, min_count)
    fits = int(rate * target_seconds)
    return max(min(full, min_count), min(full, fits))


def measurement(
    system: str, workload: str, metric: str, unit: str, runs: Sequence[float], **extra: Any
) -> dict[str, Any]:
    m: dict[str, Any] = {
        "system": system,
        "workload": workload,
        "metric": metric,
        "unit": unit,
        "runs": [float(r) for r in runs],
    }
    m.update(summarize(runs))
    m.update(extra)
    return m


# ---------------------------------------------------------------- parsing


def parse_driver_output(text: str) -> dict[str, Any]:
    """The last line of a driver's stdout that is a JSON object with
    "bench_result": the drivers may print progress before it."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "bench_result" in obj:
            return obj
    raise ValueError("no bench_result line in driver output")


def merge_clients(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concurrent clients' driver results as one: their jobs, errors and
    bytes summed, the elapsed time from the first client's start to the last
    one's last result (each reports "t0" and "t_end" on one monotonic clock)."""
    if not results:
        raise ValueError("no client results")
    for r in results:
        if "t0" not in r or "t_end" not in r:
            raise ValueError("a client result without t0/t_end")
    t0 = min(r["t0"] for r in results)
    t_end = max(r["t_end"] for r in results)
    out = dict(results[0])
    out.update(
        {
            "clients": len(results),
            "jobs": sum(r["jobs"] for r in results),
            "errors": sum(r.get("errors", 0) for r in results),
            "timed_out": any(r.get("timed_out") for r in results),
            "note": "; ".join(r["note"] for r in results if r.get("note")),
            "input_bytes": sum(r.get("input_bytes", 0) for r in results),
            "t0": t0,
            "t_end": t_end,
            "elapsed_seconds": t_end - t0,
            # how far apart the clients really started
            "start_spread_seconds": max(r["t0"] for r in results) - t0,
        }
    )
    return out


def parse_jsbench(text: str) -> dict[str, float]:
    """jsbench prints one JSON object: {"pub": msgs/s, "consume": msgs/s,
    "pubsub": msgs/s, "msgs": N, "size": bytes, "sync": "always"|"interval"}."""
    obj = parse_driver_output(text)
    out: dict[str, float] = {}
    for key in ("pub", "consume", "pubsub"):
        v = obj.get(key)
        if not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"jsbench: missing or bad {key!r}: {v!r}")
        out[key] = float(v)
    return out


# ---------------------------------------------------------------- report


def _index(ms: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {(m["system"], m["workload"], m["metric"], m.get("load", "")): m for m in ms}


def celery_workload(workload: str) -> str:
    """The workload label of Celery's figure for ``workload``: a user-*
    workload (Tandem's Python op worker) is compared with the Celery run of
    its counterpart, the same task on the same inputs ("user-tiny/single" →
    "tiny/single"); any other is compared with itself."""
    head, sep, tail = workload.partition("/")
    return USER_WORKLOADS.get(head, head) + sep + tail


def reference_of(
    m: dict[str, Any], idx: dict[tuple[str, str, str, str], dict[str, Any]]
) -> dict[str, Any] | None:
    """The Celery figure a measurement is compared with: Celery with reliable
    settings at the same durability, same workload and metric. Tandem latency
    at "celery N%" load is compared with Celery at its own N%."""
    info = SYSTEMS.get(m["system"])
    if info is None or info["durability"] not in CELERY_REFERENCE:
        return None
    ref_sys = CELERY_REFERENCE[info["durability"]]
    load = m.get("load", "")
    if m["metric"] in LOWER_IS_BETTER:
        # Latency compares equal offered loads only: Tandem driven at the
        # rate Celery was driven at ("celery 50%" = Celery's own 50%).
        if info["kind"] != "tandem" or not load.startswith("celery "):
            return None
        load = load[len("celery ") :]
    return idx.get((ref_sys, celery_workload(m["workload"]), m["metric"], load))


def limit_of(
    m: dict[str, Any], idx: dict[tuple[str, str, str, str], dict[str, Any]]
) -> dict[str, Any] | None:
    spec = LIMIT_OF.get(m["workload"])
    if spec is None or m["metric"] != "throughput":
        return None
    which, workload, metric = spec
    if which == "jetstream":
        d = SYSTEMS.get(m["system"], {}).get("durability")
        if d not in JETSTREAM_LIMIT:
            return None
        return idx.get((JETSTREAM_LIMIT[d], workload, metric, ""))
    return idx.get(("native", workload, metric, ""))


def build_rows(measurements: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per non-limit measurement with ratio_to_celery and
    fraction_of_limit (None where no reference exists); limit figures follow."""
    idx = _index(measurements)
    rows = []
    for m in measurements:
        kind = SYSTEMS.get(m["system"], {}).get("kind")
        row = dict(m)
        row["ratio_to_celery"] = None
        row["fraction_of_limit"] = None
        row["limit"] = None
        if kind != "limit":
            ref = reference_of(m, idx)
            if ref is not None and ref["median"] > 0:
                row["ratio_to_celery"] = m["median"] / ref["median"]
                row["celery_reference"] = ref["system"]
            lim = limit_of(m, idx)
            if lim is not None and lim["median"] > 0:
                row["fraction_of_limit"] = m["median"] / lim["median"]
                row["limit"] = f"{lim['system']} {lim['workload']}"
        rows.append(row)
    order = {k: i for i, k in enumerate(SYSTEMS)}
    rows.sort(
        key=lambda r: (
            SYSTEMS.get(r["system"], {}).get("kind") == "limit",
            r["workload"],
            r.get("load", ""),
            r["metric"],
            order.get(r["system"], 99),
        )
    )
    return rows


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_figure(m: dict[str, Any]) -> str:
    return f"{fmt_num(m['median'])} {m['unit']} ({fmt_num(m['min'])}–{fmt_num(m['max'])})"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The terminal table. Latency percentiles of one system at one load
    share a line (p50 / p99 / p999); its ratio is the p99 ratio."""
    head = (
        "system",
        "workload",
        "figure: median (min–max)",
        "ratio to Celery",
        "fraction of limit",
    )
    lines: list[tuple[str, str, str, str, str]] = []
    lat: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["metric"] in LOWER_IS_BETTER:
            key = (r["system"], r["workload"], r.get("load", ""))
            if key not in lat:
                lat[key] = {}
                lines.append(("__latency__", *key, ""))
            lat[key][r["metric"]] = r
            continue
        ratio = "" if r["ratio_to_celery"] is None else f"{r['ratio_to_celery']:.2f}×"
        frac = "" if r["fraction_of_limit"] is None else f"{100 * r['fraction_of_limit']:.0f}%"
        lines.append((r["system"], r["workload"], fmt_figure(r), ratio, frac))
    out_lines = []
    for ln in lines:
        if ln[0] != "__latency__":
            out_lines.append(ln)
            continue
        system, workload, load = ln[1], ln[2], ln[3]
        ps = lat[(system, workload, load)]
        fig = (
            " / ".join(f"{q} {fmt_num(ps[q]['median'])}" for q in ("p50", "p99", "p999") if q in ps)
            + " ms"
        )
        rate = next(iter(ps.values())).get("rate")
        wl = f"{workload} @{load}" + (f" ({rate:.0f}/s)" if rate else "")
        p99 = ps.get("p99")
        ratio = (
            ""
            if p99 is None or p99["ratio_to_celery"] is None
            else f"p99 {p99['ratio_to_celery']:.2f}×"
        )
        out_lines.append((system, wl, fig, ratio, ""))
    widths = [
        max(len(h), *(len(ln[i]) for ln in out_lines)) if out_lines else len(h)
        for i, h in enumerate(head)
    ]
    out = [
        "  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for ln in out_lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(ln, widths)).rstrip())
    return "\n".join(out)


TARGETS = [
    # (name, description, function(rows) -> list of (system, value, met))
    (
        "tiny ≥ 10× Celery",
        "tiny/batch and tiny/single jobs/s ÷ Celery reliable (same durability)",
        "tiny",
        "ratio",
        10.0,
        ">=",
    ),
    (
        "tiny ≥ 25% of JetStream",
        "tiny jobs/s ÷ raw JetStream publish+consume msgs/s (same sync mode)",
        "tiny",
        "fraction",
        0.25,
        ">=",
    ),
    (
        "latency p99 ≤ 1/5 of Celery",
        "Tandem p99 ÷ Celery p99 at Celery's offered load",
        "latency",
        "ratio",
        0.2,
        "<=",
    ),
    ("thumbnails ≥ 1.5× Celery", "images/s ratio", "thumbnails", "ratio", 1.5, ">="),
    (
        "thumbnails ≥ 70% of native",
        "images/s ÷ in-process native",
        "thumbnails",
        "fraction",
        0.7,
        ">=",
    ),
    ("compress ≥ 1.5× Celery", "MB/s ratio", "compress", "ratio", 1.5, ">="),
    ("compress ≥ 70% of native", "MB/s ÷ in-process native", "compress", "fraction", 0.7, ">="),
    # Issue "Your own ops": the same Python function on Tandem's op worker
    # (process pool) vs Celery's prefork worker, equal process counts.
    (
        "user-tiny ≥ 3× Celery",
        "Python op bench.sha256 jobs/s ÷ Celery reliable tiny (same task, same durability)",
        "user-tiny",
        "ratio",
        3.0,
        ">=",
    ),
    (
        "user-thumbnails ≥ 1.2× Celery",
        "Pillow op images/s ÷ Celery reliable thumbnails (same Pillow code)",
        "user-thumbnails",
        "ratio",
        1.2,
        ">=",
    ),
]


def check_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each issue target against the measured rows (Tandem rows only). Goals,
    not asserts: the report prints met / missed."""
    out = []
    for name, desc, wl_prefix, kind, bound, op in TARGETS:
        for r in rows:
            if SYSTEMS.get(r["system"], {}).get("kind") != "tandem":
                continue
            if not r["workload"].startswith(wl_prefix):
                continue
            if wl_prefix == "latency" and r["metric"] != "p99":
                continue
            value = r["ratio_to_celery"] if kind == "ratio" else r["fraction_of_limit"]
            if value is None:
                continue
            met = value >= bound if op == ">=" else value <= bound
            out.append(
                {
                    "target": name,
                    "description": desc,
                    "system": r["system"],
                    "workload": r["workload"],
                    "load": r.get("load", ""),
                    "value": value,
                    "bound": bound,
                    "op": op,
                    "met": met,
                }
            )
    return out


def format_targets(checks: Sequence[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        where = c["workload"] + (f" @{c['load']}" if c["load"] else "")
        lines.append(
            f"{'met   ' if c['met'] else 'MISSED'}  {c['target']:<30} {c['system']:<16} {where:<28} "
            f"{c['value']:.2f} (goal {c['op']} {c['bound']})"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- issue 15

# The thresholds of issue 15 ("Faster per job at equal durability").
KIB = 1024.0
ISSUE15: dict[str, Any] = {
    "tiny_ratio": 10.0,  # Tandem jobs/s >= 10 x Celery's, both submit styles
    "p99_ratio": 0.2,  # Tandem p99 <= 1/5 of Celery's at Celery's offered load
    "roundtrip_p50_ms": {"interval": 1.0, "always": 2.0},
    "collapse_ratio": 3.0,  # p99 at 50% of own max <= 3 x p99 at 10%
    "native_fraction": 0.7,  # thumbnails, compress >= 70% of in-process native
    "flat_fraction": 0.8,  # depth: last/first slice, drain at depth/at baseline (~20%)
    "store_per_job_bytes": 0.95 * KIB / 2,  # half of today's 0.95 KiB per queued job
    "rss_per_job_bytes": 0.8 * KIB / 2,  # half of today's 0.8 KiB per queued job
    "ttl_growth": 1.25,  # record-bucket bytes, last third vs middle third of the run
}


def _find(
    idx: dict[tuple[str, str, str, str], dict[str, Any]],
    system: str,
    workload: str,
    metric: str,
    load: str = "",
) -> dict[str, Any] | None:
    return idx.get((system, workload, metric, load))


def _by_key(rows: Sequence[dict[str, Any]], system: str, key: str) -> dict[str, Any] | None:
    for r in rows:
        if r["system"] == system and r.get("key") == key:
            return r
    return None


def _check(
    target: str,
    system: str,
    value: dict[str, Any] | None,
    op: str,
    threshold: float | None,
    threshold_text: str,
    unit: str,
) -> dict[str, Any]:
    """One issue-15 line: MET / MISSED from the median and the threshold;
    NOT RUN when the figure was not measured, NO REF when the figure it is
    compared with (Celery's, the native op's, ...) was not."""
    if value is None:
        status = "NOT RUN"
        figure = None
    elif threshold is None:
        # The figure is here, the one it is measured against is not.
        status = "NO REF"
        figure = float(value["median"])
    else:
        figure = float(value["median"])
        met = figure >= threshold if op == ">=" else figure <= threshold
        status = "MET" if met else "MISSED"
    return {
        "target": target,
        "system": system,
        "status": status,
        "figure": figure,
        "unit": unit,
        "op": op,
        "threshold": threshold,
        "threshold_text": threshold_text,
    }


def _info(target: str, system: str, figure: float | None, unit: str, text: str) -> dict[str, Any]:
    return {
        "target": target,
        "system": system,
        "status": "info" if figure is not None else "NOT RUN",
        "figure": figure,
        "unit": unit,
        "op": "",
        "threshold": None,
        "threshold_text": text,
    }


def issue15_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of issue 15 from one run's rows, as MET / MISSED (or NOT
    RUN when its figures were not measured in this run), plus "info" lines:
    messages stored and fsyncs per job, and Tandem against taskiq. Every
    ratio is against a figure of the same run."""
    idx = _index(rows)
    th = ISSUE15
    out: list[dict[str, Any]] = []
    for d in ("always", "interval"):
        t = f"tandem/{d}"
        c = CELERY_REFERENCE[d]
        for submit in ("batch", "single"):
            ref = _find(idx, c, f"tiny/{submit}", "throughput")
            thr = None if ref is None else th["tiny_ratio"] * ref["median"]
            out.append(
                _check(
                    f"tiny/{submit} ≥ 10× Celery",
                    t,
                    _find(idx, t, f"tiny/{submit}", "throughput"),
                    ">=",
                    thr,
                    "" if ref is None else f"10 × {c} {fmt_num(ref['median'])}",
                    "jobs/s",
                )
            )
        for p in (25, 50):
            ref = _find(idx, c, "latency", "p99", f"{p}%")
            thr = None if ref is None else th["p99_ratio"] * ref["median"]
            out.append(
                _check(
                    f"p99 ≤ 1/5 of Celery @Celery's {p}%",
                    t,
                    _find(idx, t, "latency", "p99", f"celery {p}%"),
                    "<=",
                    thr,
                    "" if ref is None else f"{c} p99 {fmt_num(ref['median'])} ms ÷ 5",
                    "ms",
                )
            )
        lim = th["roundtrip_p50_ms"][d]
        out.append(
            _check(
                "round trip p50 at low load",
                t,
                _find(idx, t, "roundtrip", "p50", "1 in flight"),
                "<=",
                lim,
                "",
                "ms",
            )
        )
        low = _find(idx, t, "latency", "p99", "10%")
        out.append(
            _check(
                "no collapse: p99 @50% ≤ 3× p99 @10% of own max",
                t,
                _find(idx, t, "latency", "p99", "50%"),
                "<=",
                None if low is None else th["collapse_ratio"] * low["median"],
                "" if low is None else f"3 × p99 @10% {fmt_num(low['median'])} ms",
                "ms",
            )
        )
        for w, unit in (("thumbnails", "images/s"), ("compress", "MB/s")):
            nat = _find(idx, "native", w, "throughput")
            out.append(
                _check(
                    f"{w} ≥ 70% of in-process native",
                    t,
                    _find(idx, t, w, "throughput"),
                    ">=",
                    None if nat is None else th["native_fraction"] * nat["median"],
                    "" if nat is None else f"70% of native {fmt_num(nat['median'])}",
                    unit,
                )
            )
        out += _depth_targets(rows, idx, t, c)
        peer = TASKIQ_PEER[d]
        for w in ("tiny/batch", "tiny/single", "thumbnails"):
            a = _find(idx, t, w, "throughput")
            b = _find(idx, peer, w, "throughput")
            ratio = a["median"] / b["median"] if a and b and b["median"] > 0 else None
            out.append(
                _info(
                    f"{w}: Tandem ÷ taskiq",
                    t,
                    ratio,
                    "×",
                    "" if b is None else f"{peer} {fmt_num(b['median'])} {b['unit']}",
                )
            )
    # A mode that ran nothing of issue 15's (no Tandem at all) says so once.
    return out


def _depth_targets(
    rows: Sequence[dict[str, Any]],
    idx: dict[tuple[str, str, str, str], dict[str, Any]],
    t: str,
    c: str,
) -> list[dict[str, Any]]:
    th = ISSUE15
    out: list[dict[str, Any]] = []
    first = _by_key(rows, t, "submit_first")
    last = _by_key(rows, t, "submit_last")
    depth_n = "" if first is None else f" (depth {first.get('depth_jobs', 0):,})"
    out.append(
        _check(
            "depth: submit rate flat (last vs first slice)" + depth_n,
            t,
            last,
            ">=",
            None if first is None else th["flat_fraction"] * first["median"],
            "" if first is None else f"80% of the first slice's {fmt_num(first['median'])}",
            "jobs/s",
        )
    )
    base = _by_key(rows, t, "drain_baseline")
    out.append(
        _check(
            "depth: drain rate at depth vs shallow",
            t,
            _by_key(rows, t, "drain_depth"),
            ">=",
            None if base is None else th["flat_fraction"] * base["median"],
            "" if base is None else f"80% of {fmt_num(base['median'])} at {base.get('jobs', 0):,}",
            "jobs/s",
        )
    )
    out.append(
        _check(
            "depth: store bytes per queued job (queue stream + records)",
            t,
            _by_key(rows, t, "store_per_job"),
            "<=",
            th["store_per_job_bytes"],
            "half of 0.95 KiB",
            "B",
        )
    )
    out.append(
        _check(
            "depth: nats-server RSS per queued job",
            t,
            _by_key(rows, t, "rss_per_job"),
            "<=",
            th["rss_per_job_bytes"],
            "half of 0.8 KiB",
            "B",
        )
    )
    ttl = _by_key(rows, t, "ttl_growth")
    residual = None if ttl is None else ttl.get("residual_bytes_per_job")
    out.append(
        _check(
            "result TTL keeps the record bucket bounded",
            t,
            ttl,
            "<=",
            th["ttl_growth"],
            "bytes: last third ≤ 1.25× middle third"
            + (
                ""
                if residual is None
                else f"; still {fmt_num(residual)} B added per job after its TTL"
            ),
            "×",
        )
    )
    ref = _find(idx, c, "tiny/batch", "throughput")
    out.append(
        _check(
            "Python client alone: submit_many (paused queue)",
            t,
            _by_key(rows, t, "submit_rate"),
            ">=",
            None if ref is None else th["tiny_ratio"] * ref["median"],
            ""
            if ref is None
            else f"what tiny/batch ≥ 10× needs: 10 × {c} {fmt_num(ref['median'])}",
            "jobs/s",
        )
    )
    w = _by_key(rows, t, "stored_per_job")
    out.append(
        _info(
            "writes: JetStream messages stored per job",
            t,
            None if w is None else w["median"],
            "msgs",
            "" if w is None else w.get("breakdown", ""),
        )
    )
    f = _by_key(rows, t, "fsyncs_per_job")
    out.append(
        _info(
            "fsyncs per job (nats-server, strace)",
            t,
            None if f is None else f["median"],
            "fsyncs",
            "",
        )
    )
    return out


def format_issue15(checks: Sequence[dict[str, Any]]) -> str:
    """The issue-15 lines: status, target, system, figure, threshold."""
    lines = []
    tw = max([len(c["target"]) for c in checks] + [10])
    for c in checks:
        fig = "—" if c["figure"] is None else f"{fmt_num(c['figure'])} {c['unit']}"
        if c["threshold"] is not None:
            thr = f"{c['op']} {fmt_num(c['threshold'])} {c['unit']}"
            if c["threshold_text"]:
                thr += f" ({c['threshold_text']})"
        else:
            thr = c["threshold_text"]
        lines.append(
            f"{c['status']:<8} {c['target']:<{tw}}  {c['system']:<16} {fig:<18} {thr}".rstrip()
        )
    return "\n".join(lines)


def format_markdown(doc: dict[str, Any]) -> str:
    """The README's results section from a results JSON: the table as
    markdown, the targets, and the machine."""
    rows = doc.get("rows") or build_rows(doc["measurements"])
    text = format_table(rows).splitlines()
    head = [c.strip() for c in _split_cols(text[0], text[1])]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for line in text[2:]:
        out.append("| " + " | ".join(c.strip() for c in _split_cols(line, text[1])) + " |")
    m = doc.get("machine", {})
    out += [
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB; "
        f"{m.get('redis_server', '')}; {m.get('nats_server', '')}; {m.get('celery', '')}. "
        f"Run {doc.get('started', '?')}, {doc.get('seconds', '?')} s, `{doc.get('command', '')}`, "
        f"median of {doc.get('settings', {}).get('repeats', '?')} runs (min–max).",
    ]
    checks = doc.get("targets") or check_targets(rows)
    if checks:
        out += ["", "```", format_targets(checks), "```"]
    return "\n".join(out)


def _split_cols(line: str, rule: str) -> list[str]:
    """Cuts a fixed-width table line at the column positions of its rule line."""
    cols, pos = [], 0
    for dashes in rule.split("  "):
        cols.append(line[pos : pos + len(dashes)])
        pos += len(dashes) + 2
    return cols


if __name__ == "__main__":
    import sys

    with open(sys.argv[1]) as f:
        _doc = json.load(f)
    if "--markdown" in sys.argv[2:]:
        print(format_markdown(_doc))
    elif "--issue15" in sys.argv[2:]:
        print(format_issue15(issue15_targets(_doc.get("rows") or build_rows(_doc["measurements"]))))
    else:
        print(format_table(_doc.get("rows") or build_rows(_doc["measurements"])))

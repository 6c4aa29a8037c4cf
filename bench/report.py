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
}

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
    else:
        print(format_table(_doc.get("rows") or build_rows(_doc["measurements"])))

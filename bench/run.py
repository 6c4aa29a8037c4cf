#!/usr/bin/env python3
"""Tandem vs Celery+Redis, side by side, against the raw limits (make bench).

Runs with the main dev venv (.venv: grpcio, the tandem package). Installs
what else it needs by itself: bench/.venv (Celery, redis-py, zstandard,
Pillow, matplotlib; see bench/requirements.txt), redis-server from Debian's
packages when missing, and bench/jsbench (a small Go client of NATS
JetStream) built with the Go toolchain. Starts everything on loopback and
stops everything at the end, also on error or Ctrl-C.

Output: a table on the terminal, bench/results/latest.json (every figure,
every run, the machine) and bench/results/latest.png; --quick also writes
quick.json/png and a full run full.json/png. See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import report  # noqa: E402
import services as svc  # noqa: E402
import workloads  # noqa: E402

BENCH_VENV = os.path.join(HERE, ".venv")
BENCH_PY = os.path.join(BENCH_VENV, "bin", "python")
CACHE = os.path.join(BENCH_VENV, "cache", "workloads")
JSBENCH_BIN = os.path.join(BENCH_VENV, "bin", "jsbench")
RESULTS = os.path.join(HERE, "results")
QUEUE = "bench"
# The Python ops bench/user_ops.py serves (tandem worker user_ops:worker).
USER_OPS = ("bench.sha256", "bench.thumbnail_pillow")
CORES = os.cpu_count() or 1

ALL_WORKLOADS = (
    "limits",
    "tiny",
    "latency",
    "thumbnails",
    "compress",
    # User ops: Python functions on Tandem's op worker (bench/user_ops.py);
    # Celery runs its counterpart (workloads.USER_WORKLOADS) for the ratio.
    "user-tiny",
    "user-latency",
    "user-thumbnails",
    # Issue 15: single-job round trips through the public client (Tandem),
    # and the depth run (a paused queue filled with BENCH_DEPTH jobs, Tandem).
    "roundtrip",
    "depth",
)
# Workloads only Tandem runs (Celery and taskiq have no counterpart here).
TANDEM_ONLY = ("roundtrip", "depth")
# The workloads the taskiq peer runs (issue 15: tiny and thumbnails).
TASKIQ_WORKLOADS = ("tiny", "thumbnails")
# Shorter spellings accepted by --only.
WORKLOAD_ALIASES = {"user-thumbs": "user-thumbnails", "thumbs": "thumbnails"}


def parse_only(values: list[str] | None) -> tuple[str, ...]:
    """--only's values (repeatable, each a comma list, aliases allowed) as
    workload names in ALL_WORKLOADS order; every workload when none."""
    if not values:
        return ALL_WORKLOADS
    wanted = set()
    for v in values:
        for name in v.split(","):
            name = WORKLOAD_ALIASES.get(name.strip(), name.strip())
            if not name:
                continue
            if name not in ALL_WORKLOADS:
                raise SystemExit(
                    f"--only: unknown workload {name!r} (one of {', '.join(ALL_WORKLOADS)})"
                )
            wanted.add(name)
    return tuple(w for w in ALL_WORKLOADS if w in wanted)


@dataclass
class Settings:
    quick: bool
    repeats: int
    counts: dict[str, int]
    latency_seconds: float
    latency_min_jobs: int
    latency_max_jobs: int
    jetstream_msgs: int
    celery_fast_workloads: tuple[str, ...]
    workloads: tuple[str, ...]
    tandem_durability: tuple[str, ...] = ("always", "interval")
    depth: dict[str, Any] = field(default_factory=dict)
    redis_persistence: tuple[str, ...] = ("aof-always", "default")
    extra: dict[str, Any] = field(default_factory=dict)


def settings_from(args: argparse.Namespace) -> Settings:
    plan = workloads.plan(args.quick)
    counts = {k: w.count for k, w in plan.items()}
    given = set()
    for kv in args.count or []:
        k, _, v = kv.partition("=")
        counts[k] = int(v)
        given.add(k)
    # A user-* workload runs on its counterpart's inputs: it follows that
    # count (--count tiny=N sizes user-tiny too) unless given its own.
    for k, w in plan.items():
        if w.inputs != k and k not in given:
            counts[k] = counts[w.inputs]
    only = parse_only(args.only)
    return Settings(
        depth=depth_settings(args.quick, os.environ),
        quick=args.quick,
        # --quick is a smoke run: one run per figure unless --repeats says more.
        repeats=args.repeats or (1 if args.quick else 3),
        counts=counts,
        latency_seconds=args.latency_seconds or (1.5 if args.quick else 5.0),
        latency_min_jobs=100 if args.quick else 250,
        latency_max_jobs=1000 if args.quick else 15000,
        # Fewer than a few thousand messages measure JetStream's start-up
        # (file creation) more than its rate.
        jetstream_msgs=max(counts["tiny"], 3000 if args.quick else 20000),
        celery_fast_workloads=("tiny",)
        if args.celery_fast == "tiny"
        else (() if args.celery_fast == "off" else ("tiny", "thumbnails", "compress")),
        workloads=only,
    )


def depth_settings(quick: bool, env: "os._Environ[str] | dict[str, str]") -> dict[str, Any]:
    """The depth run's sizes: BENCH_DEPTH jobs (default 200,000; --quick
    5,000), compared over first/last slices of a tenth (100,000 at 1M);
    BENCH_DEPTH_DURABILITY (comma list, default "interval": the issue's own
    depth figures drained at 2,343 jobs/s, above anything sync always reached
    on tiny jobs, so they were interval) picks the modes."""
    raw = env.get("BENCH_DEPTH", "").replace("_", "").replace(",", "")
    try:
        jobs = int(raw) if raw else (5000 if quick else 200_000)
    except ValueError:
        raise SystemExit(f"BENCH_DEPTH must be a whole number of jobs, not {raw!r}") from None
    if jobs < 100:
        raise SystemExit(f"BENCH_DEPTH must be at least 100 jobs, not {jobs}")
    modes = tuple(
        m.strip() for m in (env.get("BENCH_DEPTH_DURABILITY") or "interval").split(",") if m.strip()
    )
    for m in modes:
        if m not in ("always", "interval"):
            raise SystemExit(f"BENCH_DEPTH_DURABILITY: {m!r} is not always or interval")
    return {
        "jobs": jobs,
        "slice": max(1, min(100_000, jobs // 10)),
        "baseline": min(10_000, max(100, jobs // 5)),
        "durability": modes,
        "ttl_seconds": 6.0 if quick else 20.0,
        "ttl_rate": 100.0 if quick else 200.0,
        "ttl_result_ttl": 2.0,
        "writes_jobs": 200 if quick else 1000,
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- set-up


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ensure_bench_venv() -> None:
    req = os.path.join(HERE, "requirements.txt")
    stamp = os.path.join(BENCH_VENV, ".requirements.sha256")
    want = sha256_file(req)
    if os.path.exists(stamp) and open(stamp).read().strip() == want and os.path.exists(BENCH_PY):
        return
    log(
        "setting up bench/.venv (Celery, redis-py, taskiq, taskiq-nats, zstandard, Pillow, matplotlib)"
    )
    if not os.path.exists(BENCH_PY):
        base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
        subprocess.run([base, "-m", "venv", BENCH_VENV], check=True)
    subprocess.run([BENCH_PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([BENCH_PY, "-m", "pip", "install", "-q", "-r", req], check=True)
    with open(stamp, "w") as f:
        f.write(want + "\n")


def ensure_jsbench() -> str:
    src = os.path.join(HERE, "jsbench")
    newest = max(os.path.getmtime(os.path.join(src, n)) for n in ("main.go", "go.mod", "go.sum"))
    if os.path.exists(JSBENCH_BIN) and os.path.getmtime(JSBENCH_BIN) >= newest:
        return JSBENCH_BIN
    log("building bench/jsbench (Go, nats.go)")
    subprocess.run(
        ["go", "build", "-o", JSBENCH_BIN, "."],
        cwd=src,
        check=True,
        env=dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false"),
    )
    return JSBENCH_BIN


def binary(env: str, default: str) -> str:
    path = os.environ.get(env) or os.path.join(ROOT, default)
    return os.path.abspath(path)


def input_counts(st: Settings) -> dict[str, int]:
    """The input sets a run needs and how many inputs of each: a user-*
    workload reads its counterpart's set, so that set holds enough for both."""
    need: dict[str, int] = {}
    if {"tiny", "latency", "limits", "roundtrip"} & set(st.workloads):
        need["tiny"] = st.counts["tiny"]
    for w in ("thumbnails", "compress"):
        if w in st.workloads or "limits" in st.workloads:
            need[w] = st.counts[w]
    for w in st.workloads:
        if w in workloads.USER_WORKLOADS:
            spec = workloads.throughput_spec(w)
            src = workloads.input_set(w)
            need[src] = max(need.get(src, 0), st.counts[spec])
    return need


def generate_workloads(st: Settings) -> dict[str, dict[str, Any]]:
    need = input_counts(st)
    names = set(need)
    cmd = [
        BENCH_PY,
        os.path.join(HERE, "workloads.py"),
        "generate",
        "--out",
        CACHE,
        "--only",
        *sorted(names),
    ]
    for k in sorted(names):
        cmd += ["--count", f"{k}={need[k]}"]
    log(f"generating workloads {sorted(names)} (cached under bench/.venv/cache)")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    manifests = {}
    for line in out.splitlines():
        m = json.loads(line)
        manifests[m["name"]] = m
    return manifests


def machine_description() -> dict[str, Any]:
    d: dict[str, Any] = {
        "cores": CORES,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                d["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                d["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    d["go"] = version(["go", "version"])
    d["redis_server"] = version([shutil.which("redis-server") or "redis-server", "--version"])
    d["nats_server"] = version([binary("TANDEM_NATS_SERVER_BIN", "bin/nats-server"), "--version"])
    d["celery"] = version(
        [
            BENCH_PY,
            "-c",
            "import celery, kombu, redis; print('celery', celery.__version__, 'kombu', kombu.__version__, 'redis-py', redis.__version__)",
        ]
    )
    d["grpcio"] = version([sys.executable, "-c", "import grpc; print(grpc.__version__)"])
    for name, env, default in (
        ("tandem_compute", "TANDEM_COMPUTE_BIN", "compute-rs/target/release/tandem-compute"),
        ("tandem_orchestrator", "TANDEM_ORCHESTRATOR_BIN", "bin/tandem-orchestrator"),
    ):
        p = binary(env, default)
        if os.path.exists(p):
            d[name] = {
                "path": os.path.relpath(p, ROOT),
                "sha256": sha256_file(p)[:16],
                "built": dt.datetime.fromtimestamp(os.path.getmtime(p), dt.timezone.utc).isoformat(
                    timespec="seconds"
                ),
            }
    return d


# ---------------------------------------------------------------- the run


def depth_measurements(system: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The depth driver's output as measurements (one run each), each with a
    "key" report.issue15_targets() looks up."""
    out: list[dict[str, Any]] = []
    jobs, sl = int(res["jobs"]), int(res["slice"])

    def add(key: str, workload: str, metric: str, unit: str, value: Any, **extra: Any) -> None:
        if value is None or not isinstance(value, (int, float)) or value != value:
            return
        if value in (float("inf"), float("-inf")):
            return
        out.append(
            report.measurement(
                system, workload, metric, unit, [float(value)], key=key, depth_jobs=jobs, **extra
            )
        )

    sub = res.get("submit") or {}
    add(
        "submit_rate",
        f"depth/submit_many, paused queue, {jobs:,}",
        "throughput",
        "jobs/s",
        sub.get("rate"),
    )
    add(
        "submit_first",
        f"depth/submit first {sl:,}",
        "throughput",
        "jobs/s",
        sub.get("first_slice_rate"),
    )
    add(
        "submit_last",
        f"depth/submit last {sl:,}",
        "throughput",
        "jobs/s",
        sub.get("last_slice_rate"),
    )
    base = res.get("baseline") or {}
    if base:
        add(
            "drain_baseline",
            f"depth/drain of a {base['jobs']:,} backlog",
            "throughput",
            "jobs/s",
            base.get("drain_rate"),
            jobs=base["jobs"],
        )
    dr = res.get("drain") or {}
    add(
        "drain_depth",
        f"depth/drain first {sl:,} at depth {jobs:,}",
        "throughput",
        "jobs/s",
        dr.get("first_slice_rate"),
    )
    add("drain_all", f"depth/drain all {jobs:,}", "throughput", "jobs/s", dr.get("rate"))
    st = res.get("store") or {}
    add(
        "store_per_job",
        "depth/store per queued job, queue + records",
        "size",
        "B",
        st.get("bytes_per_job"),
    )
    add(
        "store_all_per_job",
        "depth/store per queued job, all streams",
        "size",
        "B",
        st.get("all_streams_bytes_per_job"),
    )
    rss = res.get("rss") or {}
    add(
        "rss_per_job", "depth/nats-server RSS per queued job", "size", "B", rss.get("bytes_per_job")
    )
    ttl = res.get("ttl") or {}
    if ttl:
        add(
            "ttl_growth",
            f"depth/records bytes, last ÷ middle third, TTL {ttl['result_ttl_seconds']:g}s",
            "ratio",
            "×",
            (ttl.get("bytes") or {}).get("ratio"),
            residual_bytes_per_job=ttl.get("residual_bytes_per_job"),
        )
    w = res.get("writes") or {}
    if w:
        breakdown = ", ".join(
            f"{name} {v['stored_per_job']:.2f}" for name, v in sorted(w["per_stream"].items())
        )
        add(
            "stored_per_job",
            "writes/JetStream msgs stored per job",
            "count",
            "msgs",
            w.get("stored_per_job"),
            breakdown=breakdown,
            jobs=w["jobs"],
        )
        add(
            "fsyncs_per_job",
            "writes/nats-server fsyncs per job",
            "count",
            "fsyncs",
            w.get("fsyncs_per_job"),
            jobs=w["jobs"],
        )
    return out


class Bench:
    def __init__(self, st: Settings, work: str, manifests: dict[str, dict[str, Any]]) -> None:
        self.st = st
        self.work = work
        self.manifests = manifests
        self.services = svc.Services(os.path.join(work, "logs"))
        self.measurements: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        # (system, "tiny" | "user-tiny") -> median single-submit jobs/s
        self.tiny_max: dict[tuple[str, str], float] = {}
        self.jetstream_with_tandem = False
        # system -> the depth driver's output (JSON "depth")
        self.depth_results: dict[str, dict[str, Any]] = {}

    # -- helpers

    def driver(
        self, system: str, label: str, cmd: list[str], timeout: float, record: bool = True
    ) -> dict[str, Any] | None:
        """Runs one driver process; its parsed result, or None (recorded as a failure)."""
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
            if r.returncode != 0:
                raise RuntimeError(f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-1500:]}")
            res = report.parse_driver_output(r.stdout)
            if res.get("errors") or res.get("timed_out"):
                raise RuntimeError(
                    f"{res.get('errors')} errors, timed out: {res.get('timed_out')}; {res.get('note')}"
                )
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
            msg = (
                str(e)
                if not isinstance(e, subprocess.TimeoutExpired)
                else f"timed out after {timeout:.0f}s"
            )
            log(f"  FAILED {system} {label}: {msg[:400]}")
            self.failures.append({"system": system, "workload": label, "error": msg})
            return None
        res["system"] = system
        res["label"] = label
        res["wall_seconds"] = time.monotonic() - t0
        stored = {k: v for k, v in res.items() if k != "latencies"}
        if "latencies" in res and res["latencies"]:
            stored["latency_ms"] = report.latency_summary(res["latencies"])
        if record:
            self.runs.append(stored)
        return res

    def repeat(
        self, system: str, label: str, cmd: list[str], timeout: float
    ) -> list[dict[str, Any]]:
        out = []
        for i in range(self.st.repeats):
            res = self.driver(system, label, cmd, timeout)
            if res is not None:
                out.append(res)
        return out

    def driver_n(
        self, system: str, label: str, cmd: list[str], clients: int, timeout: float
    ) -> dict[str, Any] | None:
        """``clients`` driver processes at once, each on the first
        count/clients inputs (cmd's --limit), all starting their timed part
        at one instant (--start-at) after their own warm-up: one result whose
        jobs/s is all their jobs over the first start to the last result."""
        t0 = time.monotonic()
        limit = int(cmd[cmd.index("--limit") + 1])
        each = max(1, limit // clients)
        base = list(cmd)
        base[base.index("--limit") + 1] = str(each)
        # perf_counter is CLOCK_MONOTONIC on Linux: one clock for every process.
        start_at = time.perf_counter() + (8.0 if not self.st.quick else 5.0)
        procs = [
            subprocess.Popen(
                base + ["--start-at", f"{start_at:.6f}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=HERE,
            )
            for _ in range(clients)
        ]
        try:
            outs = []
            for p in procs:
                out, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
                if p.returncode != 0:
                    raise RuntimeError(f"exit {p.returncode}: {(err or out).strip()[-1500:]}")
                outs.append(report.parse_driver_output(out))
            res = report.merge_clients(outs)
            if res.get("errors") or res.get("timed_out"):
                raise RuntimeError(
                    f"{res.get('errors')} errors, timed out: {res.get('timed_out')}; {res.get('note')}"
                )
        except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
            msg = (
                str(e)
                if not isinstance(e, subprocess.TimeoutExpired)
                else f"timed out after {timeout:.0f}s"
            )
            log(f"  FAILED {system} {label} ({clients} clients): {msg[:400]}")
            self.failures.append({"system": system, "workload": label, "error": msg})
            return None
        res["system"] = system
        res["label"] = label
        res["wall_seconds"] = time.monotonic() - t0
        self.runs.append(res)
        return res

    def add_throughput(
        self, system: str, workload: str, results: list[dict[str, Any]], unit: str
    ) -> None:
        if not results:
            return
        if unit == "MB/s":
            runs = [r["input_bytes"] / 1e6 / r["elapsed_seconds"] for r in results]
        else:
            runs = [r["jobs"] / r["elapsed_seconds"] for r in results]
        m = report.measurement(system, workload, "throughput", unit, runs, jobs=results[0]["jobs"])
        self.measurements.append(m)
        log(f"  {system:<28} {workload:<14} {report.fmt_figure(m)}")

    def add_latency(
        self, system: str, load: str, results: list[dict[str, Any]], workload: str = "latency"
    ) -> None:
        if not results:
            return
        sums = [report.latency_summary(r["latencies"]) for r in results]
        rate = results[0]["rate"]
        for metric in ("p50", "p99", "p999"):
            m = report.measurement(
                system,
                workload,
                metric,
                "ms",
                [s[metric] for s in sums],
                load=load,
                rate=rate,
                jobs=int(sums[0]["count"]),
            )
            self.measurements.append(m)
        log(
            f"  {system:<28} {workload} @{load} ({rate:.0f}/s): p50 {report.fmt_num(self.measurements[-3]['median'])} ms, "
            f"p99 {report.fmt_num(self.measurements[-2]['median'])} ms, p999 {report.fmt_num(self.measurements[-1]['median'])} ms"
        )

    def latency_count(self, rate: float) -> int:
        n = int(rate * self.st.latency_seconds)
        return max(self.st.latency_min_jobs, min(self.st.latency_max_jobs, n))

    # Probe sizes, and minimum counts, of the calibration run (see sized()).
    PROBE = {"tiny": 300, "thumbnails": 16, "compress": 8}
    MIN_COUNT = {"tiny": 1000, "thumbnails": 100, "compress": 40}
    MIN_COUNT_QUICK = {"tiny": 300, "thumbnails": 12, "compress": 8}
    TARGET_SECONDS = {"tiny": 10.0, "thumbnails": 12.0, "compress": 8.0}

    def sized(self, system: str, base: list[str], workload: str) -> int:
        """The count for this system's runs of a throughput workload: the full
        count unless a short probe run says it would take longer than the
        target; then what fits (the same first-N inputs for every repeat)."""
        full = self.st.counts[workload]
        kind = workloads.input_set(workload)  # user-tiny is sized as tiny, etc.
        probe = min(full, self.PROBE[kind])
        min_count = (self.MIN_COUNT_QUICK if self.st.quick else self.MIN_COUNT)[kind]
        target = 4.0 if self.st.quick else self.TARGET_SECONDS[kind]
        if full <= min_count or self.st.quick:
            return full
        res = self.driver(
            system,
            f"{workload}/probe",
            base + ["--workload", workload, "--limit", str(probe)],
            self.timeout_for(workload),
            record=False,
        )
        if res is None:
            return min(full, min_count)
        n = report.calibrated_count(res["jobs"] / res["elapsed_seconds"], full, target, min_count)
        if n < full:
            log(
                f"  {system} {workload}: {n} of {full} inputs per run (probe: {res['jobs'] / res['elapsed_seconds']:.1f}/s)"
            )
        return n

    def unit_of(self, workload: str) -> str:
        return {"jobs": "jobs/s", "images": "images/s", "MB": "MB/s"}[
            workloads.plan()[workload].unit
        ]

    def timeout_for(self, workload: str) -> float:
        return 90.0 if self.st.quick else 600.0

    # -- limits

    def run_limits(self, jetstream: bool = True) -> None:
        """The limits: raw JetStream in both sync modes (unless the Tandem
        part measures each right before its own mode) and the native op."""
        if jetstream:
            for sync in ("always", "interval"):
                self.run_jetstream(sync)
        self.run_native()

    def run_jetstream(self, sync: str) -> None:
        nats_bin = binary("TANDEM_NATS_SERVER_BIN", "bin/nats-server")
        if not os.path.exists(nats_bin):
            self.failures.append(
                {
                    "system": f"jetstream/{sync}",
                    "workload": "limits",
                    "error": f"no nats-server at {nats_bin}",
                }
            )
            log(f"  skipping the JetStream limit: no nats-server at {nats_bin}")
            return
        jsb = ensure_jsbench()
        system = f"jetstream/{sync}"
        port = svc.free_port()
        d = tempfile.mkdtemp(prefix=f"nats-{sync}-", dir=self.work)
        conf = os.path.join(d, "nats.conf")
        with open(conf, "w") as f:
            f.write(svc.nats_conf(port, os.path.join(d, "store"), sync))
        p = self.services.start(
            f"nats-{sync}", [nats_bin, "-c", conf], ready=svc.tcp_ready(port), ready_timeout=20
        )
        try:
            # sync always runs at ~1–4k msgs/s here: fewer messages keep
            # the three phases within ~15 s, still far past start-up.
            msgs = (
                self.st.jetstream_msgs
                if sync == "interval"
                else min(self.st.jetstream_msgs, 2000 if self.st.quick else 6000)
            )
            cmd = [jsb, "-url", f"nats://127.0.0.1:{port}", "-msgs", str(msgs), "-sync", sync]
            res = self.repeat(system, "jetstream", cmd, 600)
        finally:
            self.services.stop(p)
        for key in ("pub", "consume", "pubsub"):
            if res:
                m = report.measurement(
                    system,
                    f"jetstream/{key}",
                    "throughput",
                    "msgs/s",
                    [r[key] for r in res],
                    jobs=res[0]["msgs"],
                )
                self.measurements.append(m)
                log(f"  {system:<28} {'jetstream/' + key:<18} {report.fmt_figure(m)}")

    def run_native(self) -> None:
        # The op alone, in-process.
        for w in ("tiny", "thumbnails", "compress"):
            if w not in self.manifests:
                continue
            cmd = [
                sys.executable,
                os.path.join(HERE, "native_driver.py"),
                "--data",
                CACHE,
                "--workload",
                w,
                "--threads",
                str(CORES),
            ]
            self.add_throughput("native", w, self.repeat("native", w, cmd, 600), self.unit_of(w))

    # -- Celery

    def run_celery(self) -> None:
        redis_bin = svc.ensure_redis_server()
        for persistence in self.st.redis_persistence:
            port = svc.free_port()
            d = tempfile.mkdtemp(prefix=f"redis-{persistence}-", dir=self.work)
            rp = self.services.start(
                f"redis-{persistence}",
                [redis_bin, *svc.redis_args(persistence, port, d)],
                ready=svc.redis_ready(port),
                ready_timeout=20,
            )
            try:
                url = f"redis://127.0.0.1:{port}/0"
                for mode in ("reliable", "fast"):
                    if mode == "fast" and not self.st.celery_fast_workloads:
                        continue
                    self.run_celery_mode(f"celery-{mode}/{persistence}", mode, url)
            finally:
                self.services.stop(rp)

    def run_celery_mode(self, system: str, mode: str, url: str) -> None:
        log(f"{system}: starting Redis-backed Celery worker ({CORES} prefork processes)")
        celery_bin = os.path.join(BENCH_VENV, "bin", "celery")
        env = {"BENCH_REDIS_URL": url, "BENCH_CELERY_MODE": mode, "BENCH_CONCURRENCY": str(CORES)}
        wp = self.services.start(
            system.replace("/", "-"),
            [
                celery_bin,
                "-A",
                "celery_app",
                "worker",
                "-Q",
                QUEUE,
                "--pool",
                "prefork",
                "--concurrency",
                str(CORES),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            cwd=HERE,
        )
        try:
            base = [
                BENCH_PY,
                os.path.join(HERE, "celery_driver.py"),
                "--redis-url",
                url,
                "--data",
                CACHE,
            ]
            # Celery's tasks are Python functions already: for a user-*
            # workload it runs the counterpart (the same task and inputs),
            # once even when both are wanted.
            mine = tuple(dict.fromkeys(workloads.celery_counterpart(w) for w in self.st.workloads))
            wanted = (
                mine
                if mode == "reliable"
                else tuple(w for w in mine if w in self.st.celery_fast_workloads)
            )
            self.run_workloads(system, base, wanted, celery=True)
        finally:
            self.services.stop(wp)

    # -- Tandem

    def run_tandem(self) -> None:
        compute_bin = binary("TANDEM_COMPUTE_BIN", "compute-rs/target/release/tandem-compute")
        orch_bin = binary("TANDEM_ORCHESTRATOR_BIN", "bin/tandem-orchestrator")
        for b in (compute_bin, orch_bin):
            if not os.path.exists(b):
                self.failures.append(
                    {"system": "tandem", "workload": "all", "error": f"missing binary {b}"}
                )
                log(f"skipping Tandem: missing binary {b}")
                if self.jetstream_with_tandem:
                    for sync in self.st.tandem_durability:
                        self.run_jetstream(sync)
                return
        for durability in self.st.tandem_durability:
            system = f"tandem/{durability}"
            if self.jetstream_with_tandem:
                log(f"limit: raw JetStream, sync {durability}")
                self.run_jetstream(durability)
            log(
                f"{system}: starting tandem-compute ({CORES} workers) and tandem-orchestrator (--durability {durability})"
            )
            d = tempfile.mkdtemp(prefix=f"tandem-{durability}-", dir=self.work)
            cport, oport = svc.free_port(), svc.free_port()
            cfg = os.path.join(d, "queues.toml")
            with open(cfg, "w") as f:
                f.write(
                    svc.tandem_queue_toml(
                        QUEUE,
                        self.st.extra.get("tandem_min_workers", 4),
                        self.st.extra.get("tandem_max_workers", 16),
                        1_000_000,
                    )
                )
            cp = None
            op = None
            wp = None
            nport = svc.free_port()
            try:
                cp = self.services.start(
                    f"compute-{durability}",
                    [
                        compute_bin,
                        "--listen",
                        f"127.0.0.1:{cport}",
                        "--metrics-listen",
                        f"127.0.0.1:{svc.free_port()}",
                        "--workers",
                        str(CORES),
                        "--queue-depth",
                        str(self.st.extra.get("compute_queue_depth", 64)),
                        "--log-level",
                        "warn",
                    ],
                    ready=svc.grpc_ready(f"127.0.0.1:{cport}"),
                    ready_timeout=30,
                )
                op = self.services.start(
                    f"orchestrator-{durability}",
                    [
                        orch_bin,
                        "--listen",
                        f"127.0.0.1:{oport}",
                        "--compute",
                        f"127.0.0.1:{cport}",
                        "--nats-listen",
                        f"127.0.0.1:{nport}",
                        "--data-dir",
                        os.path.join(d, "data"),
                        "--config",
                        cfg,
                        "--durability",
                        durability,
                        "--metrics-listen",
                        f"127.0.0.1:{svc.free_port()}",
                        "--log-level",
                        "warn",
                    ],
                    ready=svc.grpc_ready(f"127.0.0.1:{oport}"),
                    ready_timeout=60,
                )
                if set(self.st.workloads) & set(workloads.USER_WORKLOADS):
                    wp = self.start_op_worker(durability, f"127.0.0.1:{oport}", nport)
                base = [
                    sys.executable,
                    os.path.join(HERE, "tandem_driver.py"),
                    "--address",
                    f"127.0.0.1:{oport}",
                    "--compute-address",
                    f"127.0.0.1:{cport}",
                    "--queue",
                    QUEUE,
                    "--data",
                    CACHE,
                ]
                self.run_workloads(system, base, self.st.workloads, celery=False)
                if "roundtrip" in self.st.workloads:
                    self.run_roundtrip(system, f"127.0.0.1:{oport}")
            except Exception as e:  # noqa: BLE001
                log(f"  FAILED {system}: {e}")
                self.failures.append(
                    {"system": system, "workload": "start", "error": str(e)[-3000:]}
                )
            finally:
                if wp is not None:
                    self.services.stop(wp, timeout=40)  # SIGTERM: it drains, then exits
                if op is not None:
                    self.services.stop(op, timeout=40)
                if cp is not None:
                    self.services.stop(cp)

    def start_op_worker(self, durability: str, address: str, nats_port: int) -> Any:
        """``tandem worker user_ops:worker`` on the orchestrator's embedded
        NATS: the process pool with as many processes as Celery's prefork
        pool; ready once the orchestrator lists its ops with a live worker."""
        backlog = self.st.extra.get("tandem_worker_backlog")
        if backlog is None:
            backlog = self.st.extra.get("tandem_max_workers", 16)
        cmd = [
            sys.executable,
            "-m",
            "tandem.cli",
            "worker",
            "user_ops:worker",
            "--nats-url",
            f"nats://127.0.0.1:{nats_port}",
            "--pool",
            "process",
            "--concurrency",
            str(CORES),
            "--backlog",
            str(backlog),
            "--id",
            f"bench-{durability}-{os.getpid()}",
            "--log-level",
            "warning",
        ]
        pythonpath = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
        log(
            f"tandem/{durability}: starting tandem worker user_ops:worker "
            f"(process pool, {CORES} processes, backlog {backlog})"
        )
        return self.services.start(
            f"op-worker-{durability}",
            cmd,
            env={"PYTHONPATH": pythonpath},
            cwd=HERE,
            ready=svc.ops_ready(address, USER_OPS),
            ready_timeout=60,
        )

    # -- issue 15: round trips, the depth run, the taskiq peer

    def run_roundtrip(self, system: str, address: str) -> None:
        """Single-job round trips, one in flight, through tandem.Client."""
        cmd = [
            sys.executable,
            os.path.join(HERE, "roundtrip_driver.py"),
            "--address",
            address,
            "--queue",
            QUEUE,
            "--data",
            CACHE,
            "--count",
            str(self.st.extra.get("roundtrip_count", 50 if self.st.quick else 300)),
        ]
        self.add_latency(
            system,
            "1 in flight",
            self.repeat(system, "roundtrip", cmd, self.timeout_for("tiny")),
            workload="roundtrip",
        )

    def run_depth(self) -> None:
        """Issue 15's depth run, once per BENCH_DEPTH_DURABILITY mode: an
        external nats-server (the one binary, its own store; its pid gives
        RSS and fsyncs), compute, and an orchestrator on it (--nats-url)."""
        dp = self.st.depth
        compute_bin = binary("TANDEM_COMPUTE_BIN", "compute-rs/target/release/tandem-compute")
        orch_bin = binary("TANDEM_ORCHESTRATOR_BIN", "bin/tandem-orchestrator")
        nats_bin = binary("TANDEM_NATS_SERVER_BIN", "bin/nats-server")
        for b in (compute_bin, orch_bin, nats_bin):
            if not os.path.exists(b):
                self.failures.append(
                    {"system": "tandem", "workload": "depth", "error": f"missing binary {b}"}
                )
                return
        for durability in dp["durability"]:
            system = f"tandem/{durability}"
            log(
                f"{system}: depth run: {dp['jobs']:,} jobs on a paused queue (BENCH_DEPTH), "
                f"first/last {dp['slice']:,} compared, drain vs a {dp['baseline']:,}-job backlog, "
                f"result TTL {dp['ttl_result_ttl']:g}s under {dp['ttl_rate']:g} jobs/s for "
                f"{dp['ttl_seconds']:g}s, writes per job over {dp['writes_jobs']:,} jobs"
            )
            d = tempfile.mkdtemp(prefix=f"depth-{durability}-", dir=self.work)
            nport, cport, oport = svc.free_port(), svc.free_port(), svc.free_port()
            conf = os.path.join(d, "nats.conf")
            with open(conf, "w") as f:
                f.write(svc.nats_conf(nport, os.path.join(d, "store"), durability))
            cfg = os.path.join(d, "queues.toml")
            workers = self.st.extra.get("tandem_max_workers", 16)
            with open(cfg, "w") as f:
                f.write(
                    svc.tandem_queue_toml(
                        "depth", workers, workers, dp["jobs"] + dp["baseline"] + 100_000
                    )
                    + svc.tandem_queue_toml(
                        "ttl", workers, workers, 1_000_000, f"{dp['ttl_result_ttl']:g}s"
                    )
                )
            procs: list[Any] = []
            try:
                np_ = self.services.start(
                    f"depth-nats-{durability}",
                    [nats_bin, "-c", conf],
                    ready=svc.tcp_ready(nport),
                    ready_timeout=20,
                )
                procs.append(np_)
                procs.append(
                    self.services.start(
                        f"depth-compute-{durability}",
                        [
                            compute_bin,
                            "--listen",
                            f"127.0.0.1:{cport}",
                            "--metrics-listen",
                            f"127.0.0.1:{svc.free_port()}",
                            "--workers",
                            str(CORES),
                            "--queue-depth",
                            "64",
                            "--log-level",
                            "warn",
                        ],
                        ready=svc.grpc_ready(f"127.0.0.1:{cport}"),
                        ready_timeout=30,
                    )
                )
                procs.append(
                    self.services.start(
                        f"depth-orchestrator-{durability}",
                        [
                            orch_bin,
                            "--listen",
                            f"127.0.0.1:{oport}",
                            "--compute",
                            f"127.0.0.1:{cport}",
                            "--nats-url",
                            f"nats://127.0.0.1:{nport}",
                            "--data-dir",
                            os.path.join(d, "data"),
                            "--config",
                            cfg,
                            "--metrics-listen",
                            f"127.0.0.1:{svc.free_port()}",
                            "--log-level",
                            "warn",
                        ],
                        ready=svc.grpc_ready(f"127.0.0.1:{oport}"),
                        ready_timeout=60,
                    )
                )
                cmd = [
                    sys.executable,
                    os.path.join(HERE, "depth_driver.py"),
                    "--address",
                    f"127.0.0.1:{oport}",
                    "--nats-url",
                    f"nats://127.0.0.1:{nport}",
                    "--nats-pid",
                    str(np_.pid),
                    "--jobs",
                    str(dp["jobs"]),
                    "--slice",
                    str(dp["slice"]),
                    "--baseline",
                    str(dp["baseline"]),
                    "--ttl-seconds",
                    str(dp["ttl_seconds"]),
                    "--ttl-rate",
                    str(dp["ttl_rate"]),
                    "--ttl-result-ttl",
                    str(dp["ttl_result_ttl"]),
                    "--writes-jobs",
                    str(dp["writes_jobs"]),
                ] + (["--strace"] if shutil.which("strace") else [])
                res = self.driver(system, "depth", cmd, 4 * 3600)
                if res is not None:
                    self.add_depth(system, res)
            except Exception as e:  # noqa: BLE001
                log(f"  FAILED {system} depth: {e}")
                self.failures.append(
                    {"system": system, "workload": "depth", "error": str(e)[-3000:]}
                )
            finally:
                for p in reversed(procs):
                    self.services.stop(p, timeout=40)

    def add_depth(self, system: str, res: dict[str, Any]) -> None:
        """The depth driver's figures as measurements (one run each)."""
        for m in depth_measurements(system, res):
            self.measurements.append(m)
            log(f"  {system:<28} {m['workload']:<40} {report.fmt_figure(m)}")
        self.depth_results[system] = {k: v for k, v in res.items() if k != "latencies"}

    def run_taskiq(self) -> None:
        """The second peer: taskiq + taskiq-nats on a nats-server of its own
        (the binary Tandem embeds), sync always and default sync."""
        nats_bin = binary("TANDEM_NATS_SERVER_BIN", "bin/nats-server")
        if not os.path.exists(nats_bin):
            self.failures.append(
                {"system": "taskiq", "workload": "all", "error": f"no nats-server at {nats_bin}"}
            )
            return
        wanted = tuple(w for w in self.st.workloads if w in TASKIQ_WORKLOADS)
        for durability, system in (
            ("always", report.TASKIQ_PEER["always"]),
            ("interval", report.TASKIQ_PEER["interval"]),
        ):
            if durability not in self.st.tandem_durability:
                continue
            port = svc.free_port()
            d = tempfile.mkdtemp(prefix=f"taskiq-{durability}-", dir=self.work)
            conf = os.path.join(d, "nats.conf")
            with open(conf, "w") as f:
                f.write(svc.nats_conf(port, os.path.join(d, "store"), durability))
            url = f"nats://127.0.0.1:{port}"
            procs: list[Any] = []
            try:
                procs.append(
                    self.services.start(
                        f"taskiq-nats-{durability}",
                        [nats_bin, "-c", conf],
                        ready=svc.tcp_ready(port),
                        ready_timeout=20,
                    )
                )
                log(f"{system}: starting taskiq worker ({CORES} processes, --ack-type when_saved)")
                procs.append(
                    self.services.start(
                        system.replace("/", "-"),
                        svc.taskiq_worker_cmd(os.path.join(BENCH_VENV, "bin", "taskiq"), CORES),
                        env={"BENCH_NATS_URL": url},
                        cwd=HERE,
                    )
                )
                base = [
                    BENCH_PY,
                    os.path.join(HERE, "taskiq_driver.py"),
                    "--nats-url",
                    url,
                    "--data",
                    CACHE,
                ]
                self.run_workloads(system, base, wanted, celery=True)
            except Exception as e:  # noqa: BLE001
                log(f"  FAILED {system}: {e}")
                self.failures.append(
                    {"system": system, "workload": "start", "error": str(e)[-3000:]}
                )
            finally:
                # taskiq's worker takes minutes to exit on SIGTERM (its pull
                # loop does not see it): the group is killed after 3 s, with
                # every measured result already saved and acked.
                for p in reversed(procs):
                    self.services.stop(p, timeout=3)

    # -- workloads common to both systems

    def run_workloads(
        self, system: str, base: list[str], wanted: tuple[str, ...], celery: bool
    ) -> None:
        for tiny, latency in (("tiny", "latency"), ("user-tiny", "user-latency")):
            if celery and tiny.startswith("user-"):
                continue  # Celery runs the counterparts (run_celery_mode)
            self.run_tiny(system, base, wanted, celery, tiny, latency)
        for w in ("thumbnails", "compress", "user-thumbnails"):
            if w in wanted:
                cmd = base + ["--workload", w, "--limit", str(self.sized(system, base, w))]
                self.add_throughput(
                    system, w, self.repeat(system, w, cmd, self.timeout_for(w)), self.unit_of(w)
                )

    def run_tiny(
        self,
        system: str,
        base: list[str],
        wanted: tuple[str, ...],
        celery: bool,
        tiny: str,
        latency: str,
    ) -> None:
        """tiny (or user-tiny): single and batch submits; then latency (or
        user-latency) at 25% and 50% of the single-submit max, and for
        Tandem also at Celery's two rates (equal offered load)."""
        if tiny in wanted or latency in wanted:
            n = self.sized(system, base, tiny)
            for submit in ("single", "batch"):
                if submit == "batch" and (tiny not in wanted or system.startswith("celery-fast")):
                    continue
                label = f"{tiny}/{submit}"
                cmd = base + ["--workload", tiny, "--submit", submit, "--limit", str(n)]
                clients = self.st.extra.get("clients", 1)
                if submit == "single" and clients > 1:
                    # Single submits from concurrent client processes.
                    res = [
                        r
                        for r in (
                            self.driver_n(system, label, cmd, clients, self.timeout_for(tiny))
                            for _ in range(self.st.repeats)
                        )
                        if r is not None
                    ]
                else:
                    res = self.repeat(system, label, cmd, self.timeout_for(tiny))
                self.add_throughput(system, label, res, "jobs/s")
                if submit == "single" and res:
                    self.tiny_max[(system, tiny)] = report.summarize(
                        [r["jobs"] / r["elapsed_seconds"] for r in res]
                    )["median"]
        if (
            latency in wanted
            and (system, tiny) in self.tiny_max
            and not system.startswith("celery-fast")
        ):
            own = self.tiny_max[(system, tiny)]
            # Tandem also at 10% of its own max: issue 15's "no collapse"
            # compares its p99 at 50% with its p99 at 10%.
            pcts = (25, 50) if celery else (10, 25, 50)
            loads: list[tuple[str, float]] = [(f"{p}%", own * p / 100) for p in pcts]
            if not celery:
                d = report.SYSTEMS[system]["durability"]
                ref = (report.CELERY_REFERENCE[d], workloads.celery_counterpart(tiny))
                if ref in self.tiny_max:
                    loads += [(f"celery {p}%", self.tiny_max[ref] * p / 100) for p in (25, 50)]
            for load, rate in loads:
                cmd = base + [
                    "--workload",
                    latency,
                    "--rate",
                    f"{rate:.3f}",
                    "--count",
                    str(self.latency_count(rate)),
                ]
                self.add_latency(
                    system,
                    load,
                    self.repeat(system, f"{latency}@{load}", cmd, self.timeout_for(latency)),
                    workload=latency,
                )


def write_outputs(doc: dict[str, Any], names: list[str], results: str = RESULTS) -> list[str]:
    os.makedirs(results, exist_ok=True)
    written = []
    for name in names:
        path = os.path.join(results, f"{name}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(path + ".tmp", path)
        written.append(path)
    # The chart (matplotlib lives in the bench venv).
    json_path = written[0]
    for name in names:
        png = os.path.join(results, f"{name}.png")
        r = subprocess.run(
            [BENCH_PY, os.path.join(HERE, "chart.py"), json_path, png],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            log(f"chart failed: {r.stderr.strip()[-800:]}")
        else:
            written.append(png)
    return written


def write_targets(doc: dict[str, Any], names: list[str], results: str = RESULTS) -> list[str]:
    """<name>.targets.json for each output name (latest, and full or quick,
    as the results JSON): the issue-15 lines of this run, with what was run
    (mode, command, depth settings, machine)."""
    out = {
        "issue": 15,
        "mode": doc["mode"],
        "started": doc["started"],
        "command": doc["command"],
        "seconds": doc["seconds"],
        "depth_settings": doc["settings"].get("depth"),
        "machine": doc["machine"],
        "targets": doc["issue15_targets"],
        "failures": doc["failures"],
    }
    written = []
    os.makedirs(results, exist_ok=True)
    for name in names:
        path = os.path.join(results, f"{name}.targets.json")
        with open(path + ".tmp", "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        os.replace(path + ".tmp", path)
        written.append(path)
    return written


def depth_summary(st: Settings, ran: bool) -> str:
    dp = st.depth
    if not ran:
        return "depth run: not run (add depth to --only, or run everything)"
    return (
        f"depth run: {dp['jobs']:,} jobs (BENCH_DEPTH={dp['jobs']}; the issue's figure is "
        f"BENCH_DEPTH=1000000), durability {','.join(dp['durability'])} "
        f"(BENCH_DEPTH_DURABILITY), first/last slices of {dp['slice']:,}, "
        f"shallow backlog {dp['baseline']:,}"
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, under 2 minutes")
    ap.add_argument(
        "--only",
        action="append",
        metavar="WORKLOAD[,WORKLOAD...]",
        help=f"run only these workloads (repeatable; of {', '.join(ALL_WORKLOADS)}; "
        "user-thumbs = user-thumbnails)",
    )
    ap.add_argument("--repeats", type=int, default=0, help="runs per figure (default 3)")
    ap.add_argument(
        "--count", action="append", metavar="WORKLOAD=N", help="override a workload's job count"
    )
    ap.add_argument(
        "--latency-seconds", type=float, default=0.0, help="target length of each latency run"
    )
    ap.add_argument(
        "--celery-fast",
        choices=["tiny", "all", "off"],
        default="tiny",
        help="workloads also run with Celery's fast settings (default: tiny)",
    )
    ap.add_argument(
        "--systems",
        default="celery,tandem,taskiq",
        help="comma list of celery, tandem, taskiq (limits always run with --only limits or all)",
    )
    ap.add_argument(
        "--tandem-max-workers", type=int, default=16, help="the bench queue's max_workers"
    )
    ap.add_argument(
        "--tandem-min-workers",
        type=int,
        default=0,
        help="the bench queue's min_workers (default: max)",
    )
    ap.add_argument(
        "--tandem-worker-backlog",
        type=int,
        default=-1,
        help="user-* workloads: the op worker's --backlog (default: the queue's max_workers, "
        "so no step the orchestrator offers is refused OVERLOADED)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the work dir (logs, data) after the run"
    )
    ap.add_argument(
        "--clients",
        type=int,
        default=1,
        help="tiny/single (and user-tiny/single): client processes submitting at once, "
        "each with its share of the inputs, for every system (default 1)",
    )
    ap.add_argument(
        "--results",
        default=RESULTS,
        metavar="DIR",
        help="where the JSON, the chart and <name>.targets.json go (default bench/results)",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats and args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    st = settings_from(args)
    st.extra["tandem_max_workers"] = args.tandem_max_workers
    st.extra["tandem_min_workers"] = args.tandem_min_workers or args.tandem_max_workers
    st.extra["tandem_worker_backlog"] = (
        args.tandem_worker_backlog if args.tandem_worker_backlog >= 0 else args.tandem_max_workers
    )
    st.extra["tandem_worker_concurrency"] = CORES
    if args.clients < 1:
        raise SystemExit("--clients must be >= 1")
    st.extra["clients"] = args.clients
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}

    svc.install_signal_handlers()
    started = dt.datetime.now(dt.timezone.utc)
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="tandem-bench-")
    bench: Bench | None = None
    interrupted = False
    try:
        ensure_bench_venv()
        manifests = generate_workloads(st)
        bench = Bench(st, work, manifests)
        parts: list[tuple[str, Callable[[], None]]] = []
        tandem_runs = "tandem" in systems and bool(set(st.workloads) - {"limits", "depth"})
        bench.jetstream_with_tandem = "limits" in st.workloads and tandem_runs
        if "limits" in st.workloads:
            # With Tandem running, each raw JetStream mode is measured right
            # before Tandem's own mode (fsync costs drift on a shared disk).
            parts.append(("limits", lambda: bench.run_limits(jetstream=not tandem_runs)))
        if "celery" in systems and set(st.workloads) - {"limits", *TANDEM_ONLY}:
            parts.append(("celery", bench.run_celery))
        if "taskiq" in systems and set(st.workloads) & set(TASKIQ_WORKLOADS):
            parts.append(("taskiq", bench.run_taskiq))
        if tandem_runs:
            parts.append(("tandem", bench.run_tandem))
        if "tandem" in systems and "depth" in st.workloads:
            parts.append(("depth", bench.run_depth))
        for name, part in parts:
            if name == "limits":
                log(
                    "limits: tandem._native in-process"
                    + ("" if tandem_runs else ", raw JetStream (both sync modes)")
                )
            try:
                part()
            except Exception as e:  # noqa: BLE001 - report it, run the rest
                log(f"FAILED {name}: {e!r}")
                bench.failures.append({"system": name, "workload": "all", "error": repr(e)[-3000:]})
                bench.services.stop_all()
    except KeyboardInterrupt:
        log("interrupted: stopping everything; writing what was measured")
        interrupted = True
        if bench is None:
            return 130
    finally:
        if bench is not None:
            bench.services.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work dir kept: {work}")

    # "full" only for the run the README reports: every workload and system,
    # default sizes and repeats; anything narrower is "custom" (latest.* only).
    custom = bool(
        args.only
        or args.count
        or args.repeats
        or args.latency_seconds
        or systems != {"celery", "tandem", "taskiq"}
        or args.celery_fast != "tiny"
        or args.clients != 1
    )
    mode = "quick" if st.quick else ("custom" if custom else "full")
    rows = report.build_rows(bench.measurements)
    checks = report.check_targets(rows)
    checks15 = report.issue15_targets(rows)
    doc = {
        "mode": mode,
        "interrupted": interrupted,
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t_start, 1),
        "machine": machine_description(),
        "settings": {
            "repeats": st.repeats,
            "counts": st.counts,
            "latency_seconds": st.latency_seconds,
            "jetstream_msgs": st.jetstream_msgs,
            "workloads": st.workloads,
            "celery_fast_workloads": st.celery_fast_workloads,
            "cores": CORES,
            "depth": st.depth,
            **st.extra,
        },
        "workloads": {
            k: {kk: vv for kk, vv in m.items() if kk != "sizes"} for k, m in bench.manifests.items()
        },
        "systems": report.SYSTEMS,
        "measurements": bench.measurements,
        "rows": rows,
        "targets": checks,
        "issue15_targets": checks15,
        "depth": bench.depth_results,
        "failures": bench.failures,
        "runs": bench.runs,
    }
    names = ["latest"] + ([] if mode == "custom" else [mode])
    try:
        written = write_outputs(doc, names, args.results)
        written += write_targets(doc, names, args.results)
    except KeyboardInterrupt:
        log("interrupted while writing the results")
        return 130
    print()
    print(report.format_table(rows))
    if checks:
        print('\nTargets (goals from issue 6 and issue "Your own ops", not asserts):')
        print(report.format_targets(checks))
    print(
        "\nIssue 15 targets (figures of this run; ratios against this run's Celery; goals, not asserts):"
    )
    print(report.format_issue15(checks15))
    print(depth_summary(st, "depth" in st.workloads and "tandem" in systems))
    if bench.failures:
        print(f"\n{len(bench.failures)} run(s) failed:")
        for f in bench.failures:
            print(f"  {f['system']} {f['workload']}: {f['error'][:300]}")
    print(
        f"\nwrote {', '.join(os.path.relpath(p, ROOT) for p in written)} in {doc['seconds']:.0f}s"
    )
    if interrupted:
        return 130
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 15's report: the targets printer on a small result set, the depth
run's figures, its settings and the depth driver's pure helpers (no services)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import depth_driver
import report
import run


def m(system: str, workload: str, metric: str, unit: str, v: float, **kw: Any) -> dict[str, Any]:
    return report.measurement(system, workload, metric, unit, [v], **kw)


def lat(system: str, load: str, p99: float, workload: str = "latency") -> list[dict[str, Any]]:
    return [
        m(system, workload, "p50", "ms", p99 / 4, load=load),
        m(system, workload, "p99", "ms", p99, load=load),
        m(system, workload, "p999", "ms", p99 * 1.2, load=load),
    ]


DEPTH_RESULT: dict[str, Any] = {
    "jobs": 1000,
    "slice": 100,
    "submit": {"rate": 3000.0, "first_slice_rate": 3100.0, "last_slice_rate": 2000.0},
    "baseline": {"jobs": 200, "drain_rate": 1500.0},
    "drain": {"rate": 2300.0, "first_slice_rate": 2400.0},
    "store": {"bytes_per_job": 400.0, "all_streams_bytes_per_job": 700.0},
    "rss": {"bytes_per_job": 900.0},
    "ttl": {"result_ttl_seconds": 2.0, "bytes": {"ratio": 1.05}, "residual_bytes_per_job": 150.0},
    "writes": {
        "jobs": 50,
        "stored_per_job": 5.0,
        "fsyncs_per_job": 6.0,
        "per_stream": {
            "KV_tandem_jobs": {"stored_per_job": 3.0},
            "TANDEM_Q_depth": {"stored_per_job": 1.0},
            "KV_tandem_idem": {"stored_per_job": 1.0},
        },
    },
}


def small_run() -> list[dict[str, Any]]:
    """Interval mode fully measured; always mode with tiny only."""
    ms = [
        m("celery-reliable/default", "tiny/batch", "throughput", "jobs/s", 500.0),
        m("celery-reliable/default", "tiny/single", "throughput", "jobs/s", 400.0),
        m("tandem/interval", "tiny/batch", "throughput", "jobs/s", 6000.0),  # 12× : met
        m("tandem/interval", "tiny/single", "throughput", "jobs/s", 3000.0),  # 7.5× : missed
        m("tandem/always", "tiny/batch", "throughput", "jobs/s", 800.0),  # no Celery ref
        *lat("celery-reliable/default", "25%", 20.0),
        *lat("celery-reliable/default", "50%", 40.0),
        *lat("tandem/interval", "celery 25%", 3.0),  # <= 4 : met
        *lat("tandem/interval", "celery 50%", 9.0),  # > 8 : missed
        *lat("tandem/interval", "10%", 5.0),
        *lat("tandem/interval", "50%", 14.0),  # <= 15 : met
        *lat("tandem/interval", "1 in flight", 3.6, workload="roundtrip"),  # p50 0.9 : met
        m("native", "thumbnails", "throughput", "images/s", 100.0),
        m("tandem/interval", "thumbnails", "throughput", "images/s", 69.0),  # missed
        m("taskiq/default", "tiny/batch", "throughput", "jobs/s", 1500.0),
        *run.depth_measurements("tandem/interval", DEPTH_RESULT),
    ]
    return report.build_rows(ms)


def by(checks: list[dict[str, Any]], system: str, target_start: str) -> dict[str, Any]:
    [c] = [c for c in checks if c["system"] == system and c["target"].startswith(target_start)]
    return c


def test_every_issue15_target_is_listed_for_both_modes() -> None:
    checks = report.issue15_targets([])
    for system in ("tandem/always", "tandem/interval"):
        names = [c["target"] for c in checks if c["system"] == system]
        assert len(names) == len(set(names))
        for start in (
            "tiny/batch ≥ 10×",
            "tiny/single ≥ 10×",
            "p99 ≤ 1/5 of Celery @Celery's 25%",
            "p99 ≤ 1/5 of Celery @Celery's 50%",
            "round trip p50",
            "no collapse",
            "thumbnails ≥ 70%",
            "compress ≥ 70%",
            "depth: submit rate flat",
            "depth: drain rate",
            "depth: store bytes",
            "depth: nats-server RSS",
            "result TTL",
            "Python client alone",
            "writes:",
            "fsyncs per job",
            "tiny/batch: Tandem ÷ taskiq",
            "thumbnails: Tandem ÷ taskiq",
        ):
            assert any(n.startswith(start) for n in names), (system, start)
    assert {c["status"] for c in checks} == {"NOT RUN"}


def test_targets_met_missed_and_missing_from_one_run() -> None:
    checks = report.issue15_targets(small_run())
    i = "tandem/interval"
    tb = by(checks, i, "tiny/batch ≥")
    assert (tb["status"], tb["figure"], tb["threshold"]) == ("MET", 6000.0, 5000.0)
    assert by(checks, i, "tiny/single ≥")["status"] == "MISSED"
    p25 = by(checks, i, "p99 ≤ 1/5 of Celery @Celery's 25%")
    assert (p25["status"], p25["threshold"]) == ("MET", pytest.approx(4.0))
    assert by(checks, i, "p99 ≤ 1/5 of Celery @Celery's 50%")["status"] == "MISSED"
    rt = by(checks, i, "round trip")
    assert (rt["status"], rt["figure"], rt["threshold"]) == ("MET", pytest.approx(0.9), 1.0)
    assert by(checks, "tandem/always", "round trip")["threshold"] == 2.0
    nc = by(checks, i, "no collapse")
    assert (nc["status"], nc["threshold"]) == ("MET", pytest.approx(15.0))
    th = by(checks, i, "thumbnails ≥ 70%")
    assert (th["status"], th["threshold"]) == ("MISSED", pytest.approx(70.0))
    assert by(checks, i, "compress ≥ 70%")["status"] == "NOT RUN"
    # A figure without the one it is measured against.
    nr = by(checks, "tandem/always", "tiny/batch ≥")
    assert (nr["status"], nr["figure"]) == ("NO REF", 800.0)
    tq = by(checks, i, "tiny/batch: Tandem ÷ taskiq")
    assert (tq["status"], tq["figure"]) == ("info", pytest.approx(4.0))


def test_depth_targets_from_the_depth_drivers_output() -> None:
    checks = report.issue15_targets(small_run())
    i = "tandem/interval"
    flat = by(checks, i, "depth: submit rate flat")
    assert (flat["status"], flat["figure"]) == ("MISSED", 2000.0)  # < 80% of 3,100
    assert flat["threshold"] == pytest.approx(2480.0)
    assert "depth 1,000" in flat["target"]
    assert by(checks, i, "depth: drain rate")["status"] == "MET"  # 2,400 vs 1,500
    st = by(checks, i, "depth: store bytes")
    assert (st["status"], st["threshold"]) == ("MET", pytest.approx(0.95 * 1024 / 2))
    assert by(checks, i, "depth: nats-server RSS")["status"] == "MISSED"
    ttl = by(checks, i, "result TTL")
    assert ttl["status"] == "MET" and "still 150 B added per job" in ttl["threshold_text"]
    cl = by(checks, i, "Python client alone")
    assert (cl["status"], cl["threshold"]) == ("MISSED", 5000.0)  # 10 × Celery batch
    w = by(checks, i, "writes:")
    assert (w["status"], w["figure"]) == ("info", 5.0)
    assert "KV_tandem_jobs 3.00" in w["threshold_text"]
    assert by(checks, i, "fsyncs per job")["figure"] == 6.0
    # Depth was not run for always: every depth line says so.
    assert by(checks, "tandem/always", "depth: store bytes")["status"] == "NOT RUN"


def test_issue15_printout_has_status_figure_and_threshold() -> None:
    text = report.format_issue15(report.issue15_targets(small_run()))
    lines = text.splitlines()
    assert len(lines) == len(report.issue15_targets([]))
    line = next(ln for ln in lines if "tiny/batch ≥ 10×" in ln and "tandem/interval" in ln)
    assert line.startswith("MET ")
    assert "6,000 jobs/s" in line and ">= 5,000 jobs/s" in line
    assert "10 × celery-reliable/default 500" in line
    assert any(ln.startswith("MISSED") for ln in lines)
    assert any(ln.startswith("NOT RUN") for ln in lines)
    json.dumps(report.issue15_targets(small_run()))  # what targets.json holds


def test_depth_rows_show_in_the_table_without_ratios() -> None:
    rows = report.build_rows(run.depth_measurements("tandem/always", DEPTH_RESULT))
    table = report.format_table(rows)
    assert "depth/submit first 100" in table and "depth/submit last 100" in table
    assert "depth/store per queued job, queue + records" in table and "400 B" in table
    assert "writes/nats-server fsyncs per job" in table
    assert all(r["ratio_to_celery"] is None for r in rows)


def test_depth_measurements_skip_what_was_not_measured() -> None:
    res = {"jobs": 10, "slice": 1, "submit": {"rate": 5.0}, "writes": {}, "rss": {}}
    ms = run.depth_measurements("tandem/always", res)
    assert [x["key"] for x in ms] == ["submit_rate"]
    nan = {"jobs": 10, "slice": 1, "ttl": {"result_ttl_seconds": 1, "bytes": {"ratio": None}}}
    assert run.depth_measurements("tandem/always", nan) == []


def test_depth_settings_from_the_environment() -> None:
    d = run.depth_settings(False, {})
    assert (d["jobs"], d["slice"], d["baseline"], d["durability"]) == (
        200_000,
        20_000,
        10_000,
        ("interval",),
    )
    # make passes unset variables as empty strings: they mean the defaults.
    assert run.depth_settings(False, {"BENCH_DEPTH": "", "BENCH_DEPTH_DURABILITY": ""}) == d
    big = run.depth_settings(False, {"BENCH_DEPTH": "1_000_000"})
    assert (big["jobs"], big["slice"]) == (1_000_000, 100_000)
    q = run.depth_settings(True, {"BENCH_DEPTH_DURABILITY": "always,interval"})
    assert q["jobs"] == 5000 and q["durability"] == ("always", "interval")
    with pytest.raises(SystemExit, match="BENCH_DEPTH"):
        run.depth_settings(False, {"BENCH_DEPTH": "lots"})
    with pytest.raises(SystemExit, match="at least 100"):
        run.depth_settings(False, {"BENCH_DEPTH": "5"})
    with pytest.raises(SystemExit, match="BENCH_DEPTH_DURABILITY"):
        run.depth_settings(False, {"BENCH_DEPTH_DURABILITY": "sometimes"})


def test_only_knows_the_new_workloads() -> None:
    assert run.parse_only(["depth,roundtrip"]) == ("roundtrip", "depth")


def test_vm_rss_and_strace_summary_parsing() -> None:
    status = "Name:\tnats-server\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n"
    assert depth_driver.vm_rss_bytes(status) == 12345 * 1024
    with pytest.raises(ValueError):
        depth_driver.vm_rss_bytes("Name: x\n")
    summary = (
        "% time     seconds  usecs/call     calls    errors syscall\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        " 99.50    1.234567         204      6050           fsync\n"
        "  0.50    0.006000          60       100         2 fdatasync\n"
        "------ ----------- ----------- --------- --------- ----------------\n"
        "100.00    1.240567         201      6150         2 total\n"
    )
    assert depth_driver.strace_calls(summary) == 6150


def test_stream_deltas_count_stored_messages_per_job() -> None:
    before = {
        "KV_tandem_jobs": {"last_seq": 10, "bytes": 100, "messages": 5},
        "IDLE": {"last_seq": 3, "bytes": 30, "messages": 3},
    }
    after = {
        "KV_tandem_jobs": {"last_seq": 40, "bytes": 400, "messages": 15},
        "IDLE": {"last_seq": 3, "bytes": 30, "messages": 3},
        "NEW": {"last_seq": 10, "bytes": 50, "messages": 0},
    }
    d = depth_driver.stream_deltas(before, after, 10)
    assert set(d) == {"KV_tandem_jobs", "NEW"}
    assert d["KV_tandem_jobs"]["stored_per_job"] == 3.0
    assert d["NEW"] == {"stored": 10.0, "stored_per_job": 1.0, "bytes_delta": 50.0}


def test_bounded_compares_the_last_third_with_the_middle() -> None:
    flat = [(float(t), 1000 + (t % 2)) for t in range(30)]
    assert depth_driver.bounded(flat)["bounded"] is True
    growing = [(float(t), 100 * t) for t in range(30)]
    g = depth_driver.bounded(growing)
    assert g["bounded"] is False and g["ratio"] > 1.25
    assert depth_driver.bounded(growing[:3])["bounded"] is None


def test_concurrent_clients_merge_into_one_figure() -> None:
    a = {"bench_result": 1, "jobs": 100, "errors": 0, "note": "", "t0": 10.0, "t_end": 12.0}
    b = {"bench_result": 1, "jobs": 100, "errors": 1, "note": "x", "t0": 10.5, "t_end": 14.0}
    r = report.merge_clients([a, b])
    assert (r["clients"], r["jobs"], r["errors"], r["note"]) == (2, 200, 1, "x")
    assert r["elapsed_seconds"] == 4.0 and r["start_spread_seconds"] == 0.5
    with pytest.raises(ValueError):
        report.merge_clients([{"jobs": 1}])
    with pytest.raises(ValueError):
        report.merge_clients([])


def test_store_and_records_fall_back_to_every_stream() -> None:
    st = {
        "A": {"last_seq": 1, "bytes": 10, "messages": 1},
        "B": {"last_seq": 2, "bytes": 20, "messages": 2},
    }
    assert depth_driver.store_bytes(st, ["A", "GONE"]) == 10
    assert depth_driver.store_bytes(st, ["GONE"]) == 30
    assert depth_driver.records_size(st, "B") == (20, 2)
    assert depth_driver.records_size(st, "GONE") == (30, 3)

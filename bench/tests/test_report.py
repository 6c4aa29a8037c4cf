"""Statistics, result parsing, ratios, fractions, the table and targets."""

from __future__ import annotations

import json
from typing import Any

import pytest

import report


def test_percentile_interpolates() -> None:
    v = list(range(1, 101))  # 1..100
    assert report.percentile(v, 0) == 1
    assert report.percentile(v, 100) == 100
    assert report.percentile(v, 50) == pytest.approx(50.5)
    assert report.percentile([5.0], 99) == 5.0
    assert report.percentile([3, 1, 2], 50) == 2
    with pytest.raises(ValueError):
        report.percentile([], 50)
    with pytest.raises(ValueError):
        report.percentile([1], 101)


def test_latency_summary_in_ms() -> None:
    s = report.latency_summary([0.001] * 990 + [0.1] * 10)
    assert s["p50"] == pytest.approx(1.0)
    assert s["p999"] == pytest.approx(100.0)
    assert s["max"] == pytest.approx(100.0)
    assert s["count"] == 1000


def test_summarize_median_min_max() -> None:
    assert report.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert report.summarize([1.0, 2.0, 3.0, 4.0])["median"] == 2.5
    with pytest.raises(ValueError):
        report.summarize([])


def test_calibrated_count() -> None:
    assert report.calibrated_count(5000.0, 20000, 12.0, 1000) == 20000
    assert report.calibrated_count(80.0, 20000, 12.0, 1000) == 1000
    assert report.calibrated_count(500.0, 20000, 12.0, 1000) == 6000
    assert report.calibrated_count(0.0, 20000, 12.0, 1000) == 1000
    assert report.calibrated_count(1.0, 50, 12.0, 100) == 50


def test_parse_driver_output_takes_last_result_line() -> None:
    text = (
        "progress...\n"
        + json.dumps({"bench_result": 1, "jobs": 1})
        + "\nnoise {not json\n"
        + json.dumps({"bench_result": 1, "jobs": 2})
        + "\n"
    )
    assert report.parse_driver_output(text)["jobs"] == 2
    with pytest.raises(ValueError):
        report.parse_driver_output('nothing here\n{"other": 1}\n')


def test_parse_jsbench() -> None:
    line = json.dumps(
        {"bench_result": 1, "pub": 4031.0, "consume": 4291.7, "pubsub": 2103.0, "sync": "always"}
    )
    assert report.parse_jsbench(line) == {"pub": 4031.0, "consume": 4291.7, "pubsub": 2103.0}
    with pytest.raises(ValueError, match="pubsub"):
        report.parse_jsbench(
            json.dumps({"bench_result": 1, "pub": 1.0, "consume": 1.0, "pubsub": 0})
        )


def _m(
    system: str,
    workload: str,
    median: float,
    metric: str = "throughput",
    unit: str = "jobs/s",
    load: str = "",
) -> dict[str, Any]:
    extra = {"load": load} if load else {}
    return report.measurement(
        system, workload, metric, unit, [median * 0.9, median, median * 1.1], **extra
    )


def sample() -> list[dict[str, Any]]:
    return [
        _m("tandem/always", "tiny/batch", 1500.0),
        _m("tandem/interval", "tiny/batch", 9000.0),
        _m("celery-reliable/aof-always", "tiny/batch", 75.0),
        _m("celery-reliable/default", "tiny/batch", 600.0),
        _m("celery-fast/default", "tiny/batch", 900.0),
        _m("jetstream/always", "jetstream/pubsub", 2000.0, unit="msgs/s"),
        _m("jetstream/interval", "jetstream/pubsub", 50000.0, unit="msgs/s"),
        _m("tandem/always", "thumbnails", 30.0, unit="images/s"),
        _m("celery-reliable/aof-always", "thumbnails", 25.0, unit="images/s"),
        _m("native", "thumbnails", 40.0, unit="images/s"),
        _m("tandem/always", "latency", 4.0, metric="p99", unit="ms", load="celery 50%"),
        _m("tandem/always", "latency", 3.0, metric="p99", unit="ms", load="50%"),
        _m("celery-reliable/aof-always", "latency", 160.0, metric="p99", unit="ms", load="50%"),
    ]


def row(
    rows: list[dict[str, Any]],
    system: str,
    workload: str,
    metric: str = "throughput",
    load: str = "",
) -> dict[str, Any]:
    [r] = [
        r
        for r in rows
        if (r["system"], r["workload"], r["metric"], r.get("load", ""))
        == (system, workload, metric, load)
    ]
    return r


def test_ratios_pair_equal_durability_with_reliable_celery() -> None:
    rows = report.build_rows(sample())
    assert row(rows, "tandem/always", "tiny/batch")["ratio_to_celery"] == pytest.approx(20.0)
    assert row(rows, "tandem/interval", "tiny/batch")["ratio_to_celery"] == pytest.approx(15.0)
    assert row(rows, "celery-fast/default", "tiny/batch")["ratio_to_celery"] == pytest.approx(1.5)
    assert row(rows, "celery-reliable/default", "tiny/batch")["ratio_to_celery"] == pytest.approx(
        1.0
    )


def test_fractions_of_limits() -> None:
    rows = report.build_rows(sample())
    assert row(rows, "tandem/always", "tiny/batch")["fraction_of_limit"] == pytest.approx(0.75)
    assert row(rows, "tandem/interval", "tiny/batch")["fraction_of_limit"] == pytest.approx(0.18)
    assert row(rows, "tandem/always", "thumbnails")["fraction_of_limit"] == pytest.approx(0.75)
    # Limit rows have neither.
    lim = row(rows, "native", "thumbnails")
    assert lim["ratio_to_celery"] is None and lim["fraction_of_limit"] is None


def test_latency_compares_equal_offered_load_only() -> None:
    rows = report.build_rows(sample())
    assert row(rows, "tandem/always", "latency", "p99", "celery 50%")[
        "ratio_to_celery"
    ] == pytest.approx(0.025)
    assert row(rows, "tandem/always", "latency", "p99", "50%")["ratio_to_celery"] is None
    assert (
        row(rows, "celery-reliable/aof-always", "latency", "p99", "50%")["ratio_to_celery"] is None
    )


def test_missing_reference_gives_none() -> None:
    rows = report.build_rows([_m("tandem/always", "compress", 100.0, unit="MB/s")])
    assert rows[0]["ratio_to_celery"] is None and rows[0]["fraction_of_limit"] is None


def test_table_lists_every_row_with_ratio_and_fraction() -> None:
    rows = report.build_rows(sample())
    text = report.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["system", "workload"]
    assert len(lines) == 2 + len(rows)
    line = next(ln for ln in lines if ln.startswith("tandem/always") and "tiny/batch" in ln)
    assert "1,500 jobs/s (1,350–1,650)" in line and "20.00×" in line and "75%" in line
    # Limit figures come last.
    assert lines[-1].startswith(("jetstream", "native"))


def test_targets_are_checked_not_asserted() -> None:
    checks = report.check_targets(report.build_rows(sample()))
    by = {(c["target"], c["system"]): c for c in checks}
    assert by[("tiny ≥ 10× Celery", "tandem/always")]["met"] is True
    assert by[("tiny ≥ 25% of JetStream", "tandem/interval")]["met"] is False
    assert by[("latency p99 ≤ 1/5 of Celery", "tandem/always")]["met"] is True
    assert by[("thumbnails ≥ 1.5× Celery", "tandem/always")]["met"] is False
    text = report.format_targets(checks)
    assert "MISSED" in text and "met" in text


def test_latency_percentiles_share_one_line() -> None:
    ms = [
        _m("tandem/always", "latency", v, metric=q, unit="ms", load="celery 50%")
        for q, v in (("p50", 2.0), ("p99", 4.0), ("p999", 9.0))
    ]
    ms += [_m("celery-reliable/aof-always", "latency", 160.0, metric="p99", unit="ms", load="50%")]
    text = report.format_table(report.build_rows(ms))
    [line] = [ln for ln in text.splitlines() if ln.startswith("tandem/always")]
    assert "p50 2.00 / p99 4.00 / p999 9.00 ms" in line
    assert "p99 0.03×" in line


def test_markdown_section() -> None:
    ms = sample()
    doc = {
        "measurements": ms,
        "machine": {"cpu": "X", "cores": 2},
        "settings": {"repeats": 3},
        "command": "python bench/run.py",
        "started": "t",
    }
    md = report.format_markdown(doc)
    lines = md.splitlines()
    assert lines[0].startswith("| system | workload |")
    assert any(ln.startswith("| tandem/always | tiny/batch | 1,500 jobs/s") for ln in lines)
    assert "median of 3 runs" in md and "MISSED" in md


def user_sample() -> list[dict[str, Any]]:
    """Tandem's Python-op rows beside Celery's rows of the same tasks."""
    return [
        _m("tandem/always", "user-tiny/single", 900.0),
        _m("tandem/interval", "user-tiny/batch", 2000.0),
        _m("celery-reliable/aof-always", "tiny/single", 300.0),
        _m("celery-reliable/default", "tiny/batch", 800.0),
        _m("jetstream/always", "jetstream/pubsub", 2000.0, unit="msgs/s"),
        _m("tandem/always", "user-thumbnails", 60.0, unit="images/s"),
        _m("tandem/interval", "user-thumbnails", 70.0, unit="images/s"),
        _m("celery-reliable/aof-always", "thumbnails", 40.0, unit="images/s"),
        _m("celery-reliable/default", "thumbnails", 63.0, unit="images/s"),
        _m("native", "thumbnails", 200.0, unit="images/s"),
        _m("tandem/always", "user-latency", 12.0, metric="p99", unit="ms", load="celery 50%"),
        _m("tandem/always", "user-latency", 5.0, metric="p50", unit="ms", load="celery 50%"),
        _m("tandem/always", "latency", 30.0, metric="p99", unit="ms", load="celery 50%"),
        _m("celery-reliable/aof-always", "latency", 40.0, metric="p99", unit="ms", load="50%"),
    ]


def test_celery_workload_maps_user_workloads_to_their_counterparts() -> None:
    assert report.celery_workload("user-tiny/single") == "tiny/single"
    assert report.celery_workload("user-tiny/batch") == "tiny/batch"
    assert report.celery_workload("user-thumbnails") == "thumbnails"
    assert report.celery_workload("user-latency") == "latency"
    assert report.celery_workload("tiny/single") == "tiny/single"
    assert report.celery_workload("compress") == "compress"


def test_user_rows_take_celerys_rows_of_the_same_task() -> None:
    rows = report.build_rows(user_sample())
    r = row(rows, "tandem/always", "user-tiny/single")
    assert r["ratio_to_celery"] == pytest.approx(3.0)
    assert r["celery_reference"] == "celery-reliable/aof-always"
    # A Python op's job crosses JetStream like any other: the same limit.
    assert r["fraction_of_limit"] == pytest.approx(0.45)
    assert row(rows, "tandem/interval", "user-tiny/batch")["ratio_to_celery"] == pytest.approx(2.5)
    th = row(rows, "tandem/always", "user-thumbnails")
    assert th["ratio_to_celery"] == pytest.approx(1.5)
    # The native figure is the Rust op's: no limit for the Pillow op.
    assert th["fraction_of_limit"] is None
    assert row(rows, "tandem/interval", "user-thumbnails")["ratio_to_celery"] == pytest.approx(
        70.0 / 63.0
    )
    # Latency: equal offered load, against Celery's latency row.
    lat = row(rows, "tandem/always", "user-latency", "p99", "celery 50%")
    assert lat["ratio_to_celery"] == pytest.approx(0.3)


def test_user_rows_in_the_table() -> None:
    text = report.format_table(report.build_rows(user_sample()))
    lines = text.splitlines()
    [tiny] = [ln for ln in lines if "user-tiny/single" in ln]
    assert tiny.startswith("tandem/always") and "900 jobs/s (810–990)" in tiny and "3.00×" in tiny
    [thumbs] = [ln for ln in lines if ln.startswith("tandem/always") and "user-thumbnails" in ln]
    assert "60.0 images/s" in thumbs and "1.50×" in thumbs
    # The Python op's latency and the Rust op's keep lines of their own.
    [user_lat] = [ln for ln in lines if "user-latency @celery 50%" in ln]
    assert "p50 5.00 / p99 12.0 ms" in user_lat and "p99 0.30×" in user_lat
    [rust_lat] = [ln for ln in lines if ln.split()[1:3] == ["latency", "@celery"]]
    assert "p99 30.0 ms" in rust_lat and "p99 0.75×" in rust_lat


def test_user_targets_met_and_missed() -> None:
    checks = report.check_targets(report.build_rows(user_sample()))
    by = {(c["target"], c["system"], c["workload"]): c for c in checks}
    t = by[("user-tiny ≥ 3× Celery", "tandem/always", "user-tiny/single")]
    assert t["met"] is True and t["value"] == pytest.approx(3.0) and t["bound"] == 3.0
    assert by[("user-tiny ≥ 3× Celery", "tandem/interval", "user-tiny/batch")]["met"] is False
    assert by[("user-thumbnails ≥ 1.2× Celery", "tandem/always", "user-thumbnails")]["met"] is True
    assert (
        by[("user-thumbnails ≥ 1.2× Celery", "tandem/interval", "user-thumbnails")]["met"] is False
    )
    # The Rust-op targets do not pick up the Python-op rows.
    assert not [c for c in checks if c["target"].startswith("tiny") and "user" in c["workload"]]
    assert not [c for c in checks if c["target"].startswith("thumbnails")]
    text = report.format_targets(checks)
    assert "met     user-tiny ≥ 3× Celery" in text
    assert "MISSED  user-thumbnails ≥ 1.2× Celery" in text and "1.11 (goal >= 1.2)" in text

"""Workload generation: deterministic, right sizes, no third-party imports."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

import workloads


def test_tiny_payloads_are_deterministic_and_distinct() -> None:
    a = workloads.tiny_payloads(50)
    b = workloads.tiny_payloads(50)
    assert a == b
    assert all(len(p) == workloads.TINY_SIZE for p in a)
    assert len(set(a)) == 50
    # Pinned: a change here changes every published figure's inputs, so it
    # must come with a GENERATOR_VERSION bump.
    assert hashlib.sha256(a[0]).hexdigest() == hashlib.sha256(workloads.tiny_payload(0)).hexdigest()


def test_seed_and_index_change_the_bytes() -> None:
    assert workloads.tiny_payload(0, seed=1) != workloads.tiny_payload(0, seed=2)
    assert workloads.tiny_payload(0) != workloads.tiny_payload(1)


def test_text_blob_is_deterministic_ascii_of_exact_size() -> None:
    a = workloads.text_blob(3, size=100_000)
    assert a == workloads.text_blob(3, size=100_000)
    assert len(a) == 100_000
    a.decode("ascii")
    assert a != workloads.text_blob(4, size=100_000)
    # Prose-like: many repeated words, so it compresses but is not trivial.
    import zlib

    ratio = len(zlib.compress(a, 6)) / len(a)
    assert 0.15 < ratio < 0.6


def test_image_recipe_is_pure_data_and_deterministic() -> None:
    r1 = workloads.image_recipe(7)
    r2 = workloads.image_recipe(7)
    assert r1 == r2
    assert r1 != workloads.image_recipe(8)
    assert len(r1["field"]) == 48 * 27 * 3
    for s in r1["shapes"]:
        x0, y0, x1, y1 = s["box"]
        assert x0 <= x1 and y0 <= y1


def test_render_jpeg_is_deterministic() -> None:
    from PIL import Image as pil  # in tools/requirements-dev.txt

    a = workloads.render_jpeg(0)
    assert a == workloads.render_jpeg(0)
    assert a[:2] == b"\xff\xd8"
    import io

    with pil.open(io.BytesIO(a)) as im:
        assert im.size == (workloads.IMAGE_WIDTH, workloads.IMAGE_HEIGHT)


def test_harness_modules_import_without_the_bench_venv() -> None:
    # workloads and report must not pull in Pillow, Celery or zstandard.
    import os
    import subprocess

    bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; sys.path.insert(0, %r); import workloads, report; "
        "bad = [m for m in ('PIL', 'celery', 'zstandard', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    ) % bench
    subprocess.run([sys.executable, "-c", code], check=True)


def test_write_and_load_round_trip_and_cache(tmp_path: Path) -> None:
    m = workloads.write_workload(str(tmp_path), "tiny", 20)
    assert m["count"] == 20 and m["total_bytes"] == 20 * workloads.TINY_SIZE
    assert m["sha256"] == workloads.fingerprint(workloads.tiny_payloads(20))
    m2, blobs = workloads.load_workload(str(tmp_path), "tiny")
    assert m2 == m
    assert blobs == workloads.tiny_payloads(20)
    # A second write with the same parameters reuses the cache.
    mtime = (tmp_path / "tiny" / "inputs.bin").stat().st_mtime_ns
    workloads.write_workload(str(tmp_path), "tiny", 20)
    assert (tmp_path / "tiny" / "inputs.bin").stat().st_mtime_ns == mtime
    # Another count regenerates.
    assert workloads.write_workload(str(tmp_path), "tiny", 10)["count"] == 10


def test_load_detects_truncation(tmp_path: Path) -> None:
    workloads.write_workload(str(tmp_path), "tiny", 5)
    p = tmp_path / "tiny" / "inputs.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        workloads.load_workload(str(tmp_path), "tiny")


def test_poisson_schedule() -> None:
    s = workloads.poisson_schedule(1000.0, 5000)
    assert s == workloads.poisson_schedule(1000.0, 5000)
    assert all(b > a for a, b in zip(s, s[1:]))
    # Mean rate within 5% of the asked one.
    assert abs(len(s) / s[-1] - 1000.0) < 50
    with pytest.raises(ValueError):
        workloads.poisson_schedule(0, 10)


def test_plan_sizes() -> None:
    full, quick = workloads.plan(), workloads.plan(quick=True)
    assert (
        full["tiny"].count == 20000
        and full["thumbnails"].count == 500
        and full["compress"].count == 200
    )
    assert all(quick[k].count < full[k].count for k in full)
    assert full["compress"].steps_as_dicts() == [{"op": "compress.zstd", "params": {"level": "3"}}]


def test_resolve_params_against_declared_names() -> None:
    p = {"width": "256", "height": "256", "format": "png"}
    assert workloads.resolve_params(p, None) == p
    assert workloads.resolve_params(p, {"width", "height", "fit", "format"}) == p
    assert workloads.resolve_params(p, {"max_width", "max_height", "output_format"}) == {
        "max_width": "256",
        "max_height": "256",
        "output_format": "png",
    }
    # A name the op does not declare is dropped (its default applies).
    assert workloads.resolve_params(p, {"size"}) == {"size": "256"}
    steps = [{"op": "compress.zstd", "params": {"level": "3"}}]
    assert workloads.resolve_steps(steps, {"compress.zstd": {"level"}}) == steps
    with pytest.raises(ValueError, match="no op"):
        workloads.resolve_steps(steps, {"hash.sha256": set()})


def test_generate_cli_keeps_one_set_per_count(tmp_path: Path) -> None:
    out = str(tmp_path)
    assert workloads.main(["generate", "--out", out, "--only", "tiny", "--count", "tiny=5"]) == 0
    assert len(workloads.load_workload(out, "tiny")[1]) == 5
    assert workloads.main(["generate", "--out", out, "--only", "tiny", "--count", "tiny=7"]) == 0
    assert len(workloads.load_workload(out, "tiny")[1]) == 7
    sets = sorted(p.name for p in (tmp_path / "sets").iterdir())
    assert sets == ["tiny-5-%d" % workloads.DEFAULT_SEED, "tiny-7-%d" % workloads.DEFAULT_SEED]
    workloads.main(["generate", "--out", out, "--only", "tiny", "--count", "tiny=5"])
    assert workloads.load_workload(out, "tiny")[1] == workloads.tiny_payloads(5)


def test_user_workloads_reuse_their_counterparts_inputs() -> None:
    p = workloads.plan()
    assert p["user-tiny"].inputs == "tiny" and p["user-thumbnails"].inputs == "thumbnails"
    assert p["tiny"].inputs == "tiny"
    assert workloads.input_set("user-latency") == "tiny"
    assert workloads.input_set("user-thumbnails") == "thumbnails"
    assert workloads.throughput_spec("user-latency") == "user-tiny"
    assert workloads.throughput_spec("latency") == "tiny"
    assert workloads.throughput_spec("compress") == "compress"
    # Celery runs the same task: its counterpart workload.
    assert workloads.celery_counterpart("user-tiny") == "tiny"
    assert workloads.celery_counterpart("user-latency") == "latency"
    assert workloads.celery_counterpart("user-thumbnails") == "thumbnails"
    assert workloads.celery_counterpart("compress") == "compress"
    for user, counterpart in (("user-tiny", "tiny"), ("user-thumbnails", "thumbnails")):
        assert p[user].celery_task == p[counterpart].celery_task
        assert p[user].celery_kwargs == p[counterpart].celery_kwargs
        assert p[user].unit == p[counterpart].unit
    assert p["user-thumbnails"].steps_as_dicts() == [
        {"op": "bench.thumbnail_pillow", "params": {"box": "256", "fmt": "png"}}
    ]


def test_generate_cli_knows_input_sets_only(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown input set 'user-tiny'"):
        workloads.main(["generate", "--out", str(tmp_path), "--only", "user-tiny"])

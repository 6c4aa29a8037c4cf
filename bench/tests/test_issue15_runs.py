"""The issue-15 parts of bench/run.py, run for real at tiny sizes: the taskiq
peer (a handful of jobs on its own nats-server, both sync modes) and the
depth run (a few hundred jobs on a real Tandem stack). They check that
every run finished with correct results and that the targets report and
latest.targets.json name what was measured; never a timing.

Needs what `make build` makes (tandem-compute, tandem-orchestrator,
nats-server) and the bench venv (bench/run.py installs it from
bench/requirements.txt, PyPI, when missing or stale).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
BINARIES = {
    "TANDEM_COMPUTE_BIN": "compute-rs/target/release/tandem-compute",
    "TANDEM_ORCHESTRATOR_BIN": "bin/tandem-orchestrator",
    "TANDEM_NATS_SERVER_BIN": "bin/nats-server",
}


def binaries(*names: str) -> None:
    for env in names:
        path = os.environ.get(env) or str(ROOT / BINARIES[env])
        if not os.path.exists(path):
            pytest.fail(f"{env}: no binary at {path} (run `make build`)")


def run_bench(tmp: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[str, Any]:
    """bench/run.py with --results in tmp; (stdout, latest.targets.json)."""
    r = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--results", str(tmp), *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, **(env or {})),
    )
    assert r.returncode == 0, f"run.py exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    with open(tmp / "latest.targets.json") as f:
        targets = json.load(f)
    return r.stdout, targets


def statuses(targets: Any, system: str, start: str) -> set[str]:
    return {
        t["status"]
        for t in targets["targets"]
        if t["system"] == system and t["target"].startswith(start)
    }


def test_taskiq_peer_with_a_handful_of_jobs(tmp_path: Path) -> None:
    binaries("TANDEM_NATS_SERVER_BIN")
    out, targets = run_bench(
        tmp_path,
        [
            "--quick",
            "--only",
            "tiny,thumbnails",
            "--systems",
            "taskiq",
            "--count",
            "tiny=24",
            "--count",
            "thumbnails=2",
        ],
    )
    with open(tmp_path / "latest.json") as f:
        doc = json.load(f)
    assert doc["failures"] == []
    got = {(m["system"], m["workload"]) for m in doc["measurements"]}
    for system in ("taskiq/sync-always", "taskiq/default"):
        for w in ("tiny/single", "tiny/batch", "thumbnails"):
            assert (system, w) in got
    runs = [r for r in doc["runs"] if r["system"].startswith("taskiq/")]
    assert len(runs) == 6 and all(r["errors"] == 0 and r["jobs"] > 0 for r in runs)
    assert "taskiq/sync-always" in out and "Issue 15 targets" in out
    # No Tandem in this run: the Tandem ÷ taskiq lines say so.
    assert statuses(targets, "tandem/always", "tiny/batch: Tandem ÷ taskiq") == {"NOT RUN"}


def test_tiny_depth_run(tmp_path: Path) -> None:
    binaries(*BINARIES)
    out, targets = run_bench(
        tmp_path,
        ["--quick", "--only", "depth", "--systems", "tandem"],
        env={"BENCH_DEPTH": "300", "BENCH_DEPTH_DURABILITY": "always"},
    )
    assert "depth run: 300 jobs" in out
    assert targets["depth_settings"]["jobs"] == 300
    with open(tmp_path / "latest.json") as f:
        doc = json.load(f)
    assert doc["failures"] == []
    res = doc["depth"]["tandem/always"]
    assert res["errors"] == 0
    assert res["submit"]["depth_reported"] == 300
    assert res["store"]["bytes_per_job"] > 0 and res["rss"]["bytes_after"] > 0
    assert res["writes"]["succeeded"] == res["writes"]["jobs"]
    assert res["writes"]["stored_per_job"] >= 1
    assert len(res["ttl"]["bytes_samples"]) >= 6
    for start in (
        "depth: submit rate flat",
        "depth: drain rate",
        "depth: store bytes",
        "depth: nats-server RSS",
        "result TTL",
    ):
        assert statuses(targets, "tandem/always", start) <= {"MET", "MISSED"}, start
    assert statuses(targets, "tandem/always", "writes:") == {"info"}
    assert statuses(targets, "tandem/interval", "depth: store bytes") == {"NOT RUN"}

"""The README's first command: python -m tandem.demo exits 0 and leaves
nothing running."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import TARGET, compute_bin, orchestrator_bin


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            found.append(f"{d.name}: {cmd}")
    return found


@pytest.mark.skipif(TARGET == "compose", reason="starts its own stack")
@pytest.mark.timeout(240)
def test_demo_runs_and_cleans_up() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.demo",
            "--compute-bin",
            compute_bin(),
            "--orchestrator-bin",
            orchestrator_bin(),
        ],
        capture_output=True,
        text=True,
        timeout=200,
        env={**os.environ, "COLUMNS": "120"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "summary" in out and "expected error" in out and "broken.png" in out
    assert "demo finished" in out
    # The README promises every result is checked against tandem._native.
    assert "native parity" in out and "✓" in out, out[-3000:]
    assert _processes_mentioning("tandem-demo-") == []


@contextlib.contextmanager
def _serving(tmp_path: Path, *extra: str) -> Iterator[tuple[str, str, Path]]:
    """`python -m tandem.demo --serve` on free ports (never the fixed ones
    `make up` uses), until it says Ctrl-C stops; yields the orchestrator and
    dashboard addresses and the log; stops it with SIGINT (exit 0)."""
    from tandem._stack import free_port

    address, compute, nats, dash = (f"127.0.0.1:{free_port()}" for _ in range(4))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tandem.demo",
                "--compute-bin",
                compute_bin(),
                "--orchestrator-bin",
                orchestrator_bin(),
                "--serve",
                "--address",
                address,
                "--compute-address",
                compute,
                "--nats-address",
                nats,
                "--dashboard-address",
                dash,
                *extra,
            ],  # fmt: skip
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield address, dash, log
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _processes_mentioning("tandem-demo-") == []


def _cli(address: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        env={**os.environ, "TANDEM_ADDRESS": address, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(TARGET == "compose", reason="starts its own stack")
@pytest.mark.timeout(240)
def test_demo_serve_until_interrupted(tmp_path: Path) -> None:
    with _serving(tmp_path) as (address, dash, _):
        queues = _cli(address, {}, "queues", "--json")
        assert queues.returncode == 0, queues.stderr
        # `make up` serves the dashboard too.
        with urllib.request.urlopen(f"http://{dash}/", timeout=30) as page:
            assert page.status == 200 and b'data-queue="default"' in page.read()


@pytest.mark.skipif(TARGET == "compose", reason="starts its own stack")
@pytest.mark.timeout(240)
def test_demo_secure_serve_prints_how_to_connect(tmp_path: Path) -> None:
    """`make up SECURE=1`: TLS and tokens on, and the printed exports work."""
    with _serving(tmp_path, "--secure") as (address, _, log):
        text = log.read_text(errors="replace")
        exports = dict(
            shlex.split(line.strip().removeprefix("export "))[0].split("=", 1)
            for line in text.splitlines()
            if line.strip().startswith("export TANDEM_")
        )
        assert set(exports) == {"TANDEM_CA", "TANDEM_TOKEN"}, text[-3000:]
        ok = _cli(address, exports, "queues", "--json")
        assert ok.returncode == 0, ok.stderr
        no_token = _cli(address, {"TANDEM_CA": exports["TANDEM_CA"]}, "queues")
        assert no_token.returncode == 3, no_token.stderr
        assert "UNAUTHENTICATED" in no_token.stderr
        plaintext = _cli(address, {"TANDEM_TOKEN": exports["TANDEM_TOKEN"]}, "queues")
        # Plaintext against the TLS port: unavailable (exit 4), not an answer.
        assert plaintext.returncode == 4, plaintext.stderr

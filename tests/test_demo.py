"""The README's first command: python -m tandem.demo exits 0 and leaves
nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.skipif(TARGET == "compose", reason="starts its own stack")
@pytest.mark.timeout(240)
def test_demo_serve_until_interrupted(tmp_path: Path) -> None:
    import signal
    import time

    from tandem._stack import free_port

    # Free ports for every listener, so the test never depends on the fixed
    # ones `make up` uses being free.
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
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        queues = subprocess.run(
            [sys.executable, "-m", "tandem.cli", "queues", "--json"],
            env={**os.environ, "TANDEM_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert queues.returncode == 0, queues.stderr
        # `make up` serves the dashboard too.
        import urllib.request

        with urllib.request.urlopen(f"http://{dash}/", timeout=30) as page:
            assert page.status == 200 and b'data-queue="default"' in page.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _processes_mentioning("tandem-demo-") == []

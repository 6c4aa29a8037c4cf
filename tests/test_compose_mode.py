"""TANDEM_TARGET=compose: the suite runs against services that already run
(the docker-compose stack, where Docker exists). Here the mode is exercised
against processes this test starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import TARGET, Stack

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(TARGET == "compose", reason="already running in compose mode")
def test_suite_runs_against_external_services(new_stack: Callable[..., Stack]) -> None:
    stack = new_stack()
    env = {
        **os.environ,
        "TANDEM_TARGET": "compose",
        "TANDEM_ADDRESS": stack.address,
        "TANDEM_COMPUTE_ADDRESS": stack.compute_address,
        "TANDEM_NATS_URL": stack.nats_url,
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(HERE / "test_walking_skeleton.py"),
            str(HERE / "test_e2e.py"),
            "-k",
            "not 50_mib",
        ],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout

"""tandem._stack: the process control the demo and the harness rely on."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tandem._stack import Process, StackError, free_port, wait_for

SERVER = """
import signal, socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("listening", flush=True)
signal.signal(signal.SIGTERM, lambda *a: (print("draining", flush=True), sys.exit(0)))
time.sleep(60)
"""


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_start_kill_restart_terminate(tmp_path: Path) -> None:
    port = free_port()
    p = Process(
        "toy",
        [sys.executable, "-c", SERVER, str(port)],
        log_path=tmp_path / "toy.log",
        ready=lambda: _port_open(port),
    )
    p.start()
    assert p.running and p.starts == 1
    p.kill()
    assert not p.running and p.proc is not None and p.proc.returncode == -signal.SIGKILL
    p.restart()
    assert p.running and p.starts == 2
    assert p.terminate(timeout=10) == 0
    log = p.log_text()
    assert log.count("\nlistening") == 2 and "draining" in log and "--- start #2" in log


def test_exit_during_startup_shows_the_log(tmp_path: Path) -> None:
    p = Process(
        "dies",
        [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"],
        log_path=tmp_path / "dies.log",
        ready=lambda: False,
    )
    with pytest.raises(StackError, match="(?s)exited with 3.*bad flag"):
        p.start()


def test_missing_binary(tmp_path: Path) -> None:
    p = Process("nope", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "n.log")
    with pytest.raises(StackError, match="cannot start nope"):
        p.start()


def test_wait_for_times_out() -> None:
    with pytest.raises(StackError, match="waiting for nothing"):
        wait_for(lambda: False, 0.2, "nothing")


def test_environment_folder_and_process_group(tmp_path: Path) -> None:
    import os

    show = "import os, time; print(os.getcwd(), sorted(os.environ), flush=True); time.sleep(60)"
    p = Process(
        "env",
        [sys.executable, "-c", show],
        log_path=tmp_path / "env.log",
        env={"ONLY": "1"},
        inherit_env=False,
        cwd=tmp_path,
        group=True,
        ready=lambda: "ONLY" in p.log_text(),
    )
    p.start()
    # Exactly the given environment (Python may add LC_CTYPE), in the given folder.
    cwd, names = p.log_text().splitlines()[-1].split(" ", 1)
    assert cwd == str(tmp_path) and "ONLY" in names and "PATH" not in names
    assert p.terminate(timeout=10) == -signal.SIGTERM
    assert os.environ.get("ONLY") is None

"""Service command lines and process-group clean-up (no real services)."""

from __future__ import annotations

import signal
import socket
import sys
import time
import tomllib
from pathlib import Path

import pytest

import services

# A parent that ignores SIGTERM and has a child; prints the child's pid.
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "print(c.pid, flush=True); time.sleep(60)"
)


def test_redis_args_pair_persistence() -> None:
    always = services.redis_args("aof-always", 7000, "/d")
    assert always[always.index("--appendfsync") + 1] == "always"
    assert always[always.index("--appendonly") + 1] == "yes"
    assert always[always.index("--bind") + 1] == "127.0.0.1"
    default = services.redis_args("default", 7000, "/d")
    assert "--appendonly" not in default and "--save" not in default
    with pytest.raises(ValueError):
        services.redis_args("everysec", 7000, "/d")


def test_nats_conf_sync_modes() -> None:
    assert "sync_interval: always" in services.nats_conf(4222, "/s", "always")
    assert "sync_interval" not in services.nats_conf(4222, "/s", "interval")
    assert "listen: 127.0.0.1:4222" in services.nats_conf(4222, "/s", "interval")


def test_tandem_queue_toml_is_valid_toml() -> None:
    doc = tomllib.loads(services.tandem_queue_toml("bench", 4, 16, 1000000))
    assert doc == {
        "queue": [
            {
                "name": "bench",
                "min_workers": 4,
                "max_workers": 16,
                "max_depth": 1000000,
                "max_attempts": 5,
            }
        ]
    }


def _gone(pid: int) -> bool:
    """The process has exited (a zombie no one reaps counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    s = services.Services(str(tmp_path))
    log = tmp_path / "stubborn.log"
    p = s.start(
        "stubborn",
        [sys.executable, "-c", STUBBORN],
        ready=lambda: log.read_text().split()[-1].isdigit(),
        ready_timeout=30,
    )
    child = int(log.read_text().split()[-1])
    s.stop(p, timeout=0.5)
    # SIGTERM was ignored: only the SIGKILL that follows it ended the leader.
    assert p.proc is not None and p.proc.returncode == -signal.SIGKILL
    assert s.procs == []
    # The child got the group's SIGKILL too (poll for it to be reaped; it is not ours).
    for _ in range(200):
        if _gone(child):
            break
        time.sleep(0.05)
    assert _gone(child), "child of the process group survived"


def test_start_waits_for_the_readiness_probe(tmp_path: Path) -> None:
    s = services.Services(str(tmp_path))
    calls: list[int] = []

    def ready() -> bool:
        calls.append(1)
        return len(calls) == 3

    p = s.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], ready=ready)
    assert len(calls) == 3 and p.running
    s.stop_all()
    assert not p.running and s.procs == []

    # A process that never becomes ready is stopped, and the error names it.
    with pytest.raises(services.StackError, match="waiting for never to be ready"):
        s.start(
            "never",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            ready=lambda: False,
            ready_timeout=0.2,
        )
    assert s.procs == []


def test_free_port_and_tcp_probe() -> None:
    port = services.free_port()
    assert 0 < port < 65536
    assert not services.tcp_ready(port)()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert services.tcp_ready(port)()
    assert not services.redis_ready(port)()

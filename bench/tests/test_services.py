"""Service command lines and process-group clean-up (no real services)."""

import os
import sys
import time
import tomllib

import services


def test_redis_args_pair_persistence():
    always = services.redis_args("aof-always", 7000, "/d")
    assert always[always.index("--appendfsync") + 1] == "always"
    assert always[always.index("--appendonly") + 1] == "yes"
    assert always[always.index("--bind") + 1] == "127.0.0.1"
    default = services.redis_args("default", 7000, "/d")
    assert "--appendonly" not in default and "--save" not in default
    try:
        services.redis_args("everysec", 7000, "/d")
    except ValueError:
        pass
    else:
        raise AssertionError("unknown persistence accepted")


def test_nats_conf_sync_modes():
    assert "sync_interval: always" in services.nats_conf(4222, "/s", "always")
    assert "sync_interval" not in services.nats_conf(4222, "/s", "interval")
    assert "listen: 127.0.0.1:4222" in services.nats_conf(4222, "/s", "interval")


def test_tandem_queue_toml_is_valid_toml():
    doc = tomllib.loads(services.tandem_queue_toml("bench", 4, 16, 1000000))
    assert doc == {"queue": [{"name": "bench", "min_workers": 4, "max_workers": 16, "max_depth": 1000000,
                              "max_attempts": 5}]}


def test_stop_all_kills_the_whole_process_group(tmp_path):
    s = services.Services(str(tmp_path))
    # A parent that ignores SIGTERM and has a child: both must be gone.
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(c.pid, flush=True); time.sleep(60)")
    p = s.start("stubborn", [sys.executable, "-c", code])
    deadline = time.monotonic() + 10
    child = None
    while time.monotonic() < deadline and child is None:
        text = open(p.log_path).read().strip()
        child = int(text) if text else None
        time.sleep(0.05)
    assert child is not None
    t0 = time.monotonic()
    s.stop(p, timeout=0.5)
    assert time.monotonic() - t0 < 8
    assert p.popen.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("child of the process group survived")
    assert s.procs == []


def test_free_port_and_wait_until():
    port = services.free_port()
    assert 0 < port < 65536
    assert not services.tcp_open(port)
    calls = []
    services.wait_until(lambda: calls.append(1) or len(calls) > 2, 5, "three calls")
    try:
        services.wait_until(lambda: False, 0.2, "never")
    except TimeoutError as e:
        assert "never" in str(e)
    else:
        raise AssertionError("no timeout")

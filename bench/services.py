"""Starting and stopping everything the benchmark runs, on loopback.

Every process is started in its own session (process group) and registered
with a Services instance; Services.stop_all() (called from run.py's finally,
from atexit and on SIGTERM/SIGINT) sends SIGTERM to each group, waits, then
SIGKILLs what is left. Only processes started here are ever signalled.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from tandem._stack import free_port as free_port  # re-exported for run.py
from tandem._stack import grpc_ready


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: "Proc | None" = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}\n{proc.tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{proc.tail()}" if proc else ""))


def tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


def grpc_healthy(address: str) -> bool:
    return grpc_ready(address)()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: str

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()[-20000:].decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return f"--- last lines of {self.name} log ({self.log_path}) ---\n" + "\n".join(data[-lines:])


class Services:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.procs: list[Proc] = []
        atexit.register(self.stop_all)

    def start(self, name: str, cmd: Sequence[str], env: dict[str, str] | None = None,
              cwd: str | None = None) -> Proc:
        log_path = os.path.join(self.log_dir, f"{name}.log")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=full_env, cwd=cwd, start_new_session=True)
        finally:
            log.close()
        p = Proc(name, popen, log_path)
        self.procs.append(p)
        return p

    def stop(self, p: Proc, timeout: float = 10.0) -> None:
        if p.popen.poll() is None:
            try:
                os.killpg(p.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group may hold children (Celery's prefork pool) after the leader exits.
        try:
            os.killpg(p.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


def install_signal_handlers() -> None:
    """SIGTERM/SIGINT/SIGHUP raise KeyboardInterrupt so finally blocks run."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


# ---------------------------------------------------------------- redis


def ensure_redis_server() -> str:
    """Path of redis-server, installed from Debian's packages when missing."""
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if path:
        return path
    if os.geteuid() != 0:
        raise RuntimeError("redis-server is missing and this is not root: apt-get install redis-server")
    print("bench: installing redis-server (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        raise RuntimeError("redis-server still missing after apt-get install")
    return path


def redis_args(persistence: str, port: int, data_dir: str) -> list[str]:
    """Redis on loopback. "aof-always": append-only file, fsync before every
    reply; "default": Redis's default persistence (RDB snapshots only)."""
    base = ["--port", str(port), "--bind", "127.0.0.1", "--dir", data_dir, "--daemonize", "no",
            "--protected-mode", "yes", "--logfile", ""]
    if persistence == "aof-always":
        return base + ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    if persistence == "default":
        return base
    raise ValueError(f"unknown redis persistence {persistence!r}")


def nats_conf(port: int, store_dir: str, sync: str) -> str:
    lines = [f"listen: 127.0.0.1:{port}", "jetstream {", f'  store_dir: "{store_dir}"']
    if sync == "always":
        lines.append("  sync_interval: always")
    elif sync != "interval":
        raise ValueError(f"unknown sync mode {sync!r}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def tandem_queue_toml(queue: str, min_workers: int, max_workers: int, max_depth: int) -> str:
    return (f'[[queue]]\nname = "{queue}"\nmin_workers = {min_workers}\nmax_workers = {max_workers}\n'
            f"max_depth = {max_depth}\nmax_attempts = 5\n")

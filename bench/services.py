"""Starting and stopping everything the benchmark runs, on loopback.

The process control is tandem._stack's (the one shared with the demo, the
integration harness and the deploy checks): each process runs in its own
session (process group) and is registered with a Services instance;
Services.stop_all() (called from run.py's finally, from atexit and on
SIGTERM/SIGINT) sends SIGTERM to each group, waits, then SIGKILLs what is
left. Only processes started here are ever signalled.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

from tandem._stack import Process, StackError, free_port, grpc_ready, tcp_ready

__all__ = [
    "Services",
    "StackError",
    "free_port",
    "grpc_ready",
    "tcp_ready",
    "redis_ready",
    "redis_args",
    "nats_conf",
    "tandem_queue_toml",
    "install_signal_handlers",
    "ensure_redis_server",
    "ops_ready",
    "taskiq_worker_cmd",
]


def redis_ready(port: int) -> Callable[[], bool]:
    """A readiness probe: redis-server on ``port`` answers PING."""

    def probe() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    return probe


def ops_ready(address: str, ops: Sequence[str]) -> Callable[[], bool]:
    """A readiness probe: the orchestrator at ``address`` lists every op in
    ``ops`` (ComputeService/ListOps, which has the op workers' ops) with a
    live worker, so jobs using them are accepted and run."""

    def probe() -> bool:
        import grpc

        from tandem.v1 import compute_pb2, compute_pb2_grpc

        try:
            with grpc.insecure_channel(address) as ch:
                resp = compute_pb2_grpc.ComputeServiceStub(ch).ListOps(
                    compute_pb2.ListOpsRequest(), timeout=2
                )
        except grpc.RpcError:
            return False
        live = {op.name for op in resp.ops if op.provider == "worker" and op.live_workers > 0}
        return all(name in live for name in ops)

    return probe


class Services:
    """The processes of one benchmark run, stopped together at the end."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.procs: list[Process] = []
        atexit.register(self.stop_all)

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        *,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 30.0,
    ) -> Process:
        """Starts ``cmd`` (log: ``<log_dir>/<name>.log``); with ``ready``,
        waits until that probe passes (raises StackError with the log's tail
        when it does not in time, or the process exits)."""
        p = Process(
            name,
            cmd,
            log_path=os.path.join(self.log_dir, f"{name}.log"),
            env=env,
            cwd=cwd,
            ready=ready,
            ready_timeout=ready_timeout,
            group=True,
        )
        self.procs.append(p)
        try:
            p.start()
        except BaseException:
            self.stop(p)
            raise
        return p

    def stop(self, p: Process, timeout: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds;
        the group's other members (Celery's prefork pool) go too."""
        p.stop(timeout)
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
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if path:
        return path
    if os.geteuid() != 0:
        raise RuntimeError(
            "redis-server is missing and this is not root: apt-get install redis-server"
        )
    print("bench: installing redis-server (apt-get)", file=sys.stderr, flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        raise RuntimeError("redis-server still missing after apt-get install")
    return path


def redis_args(persistence: str, port: int, data_dir: str) -> list[str]:
    """Redis on loopback. "aof-always": append-only file, fsync before every
    reply; "default": Redis's default persistence (RDB snapshots only)."""
    base = [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        data_dir,
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--logfile",
        "",
    ]
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


def tandem_queue_toml(
    queue: str, min_workers: int, max_workers: int, max_depth: int, result_ttl: str = ""
) -> str:
    """One [[queue]] table; ``result_ttl`` (e.g. "2s") only when given."""
    return (
        f'[[queue]]\nname = "{queue}"\nmin_workers = {min_workers}\nmax_workers = {max_workers}\n'
        f"max_depth = {max_depth}\nmax_attempts = 5\n"
        + (f'result_ttl = "{result_ttl}"\n' if result_ttl else "")
    )


def taskiq_worker_cmd(taskiq_bin: str, processes: int) -> list[str]:
    """taskiq's worker for bench/taskiq_app.py: ``processes`` worker
    processes (Celery's prefork count), acks only once the result is saved."""
    return [
        taskiq_bin,
        "worker",
        "taskiq_app:broker",
        "--workers",
        str(processes),
        "--ack-type",
        "when_saved",
        "--log-level",
        "WARNING",
    ]

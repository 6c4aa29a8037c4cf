"""Starting and stopping Tandem's processes on loopback.

The one copy of these helpers: ``python -m tandem.demo``, the integration
harness in ``tests/``, the benchmark (``bench/services.py``) and the deploy
checks (``deploy/tests``) all use it. Each process runs in its own process
group with its output in a log file, so it can be SIGKILLed, SIGTERMed and
restarted, and its log shown when something fails. Readiness probes:
:func:`grpc_ready` (gRPC health SERVING), :func:`http_ready` (HTTP 200),
:func:`tcp_ready` (a port accepts connections).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc

from tandem._health import check_address

__all__ = [
    "free_port",
    "Process",
    "wait_for",
    "StackError",
    "grpc_ready",
    "http_ready",
    "tcp_ready",
    "which",
]


# Every Process started by this interpreter, so that none outlives it even
# when the caller's own clean-up never runs (they run in their own sessions,
# which a terminal's Ctrl-C does not reach).
_LIVE: weakref.WeakSet[Process] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE):
        p.kill()


class StackError(RuntimeError):
    """A process did not start, or did not become healthy in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Polls ``pred`` until true; raises :class:`StackError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def grpc_ready(
    address: str, service: str = "", *, credentials: grpc.ChannelCredentials | None = None
) -> Callable[[], bool]:
    """A readiness probe: gRPC health SERVING at ``address`` (over TLS with
    ``credentials``, e.g. ``grpc.ssl_channel_credentials(ca_pem)``)."""
    return lambda: check_address(address, service, timeout=1.0, credentials=credentials)


def tcp_ready(port: int, host: str = "127.0.0.1") -> Callable[[], bool]:
    """A readiness probe: ``host:port`` accepts a TCP connection."""

    def probe() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((host, port)) == 0

    return probe


def http_ready(url: str) -> Callable[[], bool]:
    """A readiness probe: HTTP 200 from ``url``."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    return probe


class Process:
    """One service process: start, wait until ready, SIGKILL/SIGTERM, restart.

    ``ready`` is a probe that returns True once the process serves. ``env``
    is added to this process's environment, or with ``inherit_env=False`` is
    the whole environment. ``group=True`` sends every signal to the process
    group (a service that forks workers, e.g. Celery's prefork pool), and a
    kill also reaps what is left of the group after its leader exited.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str | os.PathLike[str],
        ready: Callable[[], bool] | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
        address: str = "",
        cwd: str | os.PathLike[str] | None = None,
        inherit_env: bool = True,
        group: bool = False,
    ) -> None:
        self.name = name
        #: The address it serves on, for callers' convenience.
        self.address = address
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.ready = ready
        self.env = dict(env) if env is not None else None
        self.ready_timeout = ready_timeout
        self.cwd = cwd
        self.inherit_env = inherit_env
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def __repr__(self) -> str:
        return f"Process({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, *, wait: bool = True) -> Process:
        """Starts the process (appending to its log) and waits until ready."""
        if self.running:
            raise StackError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start #{self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            env = None
            if self.env is not None:
                env = {**os.environ, **self.env} if self.inherit_env else dict(self.env)
            elif not self.inherit_env:
                env = {}
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except OSError as err:
                raise StackError(f"cannot start {self.name} ({self.argv[0]}): {err}") from err
        _LIVE.add(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the readiness probe passes; fails early if the
        process exits."""
        if self.ready is None:
            return
        probe = self.ready
        limit = timeout if timeout is not None else self.ready_timeout

        def ok() -> bool:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise StackError(
                    f"{self.name} exited with {code} during start-up; log:\n{self.log_tail()}"
                )
            return probe()

        try:
            wait_for(ok, limit, f"{self.name} to be ready")
        except StackError as err:
            if "during start-up" in str(err):
                raise
            raise StackError(f"{err}; log:\n{self.log_tail()}") from None

    def signal(self, sig: int) -> None:
        """Sends ``sig`` to the process (to its group with ``group=True``;
        else the service handles its own children)."""
        if self.proc is not None and self.proc.poll() is None:
            self._send(sig)

    def _send(self, sig: int) -> None:
        assert self.proc is not None
        try:
            if self.group:
                os.killpg(self.proc.pid, sig)  # its own session: group id = pid
            else:
                os.kill(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """SIGKILL and reap (with ``group=True``, the whole group)."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait()
        if self.group:
            self._send(signal.SIGKILL)  # children left behind by the leader

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds (then SIGKILL); returns
        the exit code (negative: killed by that signal)."""
        if self.proc is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
        if self.group:
            self._send(signal.SIGKILL)  # children left behind by the leader
        return code

    def wait_exit(self, timeout: float) -> int:
        """Waits for the process to exit by itself; returns its code."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def restart(self, *, wait: bool = True) -> Process:
        """SIGKILLs if still running, then starts again with the same
        arguments (same ports, same data directory)."""
        self.kill()
        return self.start(wait=wait)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop for clean-up: SIGTERM, then SIGKILL."""
        if self.running:
            self.terminate(timeout)
        elif self.group and self.proc is not None:
            self._send(signal.SIGKILL)  # the leader is gone; its children may not be

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def which(path_or_name: str) -> str:
    """Resolves an executable path or name; raises :class:`StackError`."""
    p = Path(path_or_name)
    if p.is_file() and os.access(p, os.X_OK):
        return str(p.resolve())
    from shutil import which as _which

    found = _which(path_or_name)
    if not found:
        raise StackError(f"executable not found: {path_or_name}")
    return found

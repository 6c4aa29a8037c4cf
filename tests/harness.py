"""The integration harness: real nats-server, tandem-compute and
tandem-orchestrator processes on free loopback ports with temporary data
directories, or (``TANDEM_TARGET=compose``) services that already run at
the addresses given by ``TANDEM_ADDRESS``, ``TANDEM_COMPUTE_ADDRESS`` and
``TANDEM_NATS_URL``.

Binaries come from ``TANDEM_COMPUTE_BIN``, ``TANDEM_ORCHESTRATOR_BIN`` and
``TANDEM_NATS_SERVER_BIN`` (the Makefile exports them).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import tandem
from tandem._health import check_address
from tandem._stack import Process, StackError, free_port, grpc_ready, http_ready, wait_for

ROOT = Path(__file__).resolve().parent.parent
TARGET = os.environ.get("TANDEM_TARGET", "local")

# Queues every test stack declares (see queues.toml).
QUEUES_TOML = (Path(__file__).resolve().parent / "queues.toml").read_text()

# Fault tests: a short job timeout so that work held by a killed
# orchestrator is redelivered (AckWait follows the job timeout) within
# seconds; attempts as in production.
FAULT_QUEUES_TOML = """
[[queue]]
name = "default"
max_attempts = 5
backoff_base = "100ms"
backoff_cap = "1s"
job_timeout = "5s"
# Within compute's capacity (2 workers + 8 waiting on the 2-core machine),
# so that faults, not compute overload, are what these tests exercise.
max_workers = 8
"""


def _binary(env: str, default: Path) -> str:
    path = os.environ.get(env) or str(default)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise StackError(f"{env}: no executable at {path} (build it with `make build`)")
    return path


def compute_bin() -> str:
    return _binary("TANDEM_COMPUTE_BIN", ROOT / "compute-rs/target/release/tandem-compute")


def orchestrator_bin() -> str:
    return _binary("TANDEM_ORCHESTRATOR_BIN", ROOT / "bin/tandem-orchestrator")


def nats_bin() -> str:
    return _binary("TANDEM_NATS_SERVER_BIN", ROOT / "bin/nats-server")


class Stack:
    """A local stack: one nats-server, N compute, M orchestrators.

    ``kill``/``terminate``/``restart`` work on the :class:`Process` objects
    in ``nats``, ``computes`` and ``orchestrators``.
    """

    external = False

    def __init__(
        self,
        tmp: Path,
        *,
        computes: int = 1,
        orchestrators: int = 1,
        queues_toml: str = QUEUES_TOML,
        compute_args: tuple[str, ...] = (),
        orchestrator_args: tuple[str, ...] = (),
        name: str = "stack",
        ready_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.tmp = tmp
        self.name = name
        self.n_computes = computes
        self.n_orchestrators = orchestrators
        self.queues_toml = queues_toml
        self.compute_args = compute_args
        self.orchestrator_args = orchestrator_args
        # TLS credentials of the readiness probes (services started with TLS).
        self.ready_credentials = ready_credentials
        self.nats: Process | None = None
        self.computes: list[Process] = []
        self.orchestrators: list[Process] = []
        self._clients: list[tandem.Client] = []
        self.nats_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.compute_addresses: list[str] = []
        self.addresses: list[str] = []

    # ---------------------------------------------------------- start/stop

    def start(self) -> Stack:
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.start_nats()
        for _ in range(self.n_computes):
            self.add_compute()
        (self.tmp / "queues.toml").write_text(self.queues_toml)
        for _ in range(self.n_orchestrators):
            self.add_orchestrator()
        return self

    def start_nats(self) -> Process:
        monitor = free_port()
        self.nats = Process(
            "nats-server",
            [
                nats_bin(),
                "-js",
                "-sd",
                str(self.tmp / "nats"),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.nats_port),
                "-m",
                str(monitor),
            ],
            log_path=self.tmp / "logs/nats-server.log",
            ready=http_ready(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"),
        )
        self.nats.start()
        return self.nats

    def add_compute(self, *extra: str) -> Process:
        address = f"127.0.0.1:{free_port()}"
        i = len(self.computes)
        p = Process(
            f"tandem-compute-{i}",
            [
                compute_bin(),
                "--listen",
                address,
                "--metrics-listen",
                "",
                "--enable-debug-ops",
                *self.compute_args,
                *extra,
            ],
            log_path=self.tmp / f"logs/compute-{i}.log",
            ready=grpc_ready(address, credentials=self.ready_credentials),
            address=address,
        )
        self.computes.append(p)
        self.compute_addresses.append(address)
        p.start()
        return p

    def add_orchestrator(self, *extra: str, wait: bool = True) -> Process:
        address = f"127.0.0.1:{free_port()}"
        i = len(self.orchestrators)
        p = Process(
            f"tandem-orchestrator-{i}",
            [
                orchestrator_bin(),
                "--listen",
                address,
                "--nats-url",
                self.nats_url,
                "--compute",
                ",".join(self.compute_addresses),
                "--data-dir",
                str(self.tmp / f"orch-{i}"),
                "--metrics-listen",
                "",
                "--config",
                str(self.tmp / "queues.toml"),
                *self.orchestrator_args,
                *extra,
            ],
            log_path=self.tmp / f"logs/orchestrator-{i}.log",
            ready=grpc_ready(address, credentials=self.ready_credentials),
            ready_timeout=60.0,
            address=address,
        )
        self.orchestrators.append(p)
        self.addresses.append(address)
        p.start(wait=wait)
        return p

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        for p in [*self.orchestrators, *self.computes]:
            p.stop(timeout=10.0)
        if self.nats is not None:
            self.nats.stop(timeout=10.0)

    def processes(self) -> list[Process]:
        return [p for p in [self.nats, *self.computes, *self.orchestrators] if p is not None]

    def logs(self, lines: int = 80) -> list[tuple[str, str]]:
        return [
            (f"{self.name}: {p.name} ({p.log_path})", p.log_tail(lines)) for p in self.processes()
        ]

    # ---------------------------------------------------------- access

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def compute_address(self) -> str:
        return self.compute_addresses[0]

    def client(self, address: str | None = None, **kwargs: Any) -> tandem.Client:
        kwargs.setdefault("compute_address", self.compute_address)
        c = tandem.Client(address or self.address, **kwargs)
        self._clients.append(c)
        return c

    def assert_healthy(self) -> None:
        """Both services answer health checks with SERVING."""
        for address in [*self.addresses_alive(), *self.compute_addresses]:
            ok = check_address(address, timeout=5.0)
            assert ok, f"{address} is not SERVING"

    def addresses_alive(self) -> list[str]:
        return [p.address for p in self.orchestrators if p.running]

    def require_process_control(self) -> None:
        pass


class ExternalStack(Stack):
    """TANDEM_TARGET=compose: services already running at addresses from
    the environment. Tests that kill processes are skipped."""

    external = True

    def __init__(self, tmp: Path, **_: Any) -> None:
        super().__init__(tmp)
        self.addresses = [os.environ.get("TANDEM_ADDRESS", "127.0.0.1:50051")]
        self.compute_addresses = [os.environ.get("TANDEM_COMPUTE_ADDRESS", "127.0.0.1:50052")]
        self.nats_url = os.environ.get("TANDEM_NATS_URL", "nats://127.0.0.1:4222")

    def start(self) -> Stack:
        deadline = time.monotonic() + 60
        for address in [*self.addresses, *self.compute_addresses]:
            wait_for(
                functools.partial(check_address, address),
                max(1.0, deadline - time.monotonic()),
                f"{address} to be SERVING",
            )
        return self

    def stop(self) -> None:
        for c in self._clients:
            c.close()

    def processes(self) -> list[Process]:
        return []

    def addresses_alive(self) -> list[str]:
        return list(self.addresses)

    def require_process_control(self) -> None:
        pytest.skip("kills processes: not possible with TANDEM_TARGET=compose")


def make_stack(tmp: Path, **kwargs: Any) -> Stack:
    if TARGET == "compose":
        return ExternalStack(tmp, **kwargs)
    return Stack(tmp, **kwargs)


# ---------------------------------------------------------------- helpers for tests


def raw_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 200 << 20),
            ("grpc.max_receive_message_length", 200 << 20),
        ],
    )


def eventually(
    pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.1
) -> Any:
    """Polls until ``pred()`` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def debug_fail_params(
    client: tandem.Client, code: str, until_attempt: int | None = None
) -> dict[str, str]:
    """Params of ``debug.fail`` for a gRPC code name, optionally failing only
    while the job's attempt number is <= ``until_attempt``; adapts to the
    parameter names and types the server declares in ListOps."""
    spec = client.ops().get("debug.fail")
    assert spec is not None, "debug.fail missing: is compute started with --enable-debug-ops?"
    params: dict[str, str] = {}
    for p in spec.params:
        lname = p.name.lower()
        if "code" in lname:
            if p.type == "int":
                params[p.name] = str(getattr(grpc.StatusCode, code).value[0])
            elif p.choices and code not in p.choices and code.lower() in p.choices:
                params[p.name] = code.lower()
            else:
                params[p.name] = code
        elif "attempt" in lname and until_attempt is not None:
            params[p.name] = str(until_attempt)
    return params


def sleep_params(client: tandem.Client, ms: int) -> dict[str, str]:
    spec = client.ops().get("debug.sleep")
    assert spec is not None, "debug.sleep missing: is compute started with --enable-debug-ops?"
    name = next((p.name for p in spec.params if p.type == "int"), "ms")
    return {name: str(ms)}


def kill_group(proc: Process) -> None:
    proc.signal(signal.SIGKILL)


def iter_chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]

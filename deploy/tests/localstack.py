"""Runs a docker-compose.yml stack as local processes, without Docker.

Each service gets exactly the environment the compose file gives it, except
for what only Docker provides: listen addresses move from 0.0.0.0 to free
loopback ports, compose service names in addresses become 127.0.0.1 with the
matching port, config files are read from deploy/ instead of their mount
points, and stores go to a temporary folder. So the binaries are checked
against the compose configuration (variable names, values, queue files,
NATS configs) and the harness's compose mode can run against it:

    python deploy/tests/localstack.py --stack test -- pytest tests

runs the integration suite with the environment the compose `tests` service
sets (TANDEM_TARGET=compose, TANDEM_ADDRESS, ...), pointed at the local stack.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem._stack import Process, free_port, grpc_ready, http_ready

import _support as s

# The services of each stack: nats, compute, orchestrator, in start order.
STACKS = {
    "default": ("nats", "compute", "orchestrator"),
    "test": ("nats-test", "compute-test", "orchestrator-test"),
}


class LocalStack:
    def __init__(self, stack: str = "default", workdir: Path | None = None) -> None:
        self.names = STACKS[stack]
        self.compose = s.load_compose()
        self.svcs = s.services(self.compose)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="tandem-localstack-")
        self.dir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.procs: list[Process] = []
        # compose service name -> (host, port) it is reached at here
        self.ports: dict[str, dict[int, int]] = {}

    # --------------------------------------------------------------- helpers

    def _config_file(self, svc: dict[str, Any], target: str) -> Path:
        for c in svc.get("configs") or []:
            if c["target"] == target:
                return s.ROOT / str(self.compose["configs"][c["source"]]["file"])
        raise KeyError(f"no config mounted at {target}")

    def _local(self, value: str) -> str:
        """Compose addresses (service:port, 0.0.0.0:port) to loopback ones."""

        def sub(m: re.Match[str]) -> str:
            host, port = m.group(1), int(m.group(2))
            if host == "0.0.0.0":
                raise AssertionError("listen addresses are mapped by the caller")
            return f"127.0.0.1:{self.ports[host][port]}"

        return re.sub(r"\b([a-z][a-z0-9-]*):(\d+)\b", sub, value)

    def _run(
        self, name: str, argv: list[str], env: dict[str, str], ready: Callable[[], bool]
    ) -> None:
        """Starts a service with exactly ``env`` (plus PATH, HOME, TMPDIR) and
        waits until ``ready`` passes, as the compose health check would."""
        base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        p = Process(
            name,
            argv,
            log_path=self.dir / f"{name}.log",
            env={**base, **env},
            inherit_env=False,
            cwd=self.dir,
            ready=ready,
            ready_timeout=60,
        )
        self.procs.append(p)
        p.start()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_text()[-4000:]}" for p in self.procs)

    # --------------------------------------------------------------- services

    def _start_nats(self, name: str) -> None:
        svc = self.svcs[name]
        nats = s.nats_server_binary()
        if nats is None:
            raise RuntimeError("nats-server not built (make bin/nats-server)")
        client, http = free_port(), free_port()
        self.ports[name] = {4222: client, 8222: http}
        target = svc["command"][-1]
        conf = self._config_file(svc, target).read_text()
        conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
        conf = conf.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{http}")
        conf = conf.replace("store_dir: /data", f"store_dir: {self.dir / name}")
        path = self.dir / f"{name}.conf"
        path.write_text(conf)
        # The compose health check's URL, on this server's monitoring port.
        url = svc["healthcheck"]["test"][-1].replace("127.0.0.1:8222", f"127.0.0.1:{http}")
        self._run(name, [str(nats), "--config", str(path)], s.env_of(svc), http_ready(url))

    def _start_grpc_service(self, name: str, prefix: str, port: int) -> None:
        svc = self.svcs[name]
        binary = s.service_binary(prefix)
        if binary is None:
            raise RuntimeError(f"{name}: binary not built (make build)")
        env = dict(s.env_of(svc))
        listen, metrics = free_port(), free_port()
        self.ports[name] = {port: listen}
        for key, value in list(env.items()):
            if key.endswith("_METRICS_LISTEN"):
                env[key] = f"127.0.0.1:{metrics}"
            elif key.endswith("_LISTEN"):
                assert value == f"0.0.0.0:{port}", f"{name}: {key}={value}"
                env[key] = f"127.0.0.1:{listen}"
            elif key == "TANDEM_ORCH_CONFIG":
                env[key] = str(self._config_file(svc, value))
            elif key == "TANDEM_ORCH_DATA_DIR":
                env[key] = str(self.dir / name)
            elif key in ("TANDEM_ORCH_COMPUTE", "TANDEM_ORCH_NATS_URL"):
                env[key] = self._local(value)
        # The compose health check probes 127.0.0.1:<port> with grpc-health-probe,
        # i.e. the standard health service's overall status; same check here.
        self._run(name, [str(binary)], env, grpc_ready(f"127.0.0.1:{listen}"))

    def start(self) -> LocalStack:
        nats, compute, orchestrator = self.names
        try:
            self._start_nats(nats)
            self._start_grpc_service(compute, "TANDEM_COMPUTE_", 50052)
            self._start_grpc_service(orchestrator, "TANDEM_ORCH_", 50051)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(timeout=40)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def tests_env(self) -> dict[str, str]:
        """The compose `tests` service's environment, mapped to this stack."""
        env = s.env_of(self.svcs["tests"])
        # The tests service names the test stack; another stack stands in by role.
        role = {n: i for names in STACKS.values() for i, n in enumerate(names)}
        for name in list(self.ports):
            for other, i in role.items():
                if i == self.names.index(name) and other not in self.ports:
                    self.ports[other] = self.ports[name]
        return {k: self._local(v) if k != "TANDEM_TARGET" else v for k, v in env.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stack", choices=sorted(STACKS), default="test")
    ap.add_argument(
        "command", nargs="*", help="run with the tests service's environment (after --)"
    )
    args = ap.parse_args(argv)
    with LocalStack(args.stack) as stack:
        env = stack.tests_env()
        for k, v in sorted(env.items()):
            print(f"{k}={v}", flush=True)
        if not args.command:
            print("stack is up; Ctrl-C stops it", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        rc = subprocess.run(args.command, env={**os.environ, **env}, cwd=s.ROOT).returncode
        if rc != 0:
            print(stack.logs(), file=sys.stderr)
        return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

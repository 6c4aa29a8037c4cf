"""Runs a docker-compose.yml stack as local processes, without Docker.

Each service gets exactly the environment the compose file gives it, except
for what only Docker provides: listen addresses move from 0.0.0.0 to free
loopback ports, compose service names in addresses become 127.0.0.1 with the
matching port, config files are read from deploy/ instead of their mount
points, the `certs` volume is a temporary folder (filled by running the
`certs` job's own script, with the real dev-certs), and stores go to a
temporary folder. So the binaries are checked
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
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from tandem._stack import Process, free_port, grpc_ready, http_ready

import _support as s

#: Where the compose file mounts the `certs` volume.
CERTS_MOUNT = "/certs"

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
        # service name -> the environment it was started with (mapped here)
        self.envs: dict[str, dict[str, str]] = {}

    # --------------------------------------------------------------- helpers

    @property
    def certs(self) -> Path:
        """The folder standing for the `certs` volume."""
        return self.dir / "certs"

    def _paths(self, value: str) -> str:
        """Paths in the certs volume to their place here."""
        return value.replace(CERTS_MOUNT + "/", f"{self.certs}/")

    def _uses_certs(self) -> bool:
        return any("certs" in str(v) for n in self.names for v in self.svcs[n].get("volumes") or [])

    def _run_certs_job(self) -> None:
        """The `certs` service: its own script, with /certs mapped here and
        the built tandem-orchestrator on PATH (dev-certs)."""
        svc = self.svcs["certs"]
        [script] = svc["command"]
        binary = s.service_binary("TANDEM_ORCH_")
        if binary is None:
            raise RuntimeError("certs: tandem-orchestrator not built (make build)")
        self.certs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(
            [*svc["entrypoint"], str(script).replace(CERTS_MOUNT, str(self.certs))],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"certs job failed: {done.stdout}{done.stderr}")

    def probe_credentials(self, name: str) -> grpc.ChannelCredentials | None:
        """What the service's grpc-health-probe presents (-tls, -tls-ca-cert,
        -tls-client-cert, -tls-client-key), as gRPC channel credentials."""
        flags: dict[str, str] = {}
        for arg in self.svcs[name]["healthcheck"]["test"][2:]:
            key, _, value = str(arg).lstrip("-").partition("=")
            flags[key] = self._paths(value)
        if "tls" not in flags:
            return None

        def read(key: str) -> bytes | None:
            return Path(flags[key]).read_bytes() if key in flags else None

        return grpc.ssl_channel_credentials(
            read("tls-ca-cert"), read("tls-client-key"), read("tls-client-cert")
        )

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

    def service_env(self, name: str) -> dict[str, str]:
        """The environment a started service runs with (as ``docker compose
        exec`` would give a command in its container)."""
        return dict(self.envs[name])

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
        [cfg] = svc["configs"]
        target = cfg["target"]
        conf = self._config_file(svc, target).read_text()
        conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
        conf = conf.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{http}")
        conf = conf.replace("store_dir: /data", f"store_dir: {self.dir / name}")
        path = self.dir / f"{name}.conf"
        path.write_text(conf)
        # The compose health check's URL, on this server's monitoring port.
        url = svc["healthcheck"]["test"][-1].replace("127.0.0.1:8222", f"127.0.0.1:{http}")
        command = [str(a) for a in svc["command"]]
        exec_line = f"nats-server --config {target}"
        if command[:2] == ["/bin/sh", "-c"]:
            # The compose wrapper (passwords from files into the environment), run
            # as is but for the paths.
            assert command[2].endswith(exec_line), command
            shell = self._paths(command[2])[: -len(exec_line)]
            argv = ["/bin/sh", "-c", shell + shlex.join([str(nats), "--config", str(path)])]
        else:
            assert command == ["nats-server", "--config", target], command
            argv = [str(nats), "--config", str(path)]
        self._run(name, argv, s.env_of(svc), http_ready(url))

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
            elif value.startswith(CERTS_MOUNT + "/"):
                env[key] = self._paths(value)
        # The compose health check probes 127.0.0.1:<port> with grpc-health-probe,
        # i.e. the standard health service's overall status, with its TLS
        # flags; same check here.
        creds = self.probe_credentials(name)
        self.envs[name] = env
        self._run(name, [str(binary)], env, grpc_ready(f"127.0.0.1:{listen}", credentials=creds))

    def start(self) -> LocalStack:
        nats, compute, orchestrator = self.names
        try:
            if self._uses_certs():
                self._run_certs_job()
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

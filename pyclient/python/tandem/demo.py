"""``python -m tandem.demo``: start a local Tandem stack, run a small batch
through it, print what happened, stop the stack.

The stack is one ``tandem-compute``, one ``tandem-orchestrator`` with its
embedded NATS JetStream, and one op worker (``tandem worker
tandem.demo_ops:worker``, a Python op), on loopback ports, with a temporary
data folder. The batch: generated PNG images get thumbnails and
fingerprints, generated texts get statistics, a summary written by the
Python op from the Rust op's statistics (one mixed pipeline), and
content-defined chunk fingerprints, and one deliberately corrupt image
shows what a clear error looks like.

``--serve`` keeps the stack up after the demo until Ctrl-C, on the
documented ports: orchestrator 127.0.0.1:50051, compute 127.0.0.1:50052,
NATS 127.0.0.1:4222 (so ``tandem`` and ``tandem worker`` work with their
defaults); ``--address``, ``--compute-address`` and ``--nats-address``
choose others, and a port already taken is an error that says so. Without
``--serve`` every port is a free one. Exits 0 when the demo went as
expected; leaves no process running either way.

``--secure`` turns transport security and auth on, the way a deployment
runs: ``tandem-orchestrator dev-certs`` makes a CA and certificates in the
temporary folder; compute serves TLS and requires the orchestrator's client
certificate (mTLS); the orchestrator serves TLS (gRPC and the dashboard) and
requires a bearer token on JobService (``--auth``); a token with every scope
on every queue is created with ``tandem-orchestrator token create``, and
the demo prints how to use it (``TANDEM_CA``, ``TANDEM_TOKEN``, grpcurl).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from tandem._client import Client
from tandem._core import job_outcome
from tandem._errors import JobFailed, TandemError
from tandem._stack import Process, StackError, free_port, grpc_ready, which
from tandem._types import Job, JobState, Ops, Step

#: The ports ``--serve`` keeps the stack on (README: ``make up``).
SERVE_ADDRESS = "127.0.0.1:50051"
SERVE_COMPUTE_ADDRESS = "127.0.0.1:50052"
SERVE_NATS_ADDRESS = "127.0.0.1:4222"
SERVE_DASHBOARD_ADDRESS = "127.0.0.1:8080"

__all__ = ["main", "LocalStack"]


# ---------------------------------------------------------------- the stack


def address_free(address: str) -> bool:
    """True when ``host:port`` can be listened on now."""
    import socket

    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "127.0.0.1", int(port)))
        except (OSError, ValueError):
            return False
    return True


@dataclass
class LocalStack:
    """compute + orchestrator (embedded NATS) + one op worker on loopback,
    in ``workdir``."""

    compute_bin: str
    orchestrator_bin: str
    workdir: Path
    address: str = ""
    compute_address: str = ""
    nats_address: str = ""
    #: The web dashboard's address ("" = off).
    dashboard_address: str = ""
    worker_id: str = field(default_factory=lambda: f"demo-{os.getpid()}")
    processes: list[Process] = field(default_factory=list)
    #: TLS everywhere, mTLS to compute, tokens required (``--secure``).
    secure: bool = False
    #: With ``secure``: the token :meth:`start` created (every scope, every queue).
    token: str = ""

    @property
    def certs(self) -> Path:
        """Where ``dev-certs`` writes ca.pem, server*.pem, client*.pem."""
        return self.workdir / "certs"

    def cert(self, name: str) -> str:
        return str(self.certs / name)

    def client(self, **kwargs: Any) -> Client:
        """A client of this stack (with the CA and the token when secure)."""
        if self.secure:
            kwargs = {"ca": self.cert("ca.pem"), "token": self.token, **kwargs}
        return Client(self.address, **kwargs)

    def _credentials(self, *, client_cert: bool) -> grpc.ChannelCredentials | None:
        if not self.secure:
            return None
        ca = (self.certs / "ca.pem").read_bytes()
        if not client_cert:
            return grpc.ssl_channel_credentials(ca)
        return grpc.ssl_channel_credentials(
            ca,
            (self.certs / "client-key.pem").read_bytes(),
            (self.certs / "client.pem").read_bytes(),
        )

    def _run_orchestrator(self, *args: str, what: str) -> str:
        """Runs a ``tandem-orchestrator`` subcommand; returns its stdout.
        Its stderr goes to the log; a failure is a StackError that quotes it."""
        argv = [self.orchestrator_bin, *args]
        log = self.workdir / "logs" / "orchestrator-cli.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise StackError(f"{what} ({shlex.join(argv)}) failed: {err}") from None
        with open(log, "a") as f:
            f.write(f"--- {shlex.join(argv[:3])} ...\n{done.stderr}")
        if done.returncode != 0:
            raise StackError(
                f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
            )
        return done.stdout

    def _make_certs(self) -> None:
        hosts = sorted(
            {"localhost", "127.0.0.1"}
            | {a.rpartition(":")[0] for a in (self.address, self.compute_address) if a}
        )
        self._run_orchestrator(
            "dev-certs", "--out", str(self.certs), "--hosts", ",".join(hosts), what="dev-certs"
        )
        for name in ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"):
            if not (self.certs / name).is_file():
                raise StackError(f"dev-certs did not write {self.certs / name}")

    def _create_token(self) -> None:
        out = self._run_orchestrator(
            "token",
            "create",
            "--id",
            "demo",
            "--all-queues",
            "--scope",
            "submit,read,cancel,admin",
            "--nats-url",
            f"nats://{self.nats_address}",
            what="token create",
        )
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("tdm_"):
            raise StackError("token create printed no token (expected one tdm_... line)")
        self.token = lines[0]

    def check_ports(self) -> None:
        """Raises :class:`StackError` naming any address already in use."""
        for address, flag in (
            (self.address, "--address"),
            (self.compute_address, "--compute-address"),
            (self.nats_address, "--nats-address"),
            (self.dashboard_address, "--dashboard-address"),
        ):
            if address and not address_free(address):
                raise StackError(
                    f"{address} is already in use (another `make up` or Tandem stack?): "
                    f"stop it, or choose another address with {flag}"
                )

    def start(self) -> None:
        self.check_ports()
        self.compute_address = self.compute_address or f"127.0.0.1:{free_port()}"
        self.address = self.address or f"127.0.0.1:{free_port()}"
        self.nats_address = self.nats_address or f"127.0.0.1:{free_port()}"
        logs = self.workdir / "logs"
        compute_tls: list[str] = []
        orch_tls: list[str] = []
        if self.secure:
            self._make_certs()
            compute_tls = [
                "--tls-cert",
                self.cert("server.pem"),
                "--tls-key",
                self.cert("server-key.pem"),
                "--tls-client-ca",
                self.cert("ca.pem"),
            ]
            orch_tls = [
                "--tls-cert",
                self.cert("server.pem"),
                "--tls-key",
                self.cert("server-key.pem"),
                "--compute-ca",
                self.cert("ca.pem"),
                "--compute-cert",
                self.cert("client.pem"),
                "--compute-key",
                self.cert("client-key.pem"),
                "--auth",
            ]
        compute = Process(
            "tandem-compute",
            [
                self.compute_bin,
                "--listen",
                self.compute_address,
                "--metrics-listen",
                "",
                *compute_tls,
            ],
            log_path=logs / "compute.log",
            ready=grpc_ready(self.compute_address, credentials=self._credentials(client_cert=True)),
        )
        orchestrator = Process(
            "tandem-orchestrator",
            [
                self.orchestrator_bin,
                "--listen",
                self.address,
                "--compute",
                self.compute_address,
                "--nats-listen",
                self.nats_address,
                "--data-dir",
                str(self.workdir / "data"),
                "--metrics-listen",
                "",
                *(["--dashboard-listen", self.dashboard_address] if self.dashboard_address else []),
                *orch_tls,
            ],
            log_path=logs / "orchestrator.log",
            ready=grpc_ready(self.address, credentials=self._credentials(client_cert=False)),
            ready_timeout=60.0,
        )
        self.processes = [compute, orchestrator]
        for p in self.processes:
            p.start()
        if self.secure:
            self._create_token()
        # The Python op, served over the orchestrator's embedded NATS.
        probe = self.client()
        worker = Process(
            "tandem-worker",
            [
                sys.executable,
                "-m",
                "tandem.cli",
                "worker",
                "tandem.demo_ops:worker",
                "--nats-url",
                f"nats://{self.nats_address}",
                "--id",
                self.worker_id,
                "--concurrency",
                "2",
            ],
            log_path=logs / "worker.log",
            ready=lambda: any(w.id == self.worker_id for w in probe.workers()),
            ready_timeout=60.0,
            group=True,
        )
        self.processes.append(worker)
        try:
            worker.start()
        finally:
            probe.close()

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop(timeout=15.0)

    def logs(self) -> str:
        return "\n".join(f"==== {p.name} ({p.log_path})\n{p.log_tail(40)}" for p in self.processes)


# ---------------------------------------------------------------- inputs


def png(width: int, height: int, seed: int) -> bytes:
    """A colourful RGB PNG made of gradients (pure Python, fast enough)."""
    rng = random.Random(seed)
    a, b, c = rng.randrange(1, 5), rng.randrange(1, 5), rng.randrange(256)
    red = bytes((x * 255 // max(1, width - 1) * a + c) & 255 for x in range(width))
    blue = bytes((255 - x * 255 // max(1, width - 1) + c) & 255 for x in range(width))
    raw = bytearray()
    row = bytearray(width * 3)
    row[0::3] = red
    row[2::3] = blue
    for y in range(height):
        row[1::3] = bytes([(y * 255 // max(1, height - 1) * b) & 255]) * width
        raw += b"\x00" + row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 6))
        + chunk(b"IEND", b"")
    )


_WORDS = (
    "job queue worker retry stream broker compute pipeline thumbnail hash chunk "
    "durable idempotent backoff deadline cancel dead letter orchestrator tandem "
    "rust go python nats jetstream grpc latency throughput"
).split()


def text(seed: int, words: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(words):
        w = rng.choice(_WORDS)
        out.append(w.capitalize() if i % 12 == 0 else w)
        if i % 12 == 11:
            out[-1] += ".\n"
    return (" ".join(out) + ".\n").encode()


def make_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    sizes = [(640, 480), (480, 640), (800, 600), (320, 240), (1024, 256), (256, 256)]
    for i in range(18):
        w, h = sizes[i % len(sizes)]
        p = folder / f"image-{i:02d}.png"
        p.write_bytes(png(w, h, i))
        files.append(p)
    for i in range(10):
        p = folder / f"text-{i:02d}.txt"
        p.write_bytes(text(100 + i, 200 + 300 * i))
        files.append(p)
    bad = folder / "broken.png"
    bad.write_bytes(png(64, 64, 7)[:90])  # truncated: header fine, pixels cut off
    files.append(bad)
    return files


# ---------------------------------------------------------------- pipelines


def _int_param(ops: Ops, op: str, names: Sequence[str], value: int) -> dict[str, str]:
    spec = ops.get(op)
    if spec is None:
        return {}
    params: dict[str, str] = {}
    for p in spec.params:
        if p.name in names and p.type == "int":
            v = value if not p.max else min(value, p.max)
            params[p.name] = str(max(v, p.min))
    return params


def pipelines(ops: Ops) -> dict[str, tuple[str, list[Step]]]:
    """What runs on each kind of input, adapted to the ops the server has."""
    have = set(ops.names())
    out: dict[str, tuple[str, list[Step]]] = {}
    if "image.thumbnail" in have:
        params = _int_param(
            ops, "image.thumbnail", ("max_width", "max_height", "width", "height"), 128
        )
        spec = ops.get("image.thumbnail")
        if spec and any(p.name == "format" for p in spec.params):
            params["format"] = "png"
        out["thumbnail"] = ("image", [Step("image.thumbnail", params)])
    fp = "hash.blake3" if "hash.blake3" in have else "hash.sha256"
    out["fingerprint"] = ("any", [Step(fp)])
    if "text.stats" in have:
        out["stats"] = ("text", [Step("text.stats")])
        if "demo.summary" in have:
            # Rust counts, Python writes the sentence: one job, two providers.
            out["summary"] = ("text", [Step("text.stats"), Step("demo.summary", top=1)])
    if "chunk.fastcdc" in have:
        # Small chunks, so that the demo's texts show several.
        params = _int_param(ops, "chunk.fastcdc", ("min_size",), 256)
        params.update(_int_param(ops, "chunk.fastcdc", ("avg_size",), 1024))
        params.update(_int_param(ops, "chunk.fastcdc", ("max_size",), 4096))
        out["chunks"] = ("text", [Step("chunk.fastcdc", params)])
    return out


def describe(kind: str, job: Job) -> str:
    data = job.result or b""
    if kind == "thumbnail" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return f"{w}x{h} PNG, {len(data):,} bytes"
    if kind == "stats":
        try:
            stats = json.loads(data)
            return (
                ", ".join(f"{stats[k]} {k}" for k in ("words", "lines") if k in stats)
                or data[:60].decode()
            )
        except (ValueError, TypeError):
            pass
    if kind == "chunks":
        try:
            parsed = json.loads(data)
            items = parsed.get("chunks", parsed) if isinstance(parsed, dict) else parsed
            return f"{len(items)} chunk{'s' if len(items) != 1 else ''}"
        except (ValueError, TypeError, AttributeError):
            pass
    if kind == "summary":
        t = data.decode(errors="replace")
        return (t[:60] + "…") if len(t) > 60 else t
    if kind == "fingerprint" or (len(data) <= 64 and not data.isascii()):
        return data.hex()[:16] + "…"
    try:
        t = data.decode()
        return (t[:40] + "…") if len(t) > 40 else t
    except UnicodeDecodeError:
        return data.hex()[:16] + "…"


# ---------------------------------------------------------------- the demo


def run_demo(client: Client, workdir: Path, console: Any) -> bool:
    """Runs the demo batch; True when everything went as expected."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    ops = client.ops()
    built_in = [o.name for o in ops if o.provider != "worker"]
    python = [f"{o.name} ({o.live_workers} worker)" for o in ops if o.provider == "worker"]
    console.print(f"compute serves {len(built_in)} ops: {', '.join(built_in)}", highlight=False)
    if python:
        console.print(f"Python op workers serve: {', '.join(python)}", highlight=False)
    files = make_inputs(workdir / "inputs")
    plan = pipelines(ops)
    jobs: list[tuple[Path, str, list[Step]]] = []
    for f in files:
        is_image = f.suffix == ".png"
        for name, (target, steps) in plan.items():
            applies = target == "any" or (target == "image") == is_image
            if applies:
                jobs.append((f, name, steps))
    console.print(
        f"submitting {len(jobs)} jobs for {len(files)} inputs "
        f"({sum(f.stat().st_size for f in files) / 1e6:.1f} MB)…",
        highlight=False,
    )

    started = time.monotonic()
    finals: dict[int, Job] = {}
    rejected: list[tuple[tuple[Path, str, list[Step]], TandemError]] = []
    bar = Progress(
        TextColumn("[bold]jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = bar.add_task("jobs", total=len(jobs))

    def run_pipeline(name: str) -> None:
        """One map of a pipeline over the inputs it applies to."""
        members = [i for i, (_, n, _) in enumerate(jobs) if n == name]

        def settled(index: int, outcome: Job | TandemError) -> None:
            i = members[index]
            if isinstance(outcome, TandemError):
                rejected.append((jobs[i], outcome))
            else:
                finals[i] = outcome
            bar.advance(task)

        for _ in client.map(
            plan[name][1],
            [jobs[i][0] for i in members],
            timeout=120,
            return_exceptions=True,
            on_result=settled,
        ):
            pass

    with bar:
        for name in plan:
            run_pipeline(name)
    seconds = time.monotonic() - started

    # One row per input: what each pipeline made of it.
    kinds = list(plan)
    table = Table(title="results", title_justify="left")
    table.add_column("input")
    table.add_column("size", justify="right")
    for kind in kinds:
        table.add_column(kind)
    rows: dict[Path, dict[str, str]] = {}
    failures = []
    for i, (f, name, steps) in enumerate(jobs):
        final = finals.get(i)
        if final is None:
            continue
        job = final
        cell = (
            describe(name, job)
            if job.state is JobState.SUCCEEDED
            else (f"[red]{job.state.name}: {job.last_error.reason if job.last_error else ''}[/red]")
        )
        rows.setdefault(f, {})[name] = cell
        if job.state is not JobState.SUCCEEDED:
            failures.append((f, job))
    for f, cells in rows.items():
        table.add_row(f.name, f"{f.stat().st_size:,}", *(cells.get(k, "") for k in kinds))
    console.print(table)

    ok = len(finals) + len(rejected) == len(jobs)
    # The one failure we expect: the corrupt image, with a clear error.
    for f, job in failures:
        try:
            job_outcome(job)
        except JobFailed as err:
            expected = f.name == "broken.png" and err.error.reason in (
                "INPUT_CORRUPT",
                "OUTPUT_TOO_LARGE",
            )
            colour = "yellow" if expected else "red"
            label = "expected error" if expected else "unexpected error"
            console.print(
                f"[{colour}]{label}[/{colour}] for {f.name}: {err.error}", highlight=False
            )
            ok = ok and (expected or f.name == "broken.png")
        except TandemError as err:
            console.print(f"[red]unexpected[/red] {f.name}: {err}", highlight=False)
            ok = False
    for (f, name, _), rejection in rejected:
        console.print(f"[red]rejected[/red] {f.name} ({name}): {rejection}", highlight=False)
        ok = False

    # Same bytes in-process, through the native module.
    try:
        from tandem import local

        if local.available():
            checked = same = 0
            for i, (f, name, steps) in enumerate(jobs):
                done_job = finals.get(i)
                if done_job is None or done_job.state is not JobState.SUCCEEDED:
                    continue
                checked += 1
                same += run_locally(steps, f.read_bytes()) == done_job.result
            mark = "[green]✓[/green]" if same == checked else "[red]✗[/red]"
            console.print(
                f"{mark} native parity: {same}/{checked} results identical when run "
                "in-process with tandem.local.run (and the Python op called directly)",
                highlight=False,
            )
            ok = ok and same == checked
    except TandemError as err:
        console.print(f"native module not usable: {err}", highlight=False)

    done = sum(1 for j in finals.values() if j.state is JobState.SUCCEEDED)
    summary = Table(title="summary", title_justify="left", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("jobs", str(len(jobs)))
    summary.add_row("succeeded", str(done))
    summary.add_row("failed", str(len(jobs) - done))
    summary.add_row("wall time", f"{seconds:.2f} s")
    summary.add_row("throughput", f"{len(jobs) / seconds:.0f} jobs/s" if seconds else "-")
    console.print(summary)
    return ok


def run_locally(steps: Sequence[Step], data: bytes) -> bytes:
    """A pipeline in this process: Rust ops through ``tandem.local``, the
    demo's Python op by calling its function."""
    from tandem import demo_ops, local
    from tandem._worker.api import StepContext, StepInfo
    from tandem._worker.runner import LocalSignals

    for step in steps:
        op = demo_ops.worker.get(step.op)
        if op is None:
            data = local.run([step], data)
            continue
        kwargs = op.kwargs(dict(step.params))
        if op.signature.ctx_arg:
            info = StepInfo("local", 1, 0, op.name)
            kwargs[op.signature.ctx_arg] = StepContext(info, LocalSignals())
        out = op.fn(data, **kwargs)
        data = out.encode() if isinstance(out, str) else bytes(out)
    return data


_stop_requested = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _stop_requested
    _stop_requested = True
    raise KeyboardInterrupt


def secure_usage(stack: LocalStack) -> str:
    """How to reach a ``--secure`` stack: the CA, the token, grpcurl."""
    ca = shlex.quote(stack.cert("ca.pem"))
    auth = shlex.quote(f"authorization: Bearer {stack.token}")
    return (
        "\nsecure mode: TLS on every port, mTLS between orchestrator and compute, "
        "a token required on JobService. The certificates are in "
        f"{stack.certs} (gone when the stack stops). Use them with:\n"
        f"  export TANDEM_CA={ca}\n"
        f"  export TANDEM_TOKEN={shlex.quote(stack.token)}\n"
        f"  grpcurl -cacert {ca} -H {auth} {stack.address} tandem.v1.JobService/ListQueues\n"
        "The token has every scope on every queue (id demo); make narrower ones with "
        f"`{stack.orchestrator_bin} token create --id ID --queue Q --scope read "
        f"--nats-url nats://{stack.nats_address}`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tandem.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--compute-bin", default=os.environ.get("TANDEM_COMPUTE_BIN", "tandem-compute")
    )
    parser.add_argument(
        "--orchestrator-bin",
        default=os.environ.get("TANDEM_ORCHESTRATOR_BIN", "tandem-orchestrator"),
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the stack running after the demo until Ctrl-C"
    )
    parser.add_argument(
        "--address",
        help=f"orchestrator listen address (default: {SERVE_ADDRESS} with --serve, "
        "a free port otherwise)",
    )
    parser.add_argument(
        "--compute-address",
        help=f"compute listen address (default: {SERVE_COMPUTE_ADDRESS} with --serve, "
        "a free port otherwise)",
    )
    parser.add_argument(
        "--nats-address",
        help=f"the embedded NATS server's listen address (default: {SERVE_NATS_ADDRESS} "
        "with --serve, a free port otherwise)",
    )
    parser.add_argument(
        "--dashboard-address",
        help=f"the web dashboard's listen address (default: {SERVE_DASHBOARD_ADDRESS} "
        "with --serve, off otherwise)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, data)"
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="TLS on every gRPC port, mTLS to compute, bearer tokens required; prints the "
        "CA and a token to use (tandem-orchestrator dev-certs and token create)",
    )
    ns = parser.parse_args(argv)

    from rich.console import Console

    console = Console()
    signal.signal(signal.SIGTERM, _on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="tandem-demo-"))
    try:
        compute_bin = which(ns.compute_bin)
        orchestrator_bin = which(ns.orchestrator_bin)
    except StackError as err:
        console.print(f"[red]error:[/red] {err} (build with `make build`)", highlight=False)
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    stack = LocalStack(
        compute_bin,
        orchestrator_bin,
        workdir,
        address=ns.address or (SERVE_ADDRESS if ns.serve else ""),
        compute_address=ns.compute_address or (SERVE_COMPUTE_ADDRESS if ns.serve else ""),
        nats_address=ns.nats_address or (SERVE_NATS_ADDRESS if ns.serve else ""),
        dashboard_address=ns.dashboard_address or (SERVE_DASHBOARD_ADDRESS if ns.serve else ""),
        secure=ns.secure,
    )
    try:
        stack.check_ports()
    except StackError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        shutil.rmtree(workdir, ignore_errors=True)
        return 2
    ok = False
    try:
        console.print(f"starting the local stack in {workdir} …", highlight=False)
        t0 = time.monotonic()
        stack.start()
        console.print(
            f"stack up in {time.monotonic() - t0:.1f} s: orchestrator {stack.address}, "
            f"compute {stack.compute_address}, NATS {stack.nats_address}",
            highlight=False,
        )
        with stack.client(compute_address=stack.compute_address) as client:
            ok = run_demo(client, workdir, console)
        if ns.serve and stack.secure:
            console.print(secure_usage(stack), highlight=False, markup=False)
        if ns.serve:
            console.print(
                f"\nserving: export TANDEM_ADDRESS={stack.address} TANDEM_COMPUTE_ADDRESS="
                f"{stack.compute_address} TANDEM_NATS_URL=nats://{stack.nats_address}; try "
                "`tandem ops`, `tandem workers`, `tandem queues`, "
                "`tandem submit --op text.stats --op demo.summary --data 'hi there' --wait`, "
                "and serve your own ops with `tandem worker MODULE:OBJECT`."
                + (
                    f"\ndashboard: http{'s' if stack.secure else ''}://{stack.dashboard_address}"
                    if stack.dashboard_address
                    else ""
                )
                + "\nCtrl-C stops.",
                highlight=False,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping…")
    except (StackError, TandemError) as err:
        console.print(f"[red]error:[/red] {err}", highlight=False)
        console.print(stack.logs(), highlight=False, markup=False)
        ok = False
    finally:
        stack.stop()
        if ns.keep:
            console.print(f"kept {workdir}", highlight=False)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        "[green]demo finished: every job went as expected; the stack is stopped.[/green]"
        if ok
        else "[red]demo finished with unexpected results[/red]"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

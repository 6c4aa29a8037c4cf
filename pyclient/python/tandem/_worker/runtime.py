"""The worker process's machinery: one asyncio event loop that never runs
user code (but ``async def`` ops) and speaks the op-worker protocol
(``proto/tandem/v1/worker.proto``) over core NATS:

* every heartbeat interval it publishes :class:`WorkerInfo` on
  ``tandem.workers.heartbeat``, and a ``StepHeartbeat`` (with the latest
  progress) on ``tandem.step.hb.<job>.<attempt>`` for each step it holds,
  the first one as it accepts the step;
* it takes steps from ``tandem.op.<op>`` in the queue group
  ``tandem-workers`` and answers each with one ``StepResponse``; a step
  beyond its capacity (``concurrency`` running plus a small backlog) is
  answered ``OVERLOADED`` at once, which hands the job back uncounted;
* a publish on ``tandem.step.cancel.<job>.<attempt>``, or the step's own
  timeout, sets the step's cancel flag, and after ``cancel_grace`` stops it
  hard (:mod:`tandem._worker.runner`);
* SIGTERM / SIGINT drain it: a draining WorkerInfo, no new steps, running
  ones finish until ``drain_timeout``, the rest are answered
  ``SHUTTING_DOWN`` (handed back uncounted), exit 0. A second signal stops
  at once.

Inputs and outputs above the request's ``inline_limit`` travel through the
``tandem_payloads`` object store under the names the orchestrator gives.

Each step request is a ``tandem.worker.step`` span, child of the
orchestrator's attempt span, ended when the answer is sent
(:mod:`tandem._worker.telemetry`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import secrets
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError

from opentelemetry import trace

from tandem._errors import CATALOGUE
from tandem._tracing import traceparent_of
from tandem._worker import telemetry
from tandem._worker.api import OpDef, StepInfo, Worker
from tandem._worker.logs import LOGGER, StepLogger, configure, step_fields
from tandem._worker.outcome import Failure, Outcome
from tandem._worker.runner import AsyncRunner, ProcessRunner, Runner, Running, ThreadRunner
from tandem._worker.schema import ParamError
from tandem.v1 import errors_pb2, worker_pb2

__all__ = ["WorkerConfig", "Runtime", "run", "make_id", "DEFAULT_NATS_URL"]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

# The protocol's subjects and names (orchestrator-go/internal/workers).
HEARTBEAT_SUBJECT = "tandem.workers.heartbeat"
OP_SUBJECT = "tandem.op."
QUEUE_GROUP = "tandem-workers"
STEP_HEARTBEAT_SUBJECT = "tandem.step.hb."
STEP_CANCEL_SUBJECT = "tandem.step.cancel."
PAYLOADS_BUCKET = "tandem_payloads"

#: Inline limit assumed when a request gives none: a quarter of a default
#: nats-server's max_payload (the orchestrator's own rule).
DEFAULT_INLINE_LIMIT = 256 * 1024
#: What an OVERLOADED answer asks the orchestrator to wait before it offers
#: the step again.
RETRY_AFTER_MS = 250

_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class WorkerConfig:
    """How a worker runs; the fields of ``tandem worker``'s options."""

    nats_url: str = DEFAULT_NATS_URL
    #: User and password auth: the password, or a file holding it (read at
    #: every connect, so a rotated password is picked up on a reconnect).
    nats_user: str = ""
    nats_password: str = field(default="", repr=False)
    nats_password_file: str = ""
    #: A JWT credentials file (``.creds``: the user JWT and its nkey seed).
    nats_creds: str = ""
    #: TLS to NATS: the CA bundle of the server's certificate, and a client
    #: certificate and key when the server verifies clients.
    nats_ca: str = ""
    nats_cert: str = ""
    nats_key: str = ""
    #: Steps at once. None: cores (process pool), 16 (threads), 100 (only async ops).
    concurrency: int | None = None
    #: Where sync ops run: ``"process"`` (default) or ``"thread"``.
    pool: Literal["process", "thread"] = "process"
    #: Steps accepted beyond ``concurrency`` that wait for a free slot
    #: (None: half of concurrency, at least 1); more are answered OVERLOADED.
    backlog: int | None = None
    heartbeat_interval: float = 1.0
    cancel_grace: float = 5.0
    drain_timeout: float = 30.0
    worker_id: str = ""
    log_level: str = "info"

    def check(self) -> None:
        self.check_nats()
        if self.pool not in ("process", "thread"):
            raise ValueError(f"pool must be 'process' or 'thread', not {self.pool!r}")
        if self.concurrency is not None and not 1 <= self.concurrency <= 10_000:
            raise ValueError(f"concurrency must be 1 to 10000, not {self.concurrency}")
        if self.backlog is not None and not 0 <= self.backlog <= 10_000:
            raise ValueError(f"backlog must be 0 to 10000, not {self.backlog}")
        if not 0.05 <= self.heartbeat_interval <= 60:
            raise ValueError("heartbeat interval must be 0.05 to 60 seconds")
        if self.cancel_grace < 0 or self.drain_timeout < 0:
            raise ValueError("cancel grace and drain timeout must not be negative")
        if self.worker_id and not _ID_RE.fullmatch(self.worker_id):
            raise ValueError(
                f"worker id {self.worker_id!r} must be 1 to 64 characters of A-Z a-z 0-9 _ -"
            )

    def check_nats(self) -> None:
        """Refuses contradictory or unreadable NATS credentials, naming the option."""
        if self.nats_password and self.nats_password_file:
            raise ValueError(
                "give the NATS password once: --nats-password-file or env TANDEM_NATS_PASSWORD"
            )
        has_password = bool(self.nats_password or self.nats_password_file)
        if has_password and not self.nats_user:
            raise ValueError("a NATS password needs --nats-user (env TANDEM_NATS_USER)")
        if self.nats_user and not has_password:
            raise ValueError(
                f"--nats-user {self.nats_user!r} needs --nats-password-file FILE or env "
                "TANDEM_NATS_PASSWORD"
            )
        if self.nats_user and self.nats_creds:
            raise ValueError("give --nats-creds or --nats-user, not both")
        if bool(self.nats_cert) != bool(self.nats_key):
            raise ValueError("--nats-cert and --nats-key go together")
        for flag, path in (
            ("--nats-creds", self.nats_creds),
            ("--nats-password-file", self.nats_password_file),
            ("--nats-ca", self.nats_ca),
            ("--nats-cert", self.nats_cert),
            ("--nats-key", self.nats_key),
        ):
            if path and not os.access(path, os.R_OK):
                why = "no such file" if not os.path.exists(path) else "not readable"
                raise ValueError(f"{flag} {path!r}: {why}")
        if self.nats_password_file:
            self.password()
        if self.nats_ca or self.nats_cert:
            self.tls_context()

    def nats_auth(self) -> dict[str, Any]:
        """The credential and TLS arguments of ``nats.connect`` (files read now)."""
        opts: dict[str, Any] = {}
        if self.nats_user:
            opts["user"] = self.nats_user
            opts["password"] = self.password()
        if self.nats_creds:
            opts["user_credentials"] = self.nats_creds
        tls = self.tls_context()
        if tls is not None:
            opts["tls"] = tls
        return opts

    def password(self) -> str:
        """The NATS password: ``nats_password``, else the first line of
        ``nats_password_file`` (read now)."""
        if not self.nats_password_file:
            return self.nats_password
        try:
            with open(self.nats_password_file, encoding="utf-8") as f:
                text = f.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--nats-password-file {self.nats_password_file!r}: {err}") from None
        password = text.splitlines()[0].strip() if text.strip() else ""
        if not password:
            raise ValueError(f"--nats-password-file {self.nats_password_file!r} is empty")
        return password

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for NATS (None: no --nats-ca or --nats-cert):
        the server's certificate checked against ``nats_ca`` (else the
        system's roots), the client certificate presented when given."""
        if not (self.nats_ca or self.nats_cert):
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.nats_ca or None)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"--nats-ca {self.nats_ca!r}: not a PEM CA bundle ({err})") from None
        if self.nats_cert:
            try:
                ctx.load_cert_chain(self.nats_cert, self.nats_key)
            except (OSError, ssl.SSLError) as err:
                raise ValueError(
                    f"--nats-cert {self.nats_cert!r} / --nats-key {self.nats_key!r}: "
                    f"not a matching PEM certificate and key ({err})"
                ) from None
        return ctx


def make_id(name: str) -> str:
    """``<name>-<host>-<pid>-<random>``, in the id alphabet, at most 64 characters."""
    suffix = f"{os.getpid()}-{secrets.token_hex(3)}"
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{name}-{socket.gethostname()}").strip("-")
    return f"{prefix[: 63 - len(suffix)]}-{suffix}" if prefix else suffix


def redact(urls: str) -> str:
    """NATS URLs without the passwords or tokens they may carry (for logs)."""
    return re.sub(r"//[^/@,]*@", "//***@", urls)


def default_concurrency(pool: str) -> int:
    if pool == "process":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return max(1, os.cpu_count() or 1)
    return 16 if pool == "thread" else 100


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def error_proto(failure: Failure) -> errors_pb2.Error:
    """A Failure as the ``tandem.v1.Error`` of a StepResponse (the code from
    the catalogue)."""
    entry = CATALOGUE.get(failure.reason)
    code = entry.code.value[0] if entry is not None and entry.code is not None else 2
    return errors_pb2.Error(
        code=code,
        reason=errors_pb2.ErrorReason.Value(failure.reason),
        message=failure.message,
        metadata=failure.metadata,
    )


class _Step:
    """A step this worker accepted, until it is answered."""

    def __init__(self, msg: Any, req: worker_pb2.StepRequest, op: OpDef, span: trace.Span) -> None:
        self.msg = msg
        self.req = req
        self.op = op
        self.span = span
        self.traceparent = traceparent_of(span)
        self.key = (req.job_id, req.attempt, req.index)
        self.accepted = time.monotonic()
        self.running: Running | None = None
        #: Why it is being stopped: an ErrorReason name.
        self.stop_reason: str | None = None
        self.hard = asyncio.Event()
        self.answered = False
        self.task: asyncio.Task[None] | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.log = StepLogger(
            LOGGER, step_fields(req.job_id, req.attempt, req.index, op.name, self.traceparent)
        )

    def progress(self) -> tuple[float, str] | None:
        return self.running.signals.latest() if self.running is not None else None


class Runtime:
    """One worker process serving a :class:`Worker`'s ops."""

    def __init__(self, worker: Worker, config: WorkerConfig) -> None:
        config.check()
        self.worker = worker
        self.config = config
        self.id = config.worker_id or make_id(worker.name)
        self.ops = {op.name: op for op in worker.ops}
        if not self.ops:
            raise ValueError(f"{worker!r} has no ops")
        has_sync = any(not op.is_async for op in worker.ops)
        self.pool = config.pool if has_sync else "async"
        if self.pool == "process":
            worker.check_picklable()
        self.concurrency = config.concurrency or default_concurrency(self.pool)
        self.backlog = (
            config.backlog if config.backlog is not None else max(1, self.concurrency // 2)
        )
        self.async_runner: Runner = AsyncRunner()
        self.sync_runner: Runner | None = None
        if self.pool == "process":
            modules = sorted({op.fn.__module__ for op in worker.ops if not op.is_async})
            self.sync_runner = ProcessRunner(
                self.concurrency, modules, config.log_level, {"worker_id": self.id}
            )
        elif self.pool == "thread":
            self.sync_runner = ThreadRunner()
        self.log = StepLogger(LOGGER, {"worker_id": self.id})
        self.steps: dict[tuple[str, int, int], _Step] = {}
        self.waiting = 0
        self.in_flight = 0
        self.succeeded = 0
        self.failed = 0
        self.draining = False
        self.started_at = timestamp_pb2.Timestamp()
        self.started_at.GetCurrentTime()
        self._op_specs = [op.to_proto() for op in worker.ops]
        self._nc: Any = None
        self._obs: Any = None
        self._subs: list[Any] = []
        self._closing = False
        self._last_error = ""

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> int:
        """Runs until a signal and a drain; returns the exit code."""
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._capacity = asyncio.Semaphore(self.concurrency)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            for runner in (self.sync_runner, self.async_runner):
                if runner is not None:
                    await runner.start()
        except Exception as err:  # noqa: BLE001 - reported, exit 1
            self.log.error("starting the pool failed", extra={"error": str(err)})
            return 1
        try:
            try:
                if not await self._connect():
                    return 0  # stopped before NATS was reached
            except ConnectionError:
                return 1
            beats = loop.create_task(self._heartbeats(), name="tandem-heartbeats")
            self.log.info(
                "worker serving",
                extra={
                    "ops": ",".join(self.ops),
                    "pool": self.pool,
                    "concurrency": self.concurrency,
                    "backlog": self.backlog,
                    "nats_url": redact(self.config.nats_url),
                },
            )
            await self._stop.wait()
            await self._drain()
            beats.cancel()
            return 0
        finally:
            for runner in (self.sync_runner, self.async_runner):
                if runner is not None:
                    await runner.close()
            await self._close_nats()

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._stop.is_set():
            self.log.info(f"{name}: draining", extra={"in_flight": len(self.steps)})
            self._stop.set()
        else:
            self.log.warning(f"{name} again: stopping the running steps now")
            self._force.set()

    async def _connect(self) -> bool:
        """Connects (retrying until reached or stopped) and subscribes."""
        import nats

        opts: dict[str, Any] = {
            "servers": [u.strip() for u in self.config.nats_url.split(",") if u.strip()],
            "name": f"tandem-worker {self.id}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1,
            "connect_timeout": 5,
            "error_cb": self._nats_error,
            "disconnected_cb": self._nats_disconnected,
            "reconnected_cb": self._nats_reconnected,
            "closed_cb": self._nats_closed,
        }
        try:
            opts.update(self.config.nats_auth())  # files read now: rotation on reconnect
        except ValueError as err:
            self.log.error("cannot read the NATS credentials", extra={"error": str(err)})
            raise ConnectionError(str(err)) from err
        self.log.info("connecting to NATS", extra={"nats_url": redact(self.config.nats_url)})
        # nats-py retries an unreachable server itself (max_reconnect_attempts
        # -1, errors through error_cb); a signal meanwhile ends the wait.
        connecting = loop_task(nats.connect(**opts))
        stopped = loop_task(self._stop.wait())
        await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            return False
        try:
            self._nc = connecting.result()
        except Exception as err:  # noqa: BLE001 - e.g. refused credentials: not retried
            self.log.error(
                "cannot connect to NATS",
                extra={
                    "nats_url": redact(self.config.nats_url),
                    "error": str(err) or type(err).__name__,
                },
            )
            raise ConnectionError(str(err)) from err
        await self._subscribe()
        return True

    async def _subscribe(self) -> None:
        nc = self._nc
        self._obs = None
        self._subs = [
            await nc.subscribe(OP_SUBJECT + name, queue=QUEUE_GROUP, cb=self._on_request)
            for name in self.ops
        ]
        self._cancel_sub = await nc.subscribe(STEP_CANCEL_SUBJECT + "*.*", cb=self._on_cancel)
        await nc.flush()
        await self._publish_info()

    async def _nats_error(self, err: Exception) -> None:
        text = str(err) or type(err).__name__
        # While a server is down the same error comes every second: once is enough.
        level = logging.DEBUG if text == self._last_error else logging.WARNING
        self._last_error = text
        self.log.log(level, "NATS error", extra={"error": text})

    async def _nats_disconnected(self) -> None:
        if not self._closing:
            self.log.warning("disconnected from NATS; reconnecting")

    async def _nats_reconnected(self) -> None:
        # nats-py re-subscribes by itself; announce at once.
        self._last_error = ""
        self.log.info("reconnected to NATS", extra={"server": str(self._nc.connected_url.netloc)})
        await self._publish_info()

    async def _nats_closed(self) -> None:
        if self._closing:
            return
        # A connection closed for good (not a reconnect): open a new one.
        self.log.warning("the NATS connection closed; connecting again")
        self._nc = None
        asyncio.get_running_loop().create_task(self._connect())

    async def _close_nats(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.flush(), 5)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            try:
                await self._nc.close()
            except Exception:  # noqa: BLE001
                pass

    async def _payloads(self) -> Any:
        if self._obs is None:
            self._obs = await self._nc.jetstream().object_store(PAYLOADS_BUCKET)
        return self._obs

    # ------------------------------------------------------------ heartbeats

    def info(self) -> worker_pb2.WorkerInfo:
        from tandem import __version__

        return worker_pb2.WorkerInfo(
            id=self.id,
            ops=self._op_specs,
            concurrency=self.concurrency,
            in_flight=self.in_flight,
            pool=self.pool,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            heartbeat_interval=_duration(self.config.heartbeat_interval),
            succeeded=self.succeeded,
            failed=self.failed,
            draining=self.draining,
        )

    async def _publish(self, subject: str, data: bytes) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            await nc.publish(subject, data)
        except Exception as err:  # noqa: BLE001 - a missed beat is the next one's job
            self.log.debug("publish failed", extra={"subject": subject, "error": str(err)})

    async def _publish_info(self) -> None:
        await self._publish(HEARTBEAT_SUBJECT, self.info().SerializeToString())

    async def _beat_step(self, step: _Step) -> None:
        hb = worker_pb2.StepHeartbeat(
            job_id=step.req.job_id, attempt=step.req.attempt, worker_id=self.id
        )
        progress = step.progress()
        if progress is not None:
            hb.has_progress, hb.progress, hb.message = True, progress[0], progress[1]
        subject = f"{STEP_HEARTBEAT_SUBJECT}{step.req.job_id}.{step.req.attempt}"
        await self._publish(subject, hb.SerializeToString())

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.heartbeat_interval
        due = loop.time()
        while True:
            await self._publish_info()
            for step in list(self.steps.values()):
                if not step.answered:
                    await self._beat_step(step)
            due += interval
            late = loop.time() - due
            if late > interval:
                # Something blocked the loop: an async op that does not await.
                self.log.warning(
                    "the event loop was blocked; heartbeats were late (an async op that "
                    "blocks? make it a plain function so it runs in the pool)",
                    extra={"late_s": round(late, 3)},
                )
                due = loop.time()
            await asyncio.sleep(max(0.0, due - loop.time()))

    # ------------------------------------------------------------ steps

    async def _reply(self, msg: Any, resp: worker_pb2.StepResponse) -> None:
        resp.worker_id = self.id
        try:
            await msg.respond(resp.SerializeToString())
        except Exception as err:  # noqa: BLE001 - the orchestrator sees a lost worker and retries
            self.log.warning("answering a step failed", extra={"error": str(err)})

    async def _reject(self, msg: Any, failure: Failure, span: trace.Span | None = None) -> None:
        if msg.reply:
            await self._reply(msg, worker_pb2.StepResponse(error=error_proto(failure)))
        if span is not None:
            telemetry.end_step_span(span, failure)

    async def _on_request(self, msg: Any) -> None:
        try:
            req = worker_pb2.StepRequest.FromString(msg.data)
        except DecodeError:
            await self._reject(msg, Failure("REQUEST_INVALID", "undecodable StepRequest"))
            return
        name = msg.subject[len(OP_SUBJECT) :]
        span = telemetry.step_span(req, name, self.id)
        op = self.ops.get(name)
        if op is None or req.step.op not in ("", name):
            await self._reject(
                msg,
                Failure("UNKNOWN_OP", f"this worker does not serve {req.step.op[:128]!r}"),
                span,
            )
            return
        if self.draining:
            await self._reject(
                msg,
                Failure("SHUTTING_DOWN", f"worker {self.id} is draining; the step goes back"),
                span,
            )
            return
        key = (req.job_id, req.attempt, req.index)
        if key in self.steps:
            await self._reject(
                msg, Failure("REQUEST_INVALID", "this step is already running here"), span
            )
            return
        if self.waiting + self.in_flight >= self.concurrency + self.backlog:
            await self._reject(
                msg,
                Failure(
                    "OVERLOADED",
                    f"worker {self.id} is busy ({self.in_flight} running, {self.waiting} waiting)",
                    {"retry_after_ms": str(RETRY_AFTER_MS)},
                ),
                span,
            )
            return
        step = _Step(msg, req, op, span)
        self.steps[key] = step
        self.waiting += 1
        await self._beat_step(step)
        step.task = asyncio.get_running_loop().create_task(self._run(step))

    def _on_cancel_subject(self, subject: str) -> tuple[str, int] | None:
        parts = subject[len(STEP_CANCEL_SUBJECT) :].split(".")
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    async def _on_cancel(self, msg: Any) -> None:
        which = self._on_cancel_subject(msg.subject)
        if which is None:
            return
        for step in list(self.steps.values()):
            if (step.req.job_id, step.req.attempt) == which:
                step.log.info("cancel requested")
                self._stop_step(step, "CANCELLED")

    def _stop_step(self, step: _Step, reason: str, grace: float | None = None) -> None:
        """Stops a step: at once when its function has not started, else
        its cancel flag now and a hard stop after the grace period."""
        if step.answered:
            return
        if step.stop_reason is None:
            step.stop_reason = reason
        if step.running is None:
            if step.task is not None:
                step.task.cancel()
            return
        step.running.signals.cancel()
        wait = self.config.cancel_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        step.timers.append(loop.call_later(wait, step.hard.set))

    def _stop_failure(self, step: _Step) -> Failure:
        where = f"step {step.req.index} ({step.op.name})"
        if step.stop_reason == "TIMEOUT":
            return Failure("TIMEOUT", f"{where} ran past its timeout on worker {self.id}")
        if step.stop_reason == "SHUTTING_DOWN":
            return Failure(
                "SHUTTING_DOWN", f"{where}: worker {self.id} is shutting down; the step goes back"
            )
        return Failure("CANCELLED", f"{where} cancelled")

    async def _run(self, step: _Step) -> None:
        req = step.req
        loop = asyncio.get_running_loop()
        deadline = None
        if req.HasField("timeout"):
            seconds = req.timeout.ToNanoseconds() / 1e9
            deadline = time.time() + seconds
            step.timers.append(loop.call_later(max(0.0, seconds), self._stop_step, step, "TIMEOUT"))
        started = False
        try:
            async with self._capacity:
                self.waiting -= 1
                self.in_flight += 1
                started = True
                try:
                    outcome = await self._execute(step, deadline)
                finally:
                    self.in_flight -= 1
            await self._answer(step, outcome)
        except asyncio.CancelledError:
            # Stopped before its function started (cancel, timeout, drain).
            await self._answer(step, self._stop_failure(step))
        except Exception as err:  # noqa: BLE001 - a bug here must still answer the step
            step.log.exception("step machinery failed")
            await self._answer(
                step, Failure("INTERNAL_ERROR", f"worker: {type(err).__name__}: {err}")
            )
        finally:
            if not started:
                self.waiting -= 1
            for t in step.timers:
                t.cancel()
            self.steps.pop(step.key, None)

    async def _execute(self, step: _Step, deadline: float | None) -> Outcome:
        req, op = step.req, step.op
        try:
            kwargs = op.kwargs(req.step.params)
        except ParamError as err:
            return Failure(err.reason, f"step {req.index} ({op.name}): {err.message}", err.metadata)
        data = await self._input(req)
        if isinstance(data, Failure):
            return data
        info = StepInfo(req.job_id, req.attempt, req.index, op.name, deadline, step.traceparent)
        runner = self.async_runner if op.is_async else self.sync_runner
        assert runner is not None
        step.running = await runner.begin(op, data, kwargs, info)
        if step.stop_reason is not None:
            self._stop_step(step, step.stop_reason)  # asked while it was starting
        hard = loop_task(step.hard.wait())
        try:
            done, _ = await asyncio.wait(
                {step.running.outcome, hard}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            hard.cancel()
        if step.running.outcome in done and not step.running.outcome.cancelled():
            outcome = step.running.outcome.result()
        else:
            step.running.hard_stop()
            outcome = Failure("CANCELLED", "stopped")
        if step.stop_reason is not None:
            return self._stop_failure(step)
        return outcome

    async def _input(self, req: worker_pb2.StepRequest) -> bytes | Failure:
        if not req.input_object:
            return bytes(req.input)
        try:
            buf = io.BytesIO()
            obs = await self._payloads()
            await obs.get(req.input_object, writeinto=buf)
            return buf.getvalue()
        except Exception as err:  # noqa: BLE001 - the orchestrator retries the attempt
            return Failure(
                "BROKER_UNAVAILABLE",
                f"reading the step input {req.input_object[:128]!r} from the object store "
                f"failed: {type(err).__name__}: {err}",
            )

    async def _answer(self, step: _Step, outcome: Outcome) -> None:
        if step.answered:
            return
        step.answered = True
        req = step.req
        resp = worker_pb2.StepResponse()
        if isinstance(outcome, bytes):
            limit = req.inline_limit or DEFAULT_INLINE_LIMIT
            if len(outcome) > limit:
                failure = await self._put_output(req, outcome)
                if failure is not None:
                    outcome = failure
                else:
                    resp.output_object, resp.output_size = req.output_object, len(outcome)
            else:
                resp.output = outcome
        if isinstance(outcome, Failure):
            resp.error.CopyFrom(error_proto(outcome))
            if outcome.reason != "SHUTTING_DOWN":
                self.failed += 1
            step.log.info(
                "step failed",
                extra={
                    "reason": outcome.reason,
                    "error": outcome.message,
                    "seconds": round(time.monotonic() - step.accepted, 3),
                },
            )
        else:
            resp.content_type = step.op.content_type
            self.succeeded += 1
            step.log.debug(
                "step done",
                extra={
                    "bytes": len(outcome),
                    "seconds": round(time.monotonic() - step.accepted, 3),
                },
            )
        await self._reply(step.msg, resp)
        telemetry.end_step_span(step.span, outcome)

    async def _put_output(self, req: worker_pb2.StepRequest, data: bytes) -> Failure | None:
        if not req.output_object:
            return Failure(
                "OUTPUT_TOO_LARGE",
                f"the output ({len(data)} bytes) is over the inline limit and the request "
                "names no output object",
            )
        try:
            obs = await self._payloads()
            await obs.put(req.output_object, data)
            return None
        except Exception as err:  # noqa: BLE001 - the orchestrator retries the attempt
            return Failure(
                "BROKER_UNAVAILABLE",
                f"writing the step output to the object store failed: {type(err).__name__}: {err}",
            )

    # ------------------------------------------------------------ drain

    async def _drain(self) -> None:
        self.draining = True
        await self._publish_info()
        for sub in self._subs:
            try:
                await asyncio.wait_for(sub.drain(), 5)
            except Exception:  # noqa: BLE001 - best effort: a closed connection has no subs
                pass
        for step in list(self.steps.values()):
            if step.running is None:
                self._stop_step(step, "SHUTTING_DOWN")
        tasks = [s.task for s in self.steps.values() if s.task is not None]
        if tasks:
            self.log.info(
                "waiting for running steps",
                extra={"steps": len(tasks), "drain_timeout_s": self.config.drain_timeout},
            )
            all_done = loop_task(asyncio.wait(tasks))
            force = loop_task(self._force.wait())
            await asyncio.wait(
                {all_done, force},
                timeout=self.config.drain_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            all_done.cancel()
            force.cancel()
        left = [s for s in self.steps.values() if not s.answered]
        for step in left:
            step.log.warning("drain deadline: handing the step back")
            self._stop_step(step, "SHUTTING_DOWN", grace=0)
        rest = [s.task for s in left if s.task is not None]
        if rest:
            await asyncio.wait(rest, timeout=10)
        await self._publish_info()
        self.log.info("drained", extra={"succeeded": self.succeeded, "failed": self.failed})


def loop_task(coro: Any) -> asyncio.Task[Any]:
    return asyncio.get_running_loop().create_task(coro)


def run(worker: Worker, config: WorkerConfig) -> int:
    """Configures JSON logs (and, when the environment asks, span export)
    and serves ``worker`` until drained; returns the exit code."""
    config.check()
    runtime = Runtime(worker, config)
    configure(config.log_level, worker_id=runtime.id)
    logging.getLogger("nats").setLevel(logging.WARNING)
    stop_tracing = telemetry.setup(runtime.id, runtime.log)
    try:
        return asyncio.run(runtime.serve())
    finally:
        stop_tracing()  # flushes the spans still buffered

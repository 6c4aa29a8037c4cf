"""The public face of op workers: :class:`Worker` (a registry of op
functions), :class:`StepContext` (what a running step sees) and
:func:`load` (``MODULE:OBJECT`` → a Worker)."""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tandem._worker import schema
from tandem._worker.logs import StepLogger, step_fields
from tandem.v1 import compute_pb2

__all__ = ["Worker", "OpDef", "StepContext", "StepInfo", "Signals", "load"]

F = TypeVar("F", bound=Callable[..., Any])

#: The most ops one worker may announce (the orchestrator's limit).
MAX_OPS = 1000
#: Longest progress message kept (the orchestrator's limit).
MAX_PROGRESS_MESSAGE = 256


@dataclass(frozen=True)
class OpDef:
    """One registered op: its name, function and schema."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    signature: schema.Signature
    description: str
    version: str
    content_type: str

    def to_proto(self) -> compute_pb2.OpSpec:
        return compute_pb2.OpSpec(
            name=self.name,
            description=self.description,
            params=[p.to_proto() for p in self.signature.params],
            output_content_type=self.content_type,
            provider="worker",
            version=self.version,
        )

    def kwargs(self, raw: Mapping[str, str]) -> dict[str, Any]:
        """The function's param arguments from a step's strings (raises
        :class:`tandem._worker.schema.ParamError`)."""
        return schema.parse_params(self.signature.params, raw)


class Worker:
    """A set of ops served by ``tandem worker MODULE:OBJECT``::

        import tandem
        from typing import Annotated, Literal

        worker = tandem.Worker("acme")

        @worker.op("acme.ocr", description="Text of a scanned page.",
                   version="1", content_type="text/plain")
        def ocr(data: bytes, *, lang: Literal["eng", "deu"] = "eng",
                dpi: Annotated[int, tandem.Range(72, 1200)] = 300,
                ctx: tandem.StepContext) -> str:
            ...

    The function's first argument receives the step's input bytes; ``ctx``
    (optional) the :class:`StepContext`; every other argument is a param,
    its schema read from its type hint and default (see
    :mod:`tandem._worker.schema`). It returns ``bytes`` or ``str`` (sent as
    UTF-8). ``async def`` ops run on the worker's event loop and must not
    block it; plain functions run in a pool of processes (``--pool
    process``, the default: CPU-bound code cannot stall the worker) or
    threads (``--pool thread``, for blocking I/O).

    ``name`` labels the worker in logs and starts its id.
    """

    def __init__(self, name: str = "tandem") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a Worker needs a non-empty name")
        self.name = name
        self._ops: dict[str, OpDef] = {}

    def __repr__(self) -> str:
        return f"Worker({self.name!r}, ops={list(self._ops)})"

    @property
    def ops(self) -> list[OpDef]:
        """The registered ops, in registration order."""
        return list(self._ops.values())

    def get(self, name: str) -> OpDef | None:
        return self._ops.get(name)

    def op(
        self,
        name: str,
        *,
        description: str | None = None,
        version: str = "",
        content_type: str = "application/octet-stream",
        params: Mapping[str, schema.Param] | None = None,
    ) -> Callable[[F], F]:
        """Registers the decorated function as op ``name`` (1 to 128 of
        ``A-Z a-z 0-9 _ - .`` in dot-separated tokens) and returns it
        unchanged. ``description`` defaults to the docstring's first
        paragraph; ``params`` overrides what the signature says of a param
        (``{"dpi": tandem.Param(min=72, description="dots per inch")}``).
        Raises TypeError/ValueError naming the op at once when the name or
        the signature cannot be served."""

        def register(fn: F) -> F:
            self.add(
                fn,
                name,
                description=description,
                version=version,
                content_type=content_type,
                params=params,
            )
            return fn

        return register

    def add(
        self,
        fn: Callable[..., Any],
        name: str,
        *,
        description: str | None = None,
        version: str = "",
        content_type: str = "application/octet-stream",
        params: Mapping[str, schema.Param] | None = None,
    ) -> OpDef:
        """:meth:`op` without the decorator."""
        schema.check_op_name(name)
        if name in self._ops:
            raise ValueError(f"op {name} is registered twice")
        if len(self._ops) >= MAX_OPS:
            raise ValueError(f"a worker serves at most {MAX_OPS} ops")
        if not callable(fn):
            raise TypeError(f"op {name}: {fn!r} is not callable")
        sig = schema.read_signature(name, fn, params, StepContext)
        text = schema.doc_summary(fn) if description is None else schema.one_line(description)
        op = OpDef(
            name=name,
            fn=fn,
            is_async=inspect.iscoroutinefunction(fn),
            signature=sig,
            description=text,
            version=schema.one_line(version, 64),
            content_type=schema.one_line(content_type, 256) or "application/octet-stream",
        )
        self._ops[name] = op
        return op

    def check_picklable(self) -> None:
        """Raises ValueError for a sync op the process pool cannot send to a
        child process (a lambda, a nested function): the child imports it by
        module and name."""
        for op in self._ops.values():
            if op.is_async:
                continue
            try:
                same = pickle.loads(pickle.dumps(op.fn)) is op.fn
            except Exception as err:  # noqa: BLE001 - reported with the fix
                raise ValueError(
                    f"op {op.name}: the process pool cannot import {op.fn!r} in a child "
                    f"process ({err}); define it at the top level of a module, or use "
                    "--pool thread"
                ) from None
            if not same:
                raise ValueError(
                    f"op {op.name}: {op.fn!r} is not what its module's "
                    f"{getattr(op.fn, '__qualname__', '?')} names (a decorator that wraps "
                    "it?); the process pool imports it by that name; use --pool thread"
                )

    def run(self, **options: Any) -> int:
        """Serves the ops until SIGTERM or SIGINT (then drains); returns the
        exit code. ``options`` are :class:`tandem._worker.runtime.WorkerConfig`
        fields (``nats_url``, ``concurrency``, ``pool``, ...), as the
        ``tandem worker`` options. NATS credentials: ``nats_creds`` (a
        ``.creds`` file), or ``nats_user`` with ``nats_password_file`` (or
        ``nats_password``); TLS to NATS: ``nats_ca`` (and ``nats_cert`` with
        ``nats_key``). Bad settings raise ``ValueError`` naming the option."""
        from tandem._worker.runtime import WorkerConfig, run

        return run(self, WorkerConfig(**options))


# ---------------------------------------------------------------- the step context


class Signals(Protocol):
    """How a step's context reaches the machinery around it: the cancel flag
    and the progress report (in-process, or shared memory across the
    process pool's boundary)."""

    def cancelled(self) -> bool: ...

    def report(self, fraction: float, message: str) -> None: ...


@dataclass(frozen=True)
class StepInfo:
    """Which step a context belongs to (plain data, picklable)."""

    job_id: str
    attempt: int
    step: int
    op: str
    #: ``time.time()`` by which the step must end, or None.
    deadline: float | None = None
    #: The W3C trace context of the step's span (``tandem.worker.step``).
    traceparent: str = ""

    def log_fields(self) -> dict[str, Any]:
        """What every log line about the step carries."""
        return step_fields(self.job_id, self.attempt, self.step, self.op, self.traceparent)


class StepContext:
    """What a running step can know and say: pass an argument named ``ctx``.

    Attributes:
        job_id, attempt, step (its index in the pipeline), op: which step.
        traceparent: the W3C trace context of the step's span
            (``tandem.worker.step``; "" when the job carries none). The op
            runs with that span current, so OpenTelemetry's
            ``start_as_current_span`` nests under it by itself (a
            process-pool child exports nothing unless it sets up an SDK).
        logger: a logger whose JSON lines carry job_id, attempt, step, op,
            trace_id and span_id.
    """

    def __init__(self, info: StepInfo, signals: Signals) -> None:
        self._info = info
        self._signals = signals
        self.job_id = info.job_id
        self.attempt = info.attempt
        self.step = info.step
        self.op = info.op
        self.traceparent = info.traceparent
        self.logger: logging.LoggerAdapter[logging.Logger] = StepLogger(
            logging.getLogger(f"tandem.op.{info.op}"), info.log_fields()
        )

    def __repr__(self) -> str:
        return f"StepContext(job_id={self.job_id!r}, attempt={self.attempt}, op={self.op!r})"

    @property
    def cancelled(self) -> bool:
        """True once the step should stop: the job was cancelled, its deadline
        passed or the worker is shutting down. Check it between chunks of
        work and return (or raise) soon; after the grace period
        (``--cancel-grace``) the step is stopped hard."""
        return self._signals.cancelled()

    def is_cancelled(self) -> bool:
        """Same as :attr:`cancelled`."""
        return self._signals.cancelled()

    def time_left(self) -> float | None:
        """Seconds until the step's deadline (None: none given)."""
        if self._info.deadline is None:
            return None
        return max(0.0, self._info.deadline - time.time())

    def progress(self, fraction: float, message: str = "") -> None:
        """Reports progress: ``fraction`` in [0, 1] (clamped) and a short
        message (at most 256 bytes, one line). Cheap: call it as often as
        you like; the worker sends the latest with each heartbeat, and the
        job record (``tandem watch``, ``Job.progress``) shows it."""
        f = float(fraction)
        if math.isnan(f):
            raise ValueError("progress fraction is NaN")
        self._signals.report(
            min(max(f, 0.0), 1.0), schema.one_line(str(message), MAX_PROGRESS_MESSAGE)
        )


# ---------------------------------------------------------------- loading


def load(spec: str) -> Worker:
    """The :class:`Worker` named by ``MODULE:OBJECT`` (``OBJECT`` defaults to
    ``worker``; the current folder is importable, as with ``python -m``).
    Raises ValueError with what to fix."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "worker"
    if not module_name:
        raise ValueError(f"{spec!r}: expected MODULE:OBJECT, e.g. myops:worker")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Worker):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a tandem.Worker")
    if not obj.ops:
        raise ValueError(f"{spec} has no ops: register some with @{attr}.op(...)")
    return obj

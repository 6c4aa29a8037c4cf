"""The client's data types and their conversion from and to ``tandem.v1``.

Public results are plain frozen dataclasses, so user code never depends on
generated protobuf classes; the conversions live here, once.
"""

from __future__ import annotations

import datetime as _dt
import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import IO, Any, TypeVar, Union

from tandem._errors import TandemError, from_proto_error
from tandem.v1 import compute_pb2, jobs_pb2, worker_pb2

_D = TypeVar("_D")

__all__ = [
    "JobState",
    "Step",
    "StepsLike",
    "Payload",
    "Job",
    "Attempt",
    "Progress",
    "WorkerInfo",
    "OpSpec",
    "ParamSpec",
    "Limits",
    "Ops",
    "QueueInfo",
    "DeadLetters",
    "JobList",
    "AuditEntry",
    "AuditPage",
]


class JobState(enum.IntEnum):
    """Where a job is in its life (``tandem.v1.JobState``)."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    RETRYING = 3
    SUCCEEDED = 4
    FAILED = 5
    DEAD = 6
    CANCELLED = 7

    @property
    def terminal(self) -> bool:
        """True for SUCCEEDED, FAILED, DEAD and CANCELLED.

        DEAD is terminal for waiting purposes: only an explicit dead-letter
        retry moves the job on.
        """
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.name


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD, JobState.CANCELLED})


def _param_str(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Step:
    """One stage of a pipeline: an op name and its parameters.

    Parameters are sent as strings; ints and bools are converted
    (``True`` → ``"true"``)::

        Step("compress.zstd", level=3)
        Step("image.thumbnail", {"max_width": 64})
    """

    op: str
    params: Mapping[str, str] = field(default_factory=dict)

    def __init__(
        self, op: str, params: Mapping[str, object] | None = None, **kwargs: object
    ) -> None:
        merged = {**(params or {}), **kwargs}
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "params", {str(k): _param_str(v) for k, v in merged.items()})

    def to_dict(self) -> dict[str, Any]:
        """The ``{"op": ..., "params": {...}}`` form used by ``tandem._native``."""
        return {"op": self.op, "params": dict(self.params)}

    def to_proto(self) -> compute_pb2.Step:
        return compute_pb2.Step(op=self.op, params=dict(self.params))

    @classmethod
    def from_proto(cls, msg: compute_pb2.Step) -> Step:
        return cls(msg.op, dict(msg.params))


StepLike = Union[str, Step, Mapping[str, Any]]
#: A pipeline: an op name, a :class:`Step`, a ``{"op", "params"}`` mapping,
#: or a sequence of those.
StepsLike = Union[StepLike, Sequence[StepLike]]
#: Job input: bytes-like data, a path (``os.PathLike``) or a binary file.
Payload = Union[bytes, bytearray, memoryview, "os.PathLike[str]", IO[bytes]]


def to_step(item: StepLike) -> Step:
    if isinstance(item, Step):
        return item
    if isinstance(item, str):
        return Step(item)
    if isinstance(item, Mapping):
        if "op" not in item:
            raise TypeError(f"a step mapping needs an 'op' key, got {dict(item)!r}")
        params = item.get("params") or {}
        if not isinstance(params, Mapping):
            raise TypeError(f"step params must be a mapping, got {type(params).__name__}")
        return Step(str(item["op"]), params)
    raise TypeError(f"a step is an op name, a tandem.Step or a mapping, not {type(item).__name__}")


def to_steps(steps: StepsLike) -> list[Step]:
    """Normalises any accepted pipeline form to a list of :class:`Step`."""
    if isinstance(steps, (str, Step, Mapping)):
        result = [to_step(steps)]
    elif isinstance(steps, Iterable):
        result = [to_step(s) for s in steps]
    else:
        raise TypeError(
            f"steps must be an op name, a Step or a list of them, not {type(steps).__name__}"
        )
    if not result:
        raise ValueError("a pipeline needs at least one step")
    return result


def read_payload(payload: Payload) -> bytes:
    """Reads a payload into bytes, once.

    ``str`` is refused on purpose: it is ambiguous between a file name and
    text. Pass ``pathlib.Path(name)`` or ``text.encode()``.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        raise TypeError(
            "payload is a str: pass bytes (text.encode()), a pathlib.Path or a binary file"
        )
    if isinstance(payload, os.PathLike):
        with open(os.fspath(payload), "rb") as f:
            return f.read()
    read = getattr(payload, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            raise TypeError("payload file is opened in text mode: open it with 'rb'")
        return bytes(data)
    raise TypeError(f"payload must be bytes, a path or a binary file, not {type(payload).__name__}")


def _ts(msg: Any, name: str) -> _dt.datetime | None:
    if not msg.HasField(name):
        return None
    value: _dt.datetime = getattr(msg, name).ToDatetime(tzinfo=_dt.timezone.utc)
    return value


def _same_fields(cls: type[_D], msg: Any, **overrides: Any) -> _D:
    """``cls`` with each field copied from ``msg``'s field of the same name,
    but for ``overrides``."""
    values = {
        f.name: getattr(msg, f.name)
        for f in fields(cls)  # type: ignore[arg-type]
        if f.name not in overrides
    }
    return cls(**values, **overrides)


def _dur(msg: Any, name: str) -> float | None:
    if not msg.HasField(name):
        return None
    d = getattr(msg, name)
    return float(d.seconds) + float(d.nanos) / 1e9


@dataclass(frozen=True)
class Attempt:
    """One run of a job."""

    number: int
    started_at: _dt.datetime | None
    finished_at: _dt.datetime | None
    error: TandemError | None
    worker: str
    #: The W3C trace id of the job ("" when unknown): find its spans and logs by it.
    trace_id: str = ""


@dataclass(frozen=True)
class Progress:
    """What the running step of a worker op last reported
    (``StepContext.progress``)."""

    #: Index of the step in the pipeline.
    step: int
    #: In [0, 1].
    fraction: float
    message: str
    updated_at: _dt.datetime | None

    def __str__(self) -> str:
        text = f"step {self.step} {self.fraction:.0%}"
        return f"{text} {self.message}" if self.message else text


@dataclass(frozen=True)
class Job:
    """A job's record, as the orchestrator last reported it."""

    id: str
    queue: str
    state: JobState
    steps: list[Step]
    attempt: int
    max_attempts: int
    idempotency_key: str
    labels: dict[str, str]
    payload_size: int
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None
    started_at: _dt.datetime | None
    finished_at: _dt.datetime | None
    last_error: TandemError | None
    attempts: list[Attempt]
    result_size: int
    result_content_type: str
    #: The result bytes, when the call asked for them and the job SUCCEEDED.
    result: bytes | None
    #: Per-attempt timeout in seconds.
    timeout: float | None
    #: Progress reported by the running step of a worker op, if any.
    progress: Progress | None = None

    @property
    def done(self) -> bool:
        """True when the job is in a terminal state."""
        return self.state.terminal

    @classmethod
    def from_proto(cls, msg: jobs_pb2.Job) -> Job:
        state = (
            JobState(msg.state)
            if msg.state in JobState._value2member_map_
            else JobState.UNSPECIFIED
        )
        return cls(
            id=msg.id,
            queue=msg.queue,
            state=state,
            steps=[Step.from_proto(s) for s in msg.steps],
            attempt=msg.attempt,
            max_attempts=msg.max_attempts,
            idempotency_key=msg.idempotency_key,
            labels=dict(msg.labels),
            payload_size=msg.payload_size,
            created_at=_ts(msg, "created_at"),
            updated_at=_ts(msg, "updated_at"),
            started_at=_ts(msg, "started_at"),
            finished_at=_ts(msg, "finished_at"),
            last_error=from_proto_error(msg.last_error) if msg.HasField("last_error") else None,
            attempts=[
                Attempt(
                    number=a.number,
                    started_at=_ts(a, "started_at"),
                    finished_at=_ts(a, "finished_at"),
                    error=from_proto_error(a.error) if a.HasField("error") else None,
                    worker=a.worker,
                    trace_id=a.trace_id,
                )
                for a in msg.attempts
            ],
            result_size=msg.result_size,
            result_content_type=msg.result_content_type,
            result=bytes(msg.result)
            if msg.result or (state is JobState.SUCCEEDED and msg.result_size == 0)
            else None,
            timeout=_dur(msg, "timeout"),
            progress=Progress(
                step=msg.progress.step,
                fraction=msg.progress.fraction,
                message=msg.progress.message,
                updated_at=_ts(msg.progress, "updated_at"),
            )
            if msg.HasField("progress")
            else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (datetimes as ISO 8601, no result bytes)."""

        def iso(t: _dt.datetime | None) -> str | None:
            return t.isoformat() if t else None

        def err(e: TandemError | None) -> dict[str, Any] | None:
            if e is None:
                return None
            return {
                "reason": e.reason,
                "code": e.code.name if e.code else None,
                "message": e.message,
                "metadata": e.metadata,
            }

        return {
            "id": self.id,
            "queue": self.queue,
            "state": self.state.name,
            "steps": [s.to_dict() for s in self.steps],
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "idempotency_key": self.idempotency_key,
            "labels": self.labels,
            "payload_size": self.payload_size,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "last_error": err(self.last_error),
            "attempts": [
                {
                    "number": a.number,
                    "started_at": iso(a.started_at),
                    "finished_at": iso(a.finished_at),
                    "error": err(a.error),
                    "worker": a.worker,
                    "trace_id": a.trace_id,
                }
                for a in self.attempts
            ],
            "result_size": self.result_size,
            "result_content_type": self.result_content_type,
            "timeout": self.timeout,
            "progress": None
            if self.progress is None
            else {
                "step": self.progress.step,
                "fraction": self.progress.fraction,
                "message": self.progress.message,
                "updated_at": iso(self.progress.updated_at),
            },
        }


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of an op."""

    name: str
    type: str
    description: str
    default: str
    required: bool
    min: int
    max: int
    choices: list[str]


@dataclass(frozen=True)
class OpSpec:
    """One op: run by the compute service (``provider`` ``"compute"``) or by
    op workers (``"worker"``, ``tandem worker``)."""

    name: str
    description: str
    params: list[ParamSpec]
    output_content_type: str
    output_encoding: str
    debug: bool
    #: ``"compute"`` or ``"worker"``; empty when the server did not say.
    provider: str = ""
    #: For worker ops: how many live workers serve it (0: its jobs wait).
    live_workers: int = 0
    #: The op's own version, as its worker declares it.
    version: str = ""

    @classmethod
    def from_proto(cls, msg: compute_pb2.OpSpec) -> OpSpec:
        return cls(
            name=msg.name,
            description=msg.description,
            params=[
                ParamSpec(
                    name=p.name,
                    type=compute_pb2.ParamType.Name(p.type).removeprefix("PARAM_TYPE_").lower(),
                    description=p.description,
                    default=p.default_value,
                    required=p.required,
                    min=p.min,
                    max=p.max,
                    choices=list(p.choices),
                )
                for p in msg.params
            ],
            output_content_type=msg.output_content_type,
            output_encoding=msg.output_encoding,
            debug=msg.debug,
            provider=msg.provider,
            live_workers=msg.live_workers,
            version=msg.version,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OpSpec:
        """From the dicts ``tandem._native.list_ops()`` returns (same keys as
        the proto fields; missing keys take empty values)."""
        params = []
        for p in d.get("params") or []:
            ptype = str(p.get("type", "")).lower().removeprefix("param_type_")
            params.append(
                ParamSpec(
                    name=str(p.get("name", "")),
                    type=ptype,
                    description=str(p.get("description", "")),
                    default=str(p.get("default_value", p.get("default", "")) or ""),
                    required=bool(p.get("required", False)),
                    min=int(p.get("min", 0) or 0),
                    max=int(p.get("max", 0) or 0),
                    choices=[str(c) for c in p.get("choices") or []],
                )
            )
        return cls(
            name=str(d.get("name", "")),
            description=str(d.get("description", "")),
            params=params,
            output_content_type=str(d.get("output_content_type", "")),
            output_encoding=str(d.get("output_encoding", "")),
            debug=bool(d.get("debug", False)),
        )


@dataclass(frozen=True)
class Limits:
    """The compute service's limits in force."""

    max_request_bytes: int
    max_output_bytes: int
    max_steps: int
    max_batch_items: int
    max_image_pixels: int
    max_image_dimension: int
    workers: int
    queue_depth: int

    @classmethod
    def from_proto(cls, msg: compute_pb2.Limits) -> Limits:
        return _same_fields(cls, msg)


@dataclass(frozen=True)
class Ops:
    """What :meth:`Client.ops` returns: the op catalogue and the limits."""

    ops: list[OpSpec]
    limits: Limits | None

    def __iter__(self) -> Any:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def names(self) -> list[str]:
        return [o.name for o in self.ops]

    def get(self, name: str) -> OpSpec | None:
        return next((o for o in self.ops if o.name == name), None)


@dataclass(frozen=True)
class QueueInfo:
    """A queue's configuration and live figures."""

    name: str
    depth: int
    in_flight: int
    workers: int
    min_workers: int
    max_workers: int
    dead_letters: int
    paused: bool
    max_attempts: int
    job_timeout: float | None
    max_depth: int
    rate_limit: float
    completed_per_second: float

    @classmethod
    def from_proto(cls, msg: jobs_pb2.QueueInfo) -> QueueInfo:
        return _same_fields(cls, msg, job_timeout=_dur(msg, "job_timeout"))


@dataclass(frozen=True)
class JobList:
    """What ``Client.jobs`` found: the newest matching jobs first (without
    result bytes), how many records were looked at, and whether older ones
    exist that were not."""

    jobs: list[Job]
    scanned: int
    truncated: bool


@dataclass(frozen=True)
class DeadLetters:
    """A page of a queue's dead-letter queue."""

    queue: str
    jobs: list[Job]
    total: int


@dataclass(frozen=True)
class WorkerInfo:
    """A live op worker (``tandem worker``) as the orchestrator last heard of it."""

    id: str
    ops: list[OpSpec]
    #: Steps it runs at once, and runs now.
    concurrency: int
    in_flight: int
    #: ``"async"``, ``"thread"`` or ``"process"``.
    pool: str
    host: str
    pid: int
    #: The tandem package version of the worker.
    version: str
    started_at: _dt.datetime | None
    last_heartbeat: _dt.datetime | None
    #: Seconds between its heartbeats.
    heartbeat_interval: float | None
    #: Steps it finished since it started, by outcome.
    succeeded: int
    failed: int
    draining: bool

    @classmethod
    def from_proto(cls, msg: worker_pb2.WorkerInfo) -> WorkerInfo:
        return _same_fields(
            cls,
            msg,
            ops=[OpSpec.from_proto(o) for o in msg.ops],
            started_at=_ts(msg, "started_at"),
            last_heartbeat=_ts(msg, "last_heartbeat"),
            heartbeat_interval=_dur(msg, "heartbeat_interval"),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (datetimes as ISO 8601, op names only)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["ops"] = [o.name for o in self.ops]
        for k in ("started_at", "last_heartbeat"):
            d[k] = d[k].isoformat() if d[k] else None
        return d


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit trail (``JobService.ListAudit``): a
    state-changing call, who made it and how it ended."""

    #: Its sequence number in the audit stream (increasing).
    seq: int
    time: _dt.datetime | None
    #: ``token:<id>``, ``cert:<subject>``, ``cli:<user>@<host>`` or ``anonymous``.
    actor: str
    #: The RPC's method name (``SubmitJob``, ``CancelJob``, ...) or
    #: ``token.create``, ``token.revoke``.
    action: str
    queue: str
    #: The jobs acted on (at most 100; ``job_count`` is the total).
    job_ids: list[str]
    job_count: int
    #: The gRPC status code name (``OK``, ``PERMISSION_DENIED``, ...).
    code: str
    #: The ErrorReason name on failure ("" on success).
    reason: str
    peer: str
    detail: str

    @classmethod
    def from_proto(cls, msg: Any) -> AuditEntry:
        return _same_fields(cls, msg, time=_ts(msg, "time"), job_ids=list(msg.job_ids))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (the time as ISO 8601)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["time"] = self.time.isoformat() if self.time else None
        return d


@dataclass(frozen=True)
class AuditPage:
    """A page of the audit trail: its entries, oldest first, and the last
    sequence number the server looked at (``after_seq`` of the next page)."""

    entries: list[AuditEntry]
    last_seq: int


def ops_from_proto(resp: compute_pb2.ListOpsResponse) -> Ops:
    return Ops(
        ops=[OpSpec.from_proto(o) for o in resp.ops],
        limits=Limits.from_proto(resp.limits) if resp.HasField("limits") else None,
    )

"""Tandem's exception tree and the one mapping from gRPC statuses to it.

Every Tandem service error carries a ``google.rpc.ErrorInfo`` detail whose
``reason`` is an ``ErrorReason`` name from ``proto/tandem/v1/errors.proto``.
This module is the only place in the client that turns a ``grpc.RpcError``
(sync or asyncio), a stored ``tandem.v1.Error`` or a native
``TransformError`` into a typed exception. Nothing else reads status details
and nothing parses messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from tandem._types import Job

__all__ = [
    "TandemError",
    "InvalidJob",
    "NotFound",
    "Conflict",
    "Overloaded",
    "Unavailable",
    "Timeout",
    "Cancelled",
    "InternalError",
    "JobFailed",
    "ERROR_DOMAIN",
]

#: The ``ErrorInfo.domain`` Tandem services put on their errors.
ERROR_DOMAIN = "tandem.dev"

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class TandemError(Exception):
    """Base of every error the ``tandem`` package raises.

    Attributes:
        message: the human-readable message (names the field and the limit).
        reason: the stable machine-readable reason, an ``ErrorReason`` name
            such as ``"UNKNOWN_OP"``; ``""`` when the server sent none (for
            example when the connection itself failed).
        code: the gRPC status code, or ``None`` for errors raised by the
            client itself.
        metadata: the ``ErrorInfo`` metadata (keys ``step``, ``op``,
            ``param``, ``field``, ``limit``, ``actual``, ``queue``,
            ``job_id``, ``retry_after_ms`` where they apply).
        cause: the underlying exception (a ``grpc.RpcError`` or a native
            ``TransformError``), if any; also set as ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        code: grpc.StatusCode | None = None,
        metadata: Mapping[str, str] | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.code = code
        self.metadata: dict[str, str] = dict(metadata or {})
        self.cause = cause
        if cause is not None:
            self.__cause__ = cause

    def __str__(self) -> str:
        if self.reason:
            return f"{self.reason}: {self.message}"
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"

    @property
    def retryable(self) -> bool:
        """Whether retrying the same call later may succeed."""
        return False


class InvalidJob(TandemError):
    """The request is wrong and retrying it cannot help (INVALID_ARGUMENT).

    Unknown op, bad or out-of-range parameter, payload too large, corrupt
    input, decompression bomb, malformed request.
    """


class NotFound(TandemError):
    """The queue, job or dead letter does not exist (NOT_FOUND)."""


class Conflict(TandemError):
    """The job's state does not allow the call, or an idempotency key was
    reused with a different request (FAILED_PRECONDITION, ALREADY_EXISTS)."""


class Overloaded(TandemError):
    """The queue is full or compute is saturated (RESOURCE_EXHAUSTED).

    Attributes:
        retry_after: seconds the server asked the client to wait before
            retrying, or ``None`` when it gave no hint.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return True


class Unavailable(TandemError):
    """The service cannot be reached, is draining, or cannot reach its own
    dependencies (UNAVAILABLE)."""

    @property
    def retryable(self) -> bool:
        return True


class Timeout(TandemError, TimeoutError):
    """A call, a job attempt or a wait ran past its deadline."""


class Cancelled(TandemError):
    """The job or the call was cancelled."""


class InternalError(TandemError):
    """A bug on the server side (INTERNAL, UNKNOWN, ...)."""


class JobFailed(TandemError):
    """A job ended without a result: FAILED (permanent error) or DEAD
    (retryable error, attempts used up; it waits in the dead-letter queue).

    Attributes:
        job_id: the job's id.
        state: ``"FAILED"`` or ``"DEAD"``.
        error: the job's last error as a typed :class:`TandemError`.
        attempts: how many attempts ran.
        job: the final job record (a :class:`tandem.Job`).
    """

    def __init__(
        self, job: Job, error: TandemError, *, message: str | None = None
    ) -> None:
        state = job.state.name
        attempts = int(job.attempt)
        text = message or (
            f"job {job.id} {state} after {attempts} attempt"
            f"{'' if attempts == 1 else 's'}: {error}"
        )
        super().__init__(
            text, reason=error.reason, code=error.code, metadata=error.metadata
        )
        self.job = job
        self.job_id: str = job.id
        self.state: str = state
        self.error = error
        self.attempts = attempts


# ---------------------------------------------------------------- mapping

# Reasons whose class does not follow from the status code alone.
_BY_REASON: dict[str, type[TandemError]] = {
    "UNKNOWN_OP": InvalidJob,
    "PARAM_INVALID": InvalidJob,
    "PARAM_OUT_OF_RANGE": InvalidJob,
    "PAYLOAD_TOO_LARGE": InvalidJob,
    "INPUT_CORRUPT": InvalidJob,
    "OUTPUT_TOO_LARGE": InvalidJob,
    "REQUEST_INVALID": InvalidJob,
    "QUEUE_NOT_FOUND": NotFound,
    "JOB_NOT_FOUND": NotFound,
    "DEAD_LETTER_NOT_FOUND": NotFound,
    "QUEUE_FULL": Overloaded,
    "OVERLOADED": Overloaded,
    "JOB_STATE_CONFLICT": Conflict,
    "IDEMPOTENCY_CONFLICT": Conflict,
    "COMPUTE_UNAVAILABLE": Unavailable,
    "BROKER_UNAVAILABLE": Unavailable,
    "SHUTTING_DOWN": Unavailable,
    "TIMEOUT": Timeout,
    "CANCELLED": Cancelled,
    "INTERNAL_ERROR": InternalError,
}

_BY_CODE: dict[grpc.StatusCode, type[TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidJob,
    grpc.StatusCode.OUT_OF_RANGE: InvalidJob,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Timeout,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
}

_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code(value: object) -> grpc.StatusCode | None:
    """A ``grpc.StatusCode`` from a number (google.rpc.Code), a name, or a
    ``StatusCode``; ``None`` when unknown."""
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _CODE_BY_NUMBER.get(value)
    if isinstance(value, str):
        return getattr(grpc.StatusCode, value.upper(), None)
    return None


def make_error(
    code: grpc.StatusCode | None,
    reason: str,
    message: str,
    metadata: Mapping[str, str] | None = None,
    *,
    retry_after: float | None = None,
    cause: BaseException | None = None,
) -> TandemError:
    """Builds the typed error for a code and a reason.

    The status code decides the class; the reason decides it only where the
    code does not (no code, OK or UNKNOWN), so that a server that sends an
    unusual code for a reason still gets the class its code implies.
    """
    md = dict(metadata or {})
    cls: type[TandemError] | None = None
    if code is not None and code not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN):
        cls = _BY_CODE.get(code)
    if cls is None:
        cls = _BY_REASON.get(reason) or (
            _BY_CODE.get(code) if code is not None else None
        ) or TandemError
    if cls is Overloaded:
        if retry_after is None and "retry_after_ms" in md:
            try:
                retry_after = int(md["retry_after_ms"]) / 1000.0
            except ValueError:
                retry_after = None
        return Overloaded(
            message, retry_after=retry_after, reason=reason, code=code, metadata=md, cause=cause
        )
    return cls(message, reason=reason, code=code, metadata=md, cause=cause)


def _details_from_trailers(trailers: Iterable[Any] | None) -> status_pb2.Status | None:
    for item in trailers or ():
        try:
            key, value = item[0], item[1]
        except (TypeError, IndexError):
            continue
        if key == _STATUS_DETAILS_KEY and isinstance(value, (bytes, bytearray)):
            status = status_pb2.Status()
            try:
                status.ParseFromString(bytes(value))
            except DecodeError:
                return None
            return status
    return None


def from_rpc_error(err: grpc.RpcError) -> TandemError:
    """Maps a ``grpc.RpcError`` (sync call or ``grpc.aio.AioRpcError``) to a
    :class:`TandemError`, reading the ``ErrorInfo`` and ``RetryInfo``
    details from the status."""
    code_fn = getattr(err, "code", None)
    code = code_fn() if callable(code_fn) else None
    details_fn = getattr(err, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(code or "gRPC error")
    trailers_fn = getattr(err, "trailing_metadata", None)
    trailers = trailers_fn() if callable(trailers_fn) else None
    status = _details_from_trailers(trailers)
    reason = ""
    metadata: dict[str, str] = {}
    retry_after: float | None = None
    if status is not None:
        if status.message:
            message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata.update(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    if not reason and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"deadline exceeded: {message}"
    return make_error(
        code if isinstance(code, grpc.StatusCode) else None,
        reason,
        message,
        metadata,
        retry_after=retry_after,
        cause=err if isinstance(err, BaseException) else None,
    )


def from_proto_error(err: Any) -> TandemError:
    """Maps a stored ``tandem.v1.Error`` (job records, batch items)."""
    from tandem.v1 import errors_pb2

    reason = errors_pb2.ErrorReason.Name(err.reason) if err.reason else ""
    if reason == "ERROR_REASON_UNSPECIFIED":
        reason = ""
    return make_error(status_code(int(err.code)), reason, err.message, dict(err.metadata))


def from_native_error(err: BaseException) -> TandemError:
    """Maps ``tandem._native.TransformError`` (attributes ``reason``,
    ``code``, ``message``, ``metadata``)."""
    reason = str(getattr(err, "reason", "") or "")
    code = status_code(getattr(err, "code", None))
    message = str(getattr(err, "message", "") or err)
    metadata = getattr(err, "metadata", None) or {}
    return make_error(
        code, reason, message, {str(k): str(v) for k, v in dict(metadata).items()}, cause=err
    )

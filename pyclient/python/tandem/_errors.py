"""Tandem's exception tree and the one mapping from gRPC statuses to it.

Every Tandem service error carries a ``google.rpc.ErrorInfo`` detail (domain
``tandem.dev``) whose ``reason`` is an ``ErrorReason`` name from
``proto/tandem/v1/errors.proto``. That enum is the error catalogue: each
value's ``(tandem.v1.reason)`` option names the gRPC code the reason travels
with and whether it is retryable. :data:`CATALOGUE` is read from those
options at import time, so the exception class of a reason (the class of its
code) and its :attr:`TandemError.retryable` cannot drift from the services'.

The reason decides the class; the status code decides it only when there is
no catalogued reason (a transport failure, a foreign server). This module is
the only place in the client that turns a ``grpc.RpcError`` (sync or
asyncio), a stored ``tandem.v1.Error`` or a native ``TransformError`` into a
typed exception. Nothing else reads status details and nothing parses
messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

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
    "RateLimited",
    "Unavailable",
    "Unauthenticated",
    "TokenExpired",
    "PermissionDenied",
    "Timeout",
    "Cancelled",
    "InternalError",
    "JobFailed",
    "PermanentError",
    "RetryableError",
    "ERROR_DOMAIN",
    "CATALOGUE",
    "ReasonEntry",
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

    #: :attr:`retryable` of an error with neither a catalogued reason nor a
    #: status code (one the client raises itself).
    _retryable_default: ClassVar[bool] = False

    @property
    def retryable(self) -> bool:
        """Whether the same call, or reopening the same watch, may succeed later.

        The catalogue's word for the reason (its ``retryable``); for a
        reason catalogued with any code (``INJECTED_FAULT``), that of the
        catalogue's reasons of this error's code. Without a catalogued reason
        the failure did not come from a Tandem service's own mapping (the
        connection, a proxy, the transport's limits): only UNAVAILABLE is
        retryable then.
        """
        entry = CATALOGUE.get(self.reason)
        if entry is not None:
            if entry.code is not None:
                return entry.retryable
            return self.code is not None and _CODE_RETRYABLE.get(self.code, False)
        if self.code is not None:
            return self.code is grpc.StatusCode.UNAVAILABLE
        return self._retryable_default


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

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        # A bare RESOURCE_EXHAUSTED (no reason) comes from the gRPC transport
        # (a message over a size limit): sending it again cannot help, unless
        # the server asked for a retry with a delay.
        return super().retryable or bool(self.retry_after)


class RateLimited(Overloaded):
    """The caller (its token, or its address when auth is off) made more
    calls than the orchestrator's ``--rate-limit`` allows (reason
    RATE_LIMITED, code RESOURCE_EXHAUSTED). Retryable: the client's retries
    and waits back off as on :class:`Overloaded`, at least ``retry_after``."""


class Unauthenticated(TandemError):
    """The call carried no valid credentials (UNAUTHENTICATED): no token, an
    unknown or revoked one, or a malformed ``authorization`` header. Not
    retryable: give the client a valid ``token`` (``$TANDEM_TOKEN``)."""


class TokenExpired(Unauthenticated):
    """The token's expiry (``token create --expires``) has passed (reason
    TOKEN_EXPIRED, code UNAUTHENTICATED): create a new token."""


class PermissionDenied(TandemError):
    """The token is valid but lacks the scope for this call on this queue
    (PERMISSION_DENIED; ``metadata`` names the ``scope`` and the ``queue``)."""


class Unavailable(TandemError):
    """The service cannot be reached, is draining, or cannot reach its own
    dependencies (UNAVAILABLE)."""

    _retryable_default = True


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

    def __init__(self, job: Job, error: TandemError, *, message: str | None = None) -> None:
        state = job.state.name
        attempts = int(job.attempt)
        text = message or (
            f"job {job.id} {state} after {attempts} attempt{'' if attempts == 1 else 's'}: {error}"
        )
        super().__init__(text, reason=error.reason, code=error.code, metadata=error.metadata)
        self.job = job
        self.job_id: str = job.id
        self.state: str = state
        self.error = error
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        # The job is over: asking for its result again gives the same answer
        # (``.error.retryable`` says whether the job's own failure was transient).
        return False


class PermanentError(TandemError):
    """Raised by an op's own code (``tandem worker``): the input or the params
    are wrong for good, so the job ends FAILED at once with reason
    ``OP_FAILED`` (not retried). ``metadata`` (a few short ``str`` pairs)
    travels with the error into the job record."""

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason="OP_FAILED", metadata=metadata)


class RetryableError(TandemError):
    """Raised by an op's own code (``tandem worker``): the failure is transient
    (a dependency was down), so the attempt is retried with backoff, like any
    other exception the op raises (reason ``OP_ERROR``); the job goes DEAD when
    its attempts are used up. Raising it says so explicitly."""

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message, reason="OP_ERROR", metadata=metadata)


# ---------------------------------------------------------------- the catalogue

# The class of each status code: of a reason, through the code the catalogue
# gives it; of a status without a catalogued reason, directly.
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
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

# Reasons with a class of their own: a subclass of their code's class.
_REASON_CLASS: dict[str, type[TandemError]] = {
    "TOKEN_EXPIRED": TokenExpired,
    "RATE_LIMITED": RateLimited,
}


@dataclass(frozen=True)
class ReasonEntry:
    """One ``ErrorReason`` of the catalogue (its ``(tandem.v1.reason)`` option).

    Attributes:
        name: the reason, e.g. ``"QUEUE_FULL"``.
        code: the gRPC code every service answers it with; ``None``: any
            code (the code then decides class and retryability).
        retryable: whether the failure is transient.
    """

    name: str
    code: grpc.StatusCode | None
    retryable: bool


def _read_catalogue() -> dict[str, ReasonEntry]:
    """The catalogue from the descriptor options of ``tandem.v1.ErrorReason``;
    refuses (at import) an entry the client could not map."""
    from tandem.v1 import errors_pb2

    entries: dict[str, ReasonEntry] = {}
    for value in errors_pb2.ErrorReason.DESCRIPTOR.values:
        if value.number == 0:
            continue  # ERROR_REASON_UNSPECIFIED: no reason
        options = value.GetOptions()
        if not options.HasExtension(errors_pb2.reason):
            raise RuntimeError(f"errors.proto: ErrorReason {value.name} has no (reason) option")
        spec = options.Extensions[errors_pb2.reason]
        code: grpc.StatusCode | None = None
        if spec.code:
            code = getattr(grpc.StatusCode, spec.code, None)
            if code not in _BY_CODE:
                raise RuntimeError(
                    f"errors.proto: ErrorReason {value.name} names code {spec.code!r}, "
                    "which is no gRPC error code the client maps"
                )
        entries[value.name] = ReasonEntry(value.name, code, bool(spec.retryable))
    return entries


#: Every ``ErrorReason`` name (but UNSPECIFIED) → its catalogue entry.
CATALOGUE: Mapping[str, ReasonEntry] = MappingProxyType(_read_catalogue())

_BY_REASON: dict[str, type[TandemError]] = {
    e.name: _BY_CODE[e.code] for e in CATALOGUE.values() if e.code is not None
}


def _reason_classes() -> None:
    """Puts the reason-specific classes in, each only when it refines the
    class of the code the catalogue gives its reason (refused at import
    otherwise, so the two cannot drift)."""
    for reason, cls in _REASON_CLASS.items():
        base = _BY_REASON.get(reason)
        if base is None or not issubclass(cls, base):
            raise RuntimeError(
                f"errors.proto: ErrorReason {reason} is not catalogued with the code "
                f"of {cls.__name__}'s base class"
            )
        _BY_REASON[reason] = cls


_reason_classes()


def _code_retryable() -> dict[grpc.StatusCode, bool]:
    """Retryability of a code for a reason catalogued with any code: a code
    is retryable when every reason the catalogue gives it is."""
    out: dict[grpc.StatusCode, bool] = {}
    for entry in CATALOGUE.values():
        if entry.code is not None:
            out[entry.code] = out.get(entry.code, True) and entry.retryable
    return out


_CODE_RETRYABLE = _code_retryable()


# ---------------------------------------------------------------- mapping

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

    A catalogued reason decides the class (that of the code the catalogue
    gives it), whatever code the status carries: so a reason always reads
    the same (``BROKER_UNAVAILABLE`` is :class:`Unavailable` under ABORTED
    too). The code decides only for a reason catalogued with any code
    (``INJECTED_FAULT``), for an unknown reason, and without one.
    """
    md = dict(metadata or {})
    cls = _BY_REASON.get(reason) or (_BY_CODE.get(code) if code is not None else None)
    if cls is None:
        cls = TandemError
    if issubclass(cls, Overloaded):
        if retry_after is None and "retry_after_ms" in md:
            try:
                retry_after = int(md["retry_after_ms"]) / 1000.0
            except ValueError:
                retry_after = None
        return cls(
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
    :class:`TandemError`, reading the ``ErrorInfo`` (domain ``tandem.dev``)
    and ``RetryInfo`` details from the status.

    The details travel in trailing metadata: the channel options of
    :func:`tandem._requests.channel_options` raise gRPC's metadata limits so
    a status with a long message or metadata still arrives whole (beyond
    them gRPC drops the status and reports RESOURCE_EXHAUSTED).
    """
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
                if info.domain != ERROR_DOMAIN:
                    continue  # another system's reason: not in our catalogue
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

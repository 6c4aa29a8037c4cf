"""What a step's run comes to: its output bytes, or a :class:`Failure` with
the catalogue reason the orchestrator acts on. The one mapping from what an
op function returns or raises, used in the worker process and in its pool's
child processes alike.

=============================  ==================  ====================
the function                   reason              the orchestrator
=============================  ==================  ====================
returns bytes / str            (output)            next step
raises tandem.PermanentError   ``OP_FAILED``       FAILED at once
raises tandem.RetryableError   ``OP_ERROR``        retried, then DEAD
raises anything else           ``OP_ERROR``        retried, then DEAD
returns something else         ``OP_ERROR``        retried, then DEAD
=============================  ==================  ====================

Messages are ``"<ExceptionType>: <message>"`` without the traceback (that
goes to the worker's log), at most :data:`MAX_MESSAGE` bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from tandem._errors import PermanentError, RetryableError, TandemError
from tandem._worker.schema import ParamError, one_line, truncate_utf8

__all__ = ["Failure", "Outcome", "from_exception", "to_output", "call_sync", "call_async"]

#: Longest error message sent (the orchestrator caps statuses at 1 KiB too).
MAX_MESSAGE = 1024
#: Metadata an op may attach to its error: pairs, and bytes per key / value
#: (the orchestrator caps metadata values at 128 bytes).
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 128


@dataclass(frozen=True)
class Failure:
    """A step that did not produce an output: an ``ErrorReason`` name, a
    message and ``ErrorInfo`` metadata. Plain data, so it crosses the
    process boundary of the process pool."""

    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)


#: A run's result: the output bytes or why there are none.
Outcome = Union[bytes, Failure]


def _message(text: str) -> str:
    return truncate_utf8(text, MAX_MESSAGE)


def _metadata(md: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in list(md.items())[:MAX_METADATA]:
        key = truncate_utf8(one_line(str(k)), MAX_METADATA_KEY)
        if key:
            out[key] = truncate_utf8(one_line(str(v)), MAX_METADATA_VALUE)
    return out


def describe(exc: BaseException) -> str:
    """``"<ExceptionType>: <message>"`` (or the type alone), bounded."""
    try:
        text = exc.message if isinstance(exc, TandemError) else str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        text = "<unprintable>"
    name = type(exc).__name__
    return _message(f"{name}: {text}" if text else name)


def from_exception(exc: BaseException) -> Failure:
    """The failure an exception raised by an op function stands for."""
    if isinstance(exc, PermanentError):
        return Failure("OP_FAILED", describe(exc), _metadata(exc.metadata))
    if isinstance(exc, RetryableError):
        return Failure("OP_ERROR", describe(exc), _metadata(exc.metadata))
    if isinstance(exc, ParamError):
        return Failure(exc.reason, _message(exc.message), _metadata(exc.metadata))
    return Failure("OP_ERROR", describe(exc))


def to_output(value: Any) -> Outcome:
    """The output bytes of what an op function returned (``str`` → UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return Failure(
        "OP_ERROR",
        _message(f"TypeError: the op returned {type(value).__name__}; return bytes or str"),
    )


def failed(exc: BaseException, log: logging.LoggerAdapter[Any] | logging.Logger) -> Failure:
    """Maps ``exc`` and logs it: a PermanentError in one line, anything else
    with its traceback (which never leaves the worker)."""
    failure = from_exception(exc)
    if isinstance(exc, PermanentError):
        log.info("op failed: %s", failure.message, extra={"reason": failure.reason})
    else:
        log.warning("op raised %s", failure.message, exc_info=exc, extra={"reason": failure.reason})
    return failure


def call_sync(
    fn: Callable[..., Any],
    data: bytes,
    kwargs: Mapping[str, Any],
    log: logging.LoggerAdapter[Any] | logging.Logger,
) -> Outcome:
    """Runs a sync op function and maps what it returned or raised."""
    try:
        return to_output(fn(data, **kwargs))
    except Exception as exc:  # noqa: BLE001 - every failure of user code is mapped
        return failed(exc, log)


async def call_async(
    fn: Callable[..., Awaitable[Any]],
    data: bytes,
    kwargs: Mapping[str, Any],
    log: logging.LoggerAdapter[Any] | logging.Logger,
) -> Outcome:
    """Runs an async op function and maps what it returned or raised
    (``asyncio.CancelledError`` is left to the caller)."""
    try:
        return to_output(await fn(data, **kwargs))
    except Exception as exc:  # noqa: BLE001 - every failure of user code is mapped
        return failed(exc, log)

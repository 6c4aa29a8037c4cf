"""The one gRPC → exception mapping (tandem/_errors.py)."""

from __future__ import annotations

import grpc
import pytest

import tandem
from tandem._errors import from_native_error, from_proto_error, make_error, status_code
from tandem.v1 import errors_pb2


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_OP", tandem.InvalidJob),
        (grpc.StatusCode.INVALID_ARGUMENT, "PARAM_OUT_OF_RANGE", tandem.InvalidJob),
        (grpc.StatusCode.INVALID_ARGUMENT, "PAYLOAD_TOO_LARGE", tandem.InvalidJob),
        (grpc.StatusCode.INVALID_ARGUMENT, "OUTPUT_TOO_LARGE", tandem.InvalidJob),
        (grpc.StatusCode.NOT_FOUND, "QUEUE_NOT_FOUND", tandem.NotFound),
        (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", tandem.NotFound),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", tandem.Overloaded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", tandem.Overloaded),
        (grpc.StatusCode.FAILED_PRECONDITION, "JOB_STATE_CONFLICT", tandem.Conflict),
        (grpc.StatusCode.UNAVAILABLE, "COMPUTE_UNAVAILABLE", tandem.Unavailable),
        (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", tandem.Unavailable),
        (grpc.StatusCode.UNAVAILABLE, "", tandem.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT", tandem.Timeout),
        (grpc.StatusCode.CANCELLED, "CANCELLED", tandem.Cancelled),
        (grpc.StatusCode.INTERNAL, "INTERNAL_ERROR", tandem.InternalError),
        (grpc.StatusCode.UNAVAILABLE, "INJECTED_FAULT", tandem.Unavailable),
        (grpc.StatusCode.INVALID_ARGUMENT, "INJECTED_FAULT", tandem.InvalidJob),
        # No code (a stored error without one): the reason decides.
        (None, "UNKNOWN_OP", tandem.InvalidJob),
        (None, "QUEUE_FULL", tandem.Overloaded),
        (None, "", tandem.TandemError),
    ],
)
def test_class_by_code_then_reason(code: grpc.StatusCode | None, reason: str, cls: type) -> None:
    err = make_error(code, reason, "msg", {"op": "x"})
    assert type(err) is cls
    assert err.reason == reason
    assert err.metadata == {"op": "x"}
    assert isinstance(err, tandem.TandemError)


def test_overloaded_retry_after_from_metadata() -> None:
    err = make_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", "full",
                     {"retry_after_ms": "250", "queue": "q"})
    assert isinstance(err, tandem.Overloaded)
    assert err.retry_after == pytest.approx(0.25)
    assert err.retryable


def test_timeout_is_also_builtin_timeout_error() -> None:
    err = make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT", "late")
    assert isinstance(err, TimeoutError)


def test_str_has_reason_and_message() -> None:
    err = make_error(grpc.StatusCode.INVALID_ARGUMENT, "PARAM_OUT_OF_RANGE",
                     'step 0 (compress.zstd): param "level" = 40 is out of range [1, 22]')
    assert str(err) == ('PARAM_OUT_OF_RANGE: step 0 (compress.zstd): param "level" = 40 '
                        "is out of range [1, 22]")


def test_from_proto_error() -> None:
    msg = errors_pb2.Error(code=3, reason=errors_pb2.INPUT_CORRUPT, message="bad png",
                           metadata={"step": "0"})
    err = from_proto_error(msg)
    assert isinstance(err, tandem.InvalidJob)
    assert err.reason == "INPUT_CORRUPT"
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.metadata == {"step": "0"}


def test_from_proto_error_unspecified_reason() -> None:
    err = from_proto_error(errors_pb2.Error(code=14, message="down"))
    assert isinstance(err, tandem.Unavailable)
    assert err.reason == ""


def test_from_native_error() -> None:
    class TransformError(Exception):
        pass

    native = TransformError("step 0 (nope): unknown op")
    native.reason = "UNKNOWN_OP"  # type: ignore[attr-defined]
    native.code = 3  # type: ignore[attr-defined]
    native.message = "step 0 (nope): unknown op"  # type: ignore[attr-defined]
    native.metadata = {"step": "0", "op": "nope"}  # type: ignore[attr-defined]
    err = from_native_error(native)
    assert isinstance(err, tandem.InvalidJob)
    assert err.metadata == {"step": "0", "op": "nope"}
    assert err.__cause__ is native


def test_status_code_forms() -> None:
    assert status_code(3) is grpc.StatusCode.INVALID_ARGUMENT
    assert status_code("unavailable") is grpc.StatusCode.UNAVAILABLE
    assert status_code(grpc.StatusCode.NOT_FOUND) is grpc.StatusCode.NOT_FOUND
    assert status_code(999) is None
    assert status_code(None) is None


def test_every_catalogue_reason_maps_to_a_specific_class() -> None:
    from tandem._errors import _BY_REASON

    names = [n for n in errors_pb2.ErrorReason.keys() if n != "ERROR_REASON_UNSPECIFIED"]
    missing = [n for n in names if n not in _BY_REASON and n != "INJECTED_FAULT"]
    assert missing == []

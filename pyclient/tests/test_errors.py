"""The one gRPC → exception mapping (tandem/_errors.py)."""

from __future__ import annotations

import grpc
import pytest

import tandem
from fake_server import RpcError
from tandem._errors import (
    CATALOGUE,
    from_native_error,
    from_proto_error,
    from_rpc_error,
    make_error,
    status_code,
)
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
        # The reason decides whatever the code: a queue watch that lost NATS
        # ends ABORTED, and is no conflict.
        (grpc.StatusCode.ABORTED, "BROKER_UNAVAILABLE", tandem.Unavailable),
        (grpc.StatusCode.UNKNOWN, "QUEUE_NOT_FOUND", tandem.NotFound),
        (None, "UNKNOWN_OP", tandem.InvalidJob),
        (None, "QUEUE_FULL", tandem.Overloaded),
        # No catalogued reason: the code decides.
        (grpc.StatusCode.ABORTED, "", tandem.Conflict),
        (grpc.StatusCode.NOT_FOUND, "SOME_NEWER_REASON", tandem.NotFound),
        (None, "", tandem.TandemError),
    ],
)
def test_class_by_reason_then_code(code: grpc.StatusCode | None, reason: str, cls: type) -> None:
    err = make_error(code, reason, "msg", {"op": "x"})
    assert type(err) is cls
    assert err.reason == reason
    assert err.metadata == {"op": "x"}
    assert isinstance(err, tandem.TandemError)


def test_overloaded_retry_after_from_metadata() -> None:
    err = make_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUEUE_FULL",
        "full",
        {"retry_after_ms": "250", "queue": "q"},
    )
    assert isinstance(err, tandem.Overloaded)
    assert err.retry_after == pytest.approx(0.25)
    assert err.retryable


def test_timeout_is_also_builtin_timeout_error() -> None:
    err = make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT", "late")
    assert isinstance(err, TimeoutError)


def test_str_has_reason_and_message() -> None:
    err = make_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARAM_OUT_OF_RANGE",
        'step 0 (compress.zstd): param "level" = 40 is out of range [1, 22]',
    )
    assert str(err) == (
        'PARAM_OUT_OF_RANGE: step 0 (compress.zstd): param "level" = 40 is out of range [1, 22]'
    )


def test_from_proto_error() -> None:
    msg = errors_pb2.Error(
        code=3, reason=errors_pb2.INPUT_CORRUPT, message="bad png", metadata={"step": "0"}
    )
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


# The class each catalogue code stands for (a new code in errors.proto needs
# its class here, and in tandem._errors).
CLASS_OF_CODE: dict[grpc.StatusCode, type[tandem.TandemError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: tandem.InvalidJob,
    grpc.StatusCode.NOT_FOUND: tandem.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: tandem.Conflict,
    grpc.StatusCode.RESOURCE_EXHAUSTED: tandem.Overloaded,
    grpc.StatusCode.UNAVAILABLE: tandem.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: tandem.Timeout,
    grpc.StatusCode.CANCELLED: tandem.Cancelled,
    grpc.StatusCode.INTERNAL: tandem.InternalError,
    grpc.StatusCode.UNKNOWN: tandem.InternalError,
    grpc.StatusCode.UNAUTHENTICATED: tandem.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: tandem.PermissionDenied,
}

# Reasons with a class of their own, a subclass of their code's class.
CLASS_OF_REASON: dict[str, type[tandem.TandemError]] = {
    "TOKEN_EXPIRED": tandem.TokenExpired,
    "RATE_LIMITED": tandem.RateLimited,
}


def test_every_reason_follows_the_catalogue() -> None:
    """Walks the whole ErrorReason enum of errors.proto: each reason becomes
    the class of the code its (reason) option names, whether the status
    carries that code, another one or none (a stored error), and its
    ``retryable`` (hence the client's retries) is the option's."""
    specs = {
        v.name: v.GetOptions().Extensions[errors_pb2.reason]
        for v in errors_pb2.ErrorReason.DESCRIPTOR.values
        if v.number != 0
    }
    assert set(specs) == set(CATALOGUE) and len(specs) > 15
    policy = tandem.RetryPolicy()
    codes = {grpc.StatusCode[spec.code] for spec in specs.values() if spec.code}
    for name, spec in specs.items():
        if not spec.code:
            # Any code: the code decides the class, and retryability is that
            # of the catalogue's reasons with that code.
            for code in codes:
                err = make_error(code, name, "m")
                same_code = [s.retryable for s in specs.values() if s.code == code.name]
                assert (type(err), err.retryable) == (CLASS_OF_CODE[code], all(same_code)), name
            continue
        code = grpc.StatusCode[spec.code]
        cls = CLASS_OF_REASON.get(name, CLASS_OF_CODE[code])
        assert issubclass(cls, CLASS_OF_CODE[code]), name
        errors = [make_error(sent, name, "m") for sent in (code, grpc.StatusCode.ABORTED, None)]
        errors.append(from_rpc_error(RpcError(code, name)))
        errors.append(
            from_proto_error(
                errors_pb2.Error(
                    code=code.value[0], reason=errors_pb2.ErrorReason.Value(name), message="m"
                )
            )
        )
        for err in errors:
            assert type(err) is cls, (name, err.code)
            assert err.reason == name
            assert err.retryable is spec.retryable, name
            assert policy.should_retry(err, 1) is spec.retryable, name
        assert errors[0].code is errors[-2].code is errors[-1].code is code
        assert CATALOGUE[name].code is code


def test_without_a_tandem_reason_the_code_decides() -> None:
    # Another system's ErrorInfo is not read as one of ours.
    err = from_rpc_error(RpcError(grpc.StatusCode.NOT_FOUND, "UNKNOWN_OP", domain="other.dev"))
    assert type(err) is tandem.NotFound and err.reason == "" and err.metadata == {}
    # A bare UNAVAILABLE is retryable; a bare RESOURCE_EXHAUSTED (the
    # transport's size limit) or DEADLINE_EXCEEDED (the caller's deadline) is not.
    assert make_error(grpc.StatusCode.UNAVAILABLE, "", "m").retryable
    assert not make_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "m").retryable
    assert make_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "", "m", retry_after=1.0).retryable
    assert not make_error(grpc.StatusCode.DEADLINE_EXCEEDED, "", "m").retryable
    assert not make_error(grpc.StatusCode.INTERNAL, "", "m").retryable

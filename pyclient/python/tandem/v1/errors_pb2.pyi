from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    UNKNOWN_OP: _ClassVar[ErrorReason]
    PARAM_INVALID: _ClassVar[ErrorReason]
    PARAM_OUT_OF_RANGE: _ClassVar[ErrorReason]
    PAYLOAD_TOO_LARGE: _ClassVar[ErrorReason]
    INPUT_CORRUPT: _ClassVar[ErrorReason]
    OUTPUT_TOO_LARGE: _ClassVar[ErrorReason]
    REQUEST_INVALID: _ClassVar[ErrorReason]
    OP_FAILED: _ClassVar[ErrorReason]
    QUEUE_NOT_FOUND: _ClassVar[ErrorReason]
    QUEUE_FULL: _ClassVar[ErrorReason]
    JOB_NOT_FOUND: _ClassVar[ErrorReason]
    JOB_STATE_CONFLICT: _ClassVar[ErrorReason]
    IDEMPOTENCY_CONFLICT: _ClassVar[ErrorReason]
    DEAD_LETTER_NOT_FOUND: _ClassVar[ErrorReason]
    OVERLOADED: _ClassVar[ErrorReason]
    COMPUTE_UNAVAILABLE: _ClassVar[ErrorReason]
    BROKER_UNAVAILABLE: _ClassVar[ErrorReason]
    TIMEOUT: _ClassVar[ErrorReason]
    SHUTTING_DOWN: _ClassVar[ErrorReason]
    OP_UNAVAILABLE: _ClassVar[ErrorReason]
    WORKER_LOST: _ClassVar[ErrorReason]
    OP_ERROR: _ClassVar[ErrorReason]
    UNAUTHENTICATED: _ClassVar[ErrorReason]
    TOKEN_EXPIRED: _ClassVar[ErrorReason]
    PERMISSION_DENIED: _ClassVar[ErrorReason]
    RATE_LIMITED: _ClassVar[ErrorReason]
    CANCELLED: _ClassVar[ErrorReason]
    INTERNAL_ERROR: _ClassVar[ErrorReason]
    INJECTED_FAULT: _ClassVar[ErrorReason]
ERROR_REASON_UNSPECIFIED: ErrorReason
UNKNOWN_OP: ErrorReason
PARAM_INVALID: ErrorReason
PARAM_OUT_OF_RANGE: ErrorReason
PAYLOAD_TOO_LARGE: ErrorReason
INPUT_CORRUPT: ErrorReason
OUTPUT_TOO_LARGE: ErrorReason
REQUEST_INVALID: ErrorReason
OP_FAILED: ErrorReason
QUEUE_NOT_FOUND: ErrorReason
QUEUE_FULL: ErrorReason
JOB_NOT_FOUND: ErrorReason
JOB_STATE_CONFLICT: ErrorReason
IDEMPOTENCY_CONFLICT: ErrorReason
DEAD_LETTER_NOT_FOUND: ErrorReason
OVERLOADED: ErrorReason
COMPUTE_UNAVAILABLE: ErrorReason
BROKER_UNAVAILABLE: ErrorReason
TIMEOUT: ErrorReason
SHUTTING_DOWN: ErrorReason
OP_UNAVAILABLE: ErrorReason
WORKER_LOST: ErrorReason
OP_ERROR: ErrorReason
UNAUTHENTICATED: ErrorReason
TOKEN_EXPIRED: ErrorReason
PERMISSION_DENIED: ErrorReason
RATE_LIMITED: ErrorReason
CANCELLED: ErrorReason
INTERNAL_ERROR: ErrorReason
INJECTED_FAULT: ErrorReason
REASON_FIELD_NUMBER: _ClassVar[int]
reason: _descriptor.FieldDescriptor

class ReasonSpec(_message.Message):
    __slots__ = ("code", "retryable")
    CODE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    code: str
    retryable: bool
    def __init__(self, code: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "reason", "message", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: ErrorReason
    message: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[_Union[ErrorReason, str]] = ..., message: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

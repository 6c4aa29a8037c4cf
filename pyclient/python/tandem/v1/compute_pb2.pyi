from tandem.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParamType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAM_TYPE_UNSPECIFIED: _ClassVar[ParamType]
    PARAM_TYPE_INT: _ClassVar[ParamType]
    PARAM_TYPE_ENUM: _ClassVar[ParamType]
    PARAM_TYPE_BOOL: _ClassVar[ParamType]
    PARAM_TYPE_STRING: _ClassVar[ParamType]
PARAM_TYPE_UNSPECIFIED: ParamType
PARAM_TYPE_INT: ParamType
PARAM_TYPE_ENUM: ParamType
PARAM_TYPE_BOOL: ParamType
PARAM_TYPE_STRING: ParamType

class Step(_message.Message):
    __slots__ = ("op", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    OP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    op: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, op: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TransformRequest(_message.Message):
    __slots__ = ("steps", "input", "job_id", "attempt")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    input: bytes
    job_id: str
    attempt: int
    def __init__(self, steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., input: _Optional[bytes] = ..., job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class TransformResponse(_message.Message):
    __slots__ = ("output", "content_type", "steps")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    content_type: str
    steps: _containers.RepeatedCompositeFieldContainer[StepStats]
    def __init__(self, output: _Optional[bytes] = ..., content_type: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepStats, _Mapping]]] = ...) -> None: ...

class StepStats(_message.Message):
    __slots__ = ("op", "input_bytes", "output_bytes", "duration_micros")
    OP_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_MICROS_FIELD_NUMBER: _ClassVar[int]
    op: str
    input_bytes: int
    output_bytes: int
    duration_micros: int
    def __init__(self, op: _Optional[str] = ..., input_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., duration_micros: _Optional[int] = ...) -> None: ...

class TransformBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TransformRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[TransformRequest, _Mapping]]] = ...) -> None: ...

class TransformBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TransformResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TransformResult, _Mapping]]] = ...) -> None: ...

class TransformResult(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: TransformResponse
    error: _errors_pb2.Error
    def __init__(self, response: _Optional[_Union[TransformResponse, _Mapping]] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ...) -> None: ...

class ListOpsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOpsResponse(_message.Message):
    __slots__ = ("ops", "limits")
    OPS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ops: _containers.RepeatedCompositeFieldContainer[OpSpec]
    limits: Limits
    def __init__(self, ops: _Optional[_Iterable[_Union[OpSpec, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class OpSpec(_message.Message):
    __slots__ = ("name", "description", "params", "output_content_type", "output_encoding", "debug", "provider", "live_workers", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    DEBUG_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    LIVE_WORKERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    params: _containers.RepeatedCompositeFieldContainer[ParamSpec]
    output_content_type: str
    output_encoding: str
    debug: bool
    provider: str
    live_workers: int
    version: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., params: _Optional[_Iterable[_Union[ParamSpec, _Mapping]]] = ..., output_content_type: _Optional[str] = ..., output_encoding: _Optional[str] = ..., debug: _Optional[bool] = ..., provider: _Optional[str] = ..., live_workers: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ParamSpec(_message.Message):
    __slots__ = ("name", "type", "description", "default_value", "required", "min", "max", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParamType
    description: str
    default_value: str
    required: bool
    min: int
    max: int
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParamType, str]] = ..., description: _Optional[str] = ..., default_value: _Optional[str] = ..., required: _Optional[bool] = ..., min: _Optional[int] = ..., max: _Optional[int] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes", "max_output_bytes", "max_steps", "max_batch_items", "max_image_pixels", "max_image_dimension", "workers", "queue_depth")
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    max_output_bytes: int
    max_steps: int
    max_batch_items: int
    max_image_pixels: int
    max_image_dimension: int
    workers: int
    queue_depth: int
    def __init__(self, max_request_bytes: _Optional[int] = ..., max_output_bytes: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_batch_items: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_image_dimension: _Optional[int] = ..., workers: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tandem.v1 import compute_pb2 as _compute_pb2
from tandem.v1 import errors_pb2 as _errors_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerInfo(_message.Message):
    __slots__ = ("id", "ops", "concurrency", "in_flight", "pool", "host", "pid", "version", "started_at", "last_heartbeat", "heartbeat_interval", "succeeded", "failed", "draining")
    ID_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    id: str
    ops: _containers.RepeatedCompositeFieldContainer[_compute_pb2.OpSpec]
    concurrency: int
    in_flight: int
    pool: str
    host: str
    pid: int
    version: str
    started_at: _timestamp_pb2.Timestamp
    last_heartbeat: _timestamp_pb2.Timestamp
    heartbeat_interval: _duration_pb2.Duration
    succeeded: int
    failed: int
    draining: bool
    def __init__(self, id: _Optional[str] = ..., ops: _Optional[_Iterable[_Union[_compute_pb2.OpSpec, _Mapping]]] = ..., concurrency: _Optional[int] = ..., in_flight: _Optional[int] = ..., pool: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., draining: _Optional[bool] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "index", "step", "input", "input_object", "timeout", "traceparent", "inline_limit", "output_object")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_OBJECT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    INLINE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_OBJECT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    index: int
    step: _compute_pb2.Step
    input: bytes
    input_object: str
    timeout: _duration_pb2.Duration
    traceparent: str
    inline_limit: int
    output_object: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., index: _Optional[int] = ..., step: _Optional[_Union[_compute_pb2.Step, _Mapping]] = ..., input: _Optional[bytes] = ..., input_object: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., traceparent: _Optional[str] = ..., inline_limit: _Optional[int] = ..., output_object: _Optional[str] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("output", "output_object", "output_size", "content_type", "error", "worker_id")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_OBJECT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    output: bytes
    output_object: str
    output_size: int
    content_type: str
    error: _errors_pb2.Error
    worker_id: str
    def __init__(self, output: _Optional[bytes] = ..., output_object: _Optional[str] = ..., output_size: _Optional[int] = ..., content_type: _Optional[str] = ..., error: _Optional[_Union[_errors_pb2.Error, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class StepHeartbeat(_message.Message):
    __slots__ = ("job_id", "attempt", "worker_id", "progress", "message", "has_progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HAS_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    worker_id: str
    progress: float
    message: str
    has_progress: bool
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_id: _Optional[str] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., has_progress: _Optional[bool] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

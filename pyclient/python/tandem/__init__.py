"""Tandem: a background-job system. This package is its Python client.

::

    import tandem

    with tandem.Client("127.0.0.1:50051") as client:
        job = client.submit("hash.sha256", b"hello")
        digest = job.result(timeout=30)

* :class:`Client` / :class:`AsyncClient` talk to the orchestrator over gRPC.
* :mod:`tandem.local` runs the same transforms in-process (``tandem._native``).
* :class:`Worker` serves ops written in Python (``tandem worker MODULE:OBJECT``)
  beside the built-in ones; see :mod:`tandem._worker`.
* Every error is a :class:`TandemError`; see its subclasses.
* The ``tandem`` command-line tool is :mod:`tandem.cli`.
"""

from tandem._async_client import AsyncClient, AsyncJobHandle
from tandem._client import Client, JobHandle
from tandem._errors import (
    Cancelled,
    Conflict,
    InternalError,
    InvalidJob,
    JobFailed,
    NotFound,
    Overloaded,
    PermanentError,
    PermissionDenied,
    RateLimited,
    RetryableError,
    TandemError,
    Timeout,
    TokenExpired,
    Unauthenticated,
    Unavailable,
)
from tandem._requests import JobSpec
from tandem._retry import NO_RETRY, RetryPolicy
from tandem._security import SecurityError
from tandem._types import (
    Attempt,
    AuditEntry,
    AuditPage,
    DeadLetters,
    Job,
    JobList,
    JobState,
    Limits,
    Ops,
    OpSpec,
    ParamSpec,
    Progress,
    QueueInfo,
    Step,
    WorkerInfo,
)
from tandem._worker import MaxLen, Param, Range, StepContext, Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "Attempt",
    "AuditEntry",
    "AuditPage",
    "Cancelled",
    "Client",
    "Conflict",
    "DeadLetters",
    "InternalError",
    "InvalidJob",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobList",
    "JobSpec",
    "JobState",
    "Limits",
    "MaxLen",
    "NO_RETRY",
    "NotFound",
    "OpSpec",
    "Ops",
    "Overloaded",
    "Param",
    "ParamSpec",
    "PermanentError",
    "PermissionDenied",
    "Progress",
    "QueueInfo",
    "Range",
    "RateLimited",
    "RetryPolicy",
    "RetryableError",
    "SecurityError",
    "Step",
    "StepContext",
    "TandemError",
    "Timeout",
    "TokenExpired",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "WorkerInfo",
]

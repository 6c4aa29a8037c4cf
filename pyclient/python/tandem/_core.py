"""The client logic shared by :class:`tandem.Client` and :class:`tandem.AsyncClient`,
without I/O: requests to send, conversions of responses, and small state machines
that take responses and errors and say what to do next (retry, sleep, stop).

The two clients only perform what these say: blocking stub calls and
``time.sleep`` for the one, awaited calls and ``asyncio.sleep`` for the other.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import grpc
from opentelemetry import trace

from tandem._errors import (
    CATALOGUE,
    Cancelled,
    InternalError,
    JobFailed,
    TandemError,
    Timeout,
    from_proto_error,
    from_rpc_error,
)
from tandem._requests import (
    MAX_MESSAGE_BYTES,
    JobSpec,
    batches,
    channel_options,
    channel_target,
    check_size,
    default_address,
    spec_request,
    submit_request,
)
from tandem._retry import RetryPolicy
from tandem._security import resolve
from tandem._tracing import ClientSpan, Metadata, current_metadata, op_names
from tandem._types import (
    AuditEntry,
    AuditPage,
    DeadLetters,
    Job,
    JobList,
    JobState,
    Ops,
    Payload,
    QueueInfo,
    StepsLike,
    WorkerInfo,
    ops_from_proto,
    read_payload,
)
from tandem.v1 import compute_pb2, jobs_pb2, jobs_pb2_grpc, worker_pb2

R = TypeVar("R")
C = TypeVar("C")

#: The most job ids one WatchJobs call may name (the orchestrator's limit).
WATCH_MAX_IDS = 1000

#: ``map``'s defaults: at most this many jobs in flight, and at most this many
#: payload bytes in flight (read into memory for their submit, then held by
#: the orchestrator until the job ends); one larger input still goes alone.
MAP_WINDOW = 256
MAP_WINDOW_BYTES = 128 * 1024 * 1024

#: A submitted job as the server answered it: its record and whether the
#: idempotency key matched an existing job.
Submitted = tuple[Job, bool]


def remaining(deadline: float | None) -> float | None:
    """Seconds left until a ``time.monotonic()`` deadline (None: no deadline)."""
    if deadline is None:
        return None
    return deadline - time.monotonic()


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def job_outcome(job: Job) -> bytes:
    """The result of a terminal job, or the exception its end implies."""
    if job.state is JobState.SUCCEEDED:
        return job.result if job.result is not None else b""
    if job.state is JobState.CANCELLED:
        raise Cancelled(
            f"job {job.id} was cancelled", reason="CANCELLED", metadata={"job_id": job.id}
        )
    error = job.last_error or InternalError(
        f"job {job.id} ended {job.state.name} without an error", reason="INTERNAL_ERROR"
    )
    raise JobFailed(job, error)


# ---------------------------------------------------------------- plans
#
# A plan is a generator that yields the I/O it needs -- a unary call
# (:class:`Send`) or a pause (:class:`Sleep`) -- and is sent back the call's
# response, or the :class:`TandemError` the call failed with. What it returns is
# the result of the client method. Each client has one driver that performs the
# steps (blocking or awaited).


@dataclass(frozen=True)
class Send:
    """One unary call: ``<stub>.<method>(request, timeout=..., metadata=...)``;
    the timeout is the client's, or ``timeout`` when that is shorter."""

    method: str
    request: Any
    metadata: Metadata | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


Plan = Generator[Send | Sleep, Any, R]


class Retry(Protocol):
    """When to retry a failed call, and after how long: a
    :class:`~tandem.RetryPolicy`, or :class:`UntilDeadline`."""

    def should_retry(self, error: TandemError, attempt: int) -> bool: ...

    def backoff(self, error: TandemError | None, attempt: int) -> float: ...


@dataclass(frozen=True)
class UntilDeadline:
    """The retries of a call made on behalf of a waiter (``wait``,
    ``result``, ``map``): every retryable error, and any DEADLINE_EXCEEDED,
    is retried with ``policy``'s backoff until the waiter's ``deadline``
    (``time.monotonic()``; None: none) whatever ``policy.max_attempts``
    says; no try outlasts the deadline. So a broker or orchestrator blip
    shorter than the caller's timeout never reaches the caller."""

    policy: RetryPolicy
    deadline: float | None
    #: What is waiting, for the Timeout's message ("wait", "map").
    what: str = "wait"

    @staticmethod
    def _transient(error: TandemError) -> bool:
        # A deadline that passed before the waiter's is not the waiter's:
        # the server's own (a NATS call inside it), or one try's.
        return error.retryable or isinstance(error, Timeout)

    def should_retry(self, error: TandemError, attempt: int) -> bool:
        rem = remaining(self.deadline)
        return self._transient(error) and (rem is None or rem > 0)

    def backoff(self, error: TandemError | None, attempt: int) -> float:
        delay = self.policy.backoff(error, attempt)
        rem = remaining(self.deadline)
        return delay if rem is None else max(0.0, min(delay, rem))

    def call_timeout(self) -> float | None:
        rem = remaining(self.deadline)
        return None if rem is None else max(0.0, rem)

    def expired(self, error: TandemError) -> TandemError:
        """What the waiter raises for ``error``: a :class:`Timeout` when it
        was retryable and only the deadline stopped the retries."""
        rem = remaining(self.deadline)
        if self._transient(error) and rem is not None and rem <= 0:
            return Timeout(
                f"{self.what} timed out: {error}",
                reason="TIMEOUT",
                code=error.code,
                metadata=error.metadata,
                cause=error,
            )
        return error


def _call_timeout(policy: Retry) -> float | None:
    return policy.call_timeout() if isinstance(policy, UntilDeadline) else None


def unary(rpc: Rpc[R], policy: Retry, closed: threading.Event) -> Plan[R]:
    """One unary call, retried under ``policy`` (not once the client is closed).

    It carries ``rpc.metadata``, else the caller's current trace context
    (every try the same)."""
    metadata = rpc.metadata if rpc.metadata is not None else current_metadata()
    attempt = 0
    while True:
        attempt += 1
        reply = yield Send(rpc.method, rpc.request, metadata, _call_timeout(policy))
        if not isinstance(reply, TandemError):
            return rpc.convert(reply)
        if not policy.should_retry(reply, attempt) or closed.is_set():
            if isinstance(policy, UntilDeadline):
                raise policy.expired(reply)
            raise reply
        yield Sleep(policy.backoff(reply, attempt))


class _NotWaiting:
    """The deadline of a call made for no waiter: the client's policy rules."""


NOT_WAITING = _NotWaiting()


# ---------------------------------------------------------------- the clients' common state


class ClientBase:
    """Settings and channel of both clients."""

    #: ``grpc`` or ``grpc.aio``: where the client's channels come from.
    _grpc: ClassVar[Any]

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        queue: str = "",
        compute_address: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool | None = None,
        ca: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        self.address = address or default_address()
        self.compute_address = compute_address or os.environ.get("TANDEM_COMPUTE_ADDRESS") or ""
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.queue = queue
        self.max_message_bytes = max_message_bytes
        target, extra = channel_target(self.address)
        options: list[tuple[str, Any]] = [*channel_options(max_message_bytes), *extra]
        # Files are read here, once (a bad path fails now, naming the argument).
        self.security = resolve(
            self.address,
            tls=True if credentials is not None and tls is None else tls,
            ca=ca,
            cert=cert,
            key=key,
            token=token,
            insecure=insecure,
        )
        self._auth: Metadata = self.security.metadata()
        self._closed = threading.Event()
        if credentials is not None:
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = self.security.channel(self._grpc, target, options)
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)

    def _md(self, metadata: Metadata | None) -> Metadata | None:
        """A call's metadata with the client's bearer token added."""
        if not self._auth:
            return metadata
        return (*(metadata or ()), *self._auth)

    def _side_channel(self, address: str) -> Any:
        """A channel to another service (compute, for :meth:`ops`) with the
        client's TLS settings; the token goes there only as to the
        orchestrator (never in plaintext off this machine unless insecure)."""
        self.security.check_address(address)
        return self.security.channel(self._grpc, address, channel_options(self.max_message_bytes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r})"

    def _job_request(
        self,
        steps: StepsLike,
        payload: Payload,
        queue: str | None,
        idempotency_key: str | None,
        max_attempts: int | None,
        timeout: float | None,
        labels: Mapping[str, str] | None,
    ) -> Rpc[Submitted]:
        """The SubmitJob call of :meth:`submit` (validated, size-checked)."""
        req = submit_request(
            steps,
            payload,
            queue=self.queue if queue is None else queue,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            timeout=timeout,
            labels=labels,
        )
        check_size(req, self.max_message_bytes)
        return Rpc("SubmitJob", req, _submitted)

    def _submit(self, rpc: Rpc[Submitted]) -> Plan[tuple[Job, bool, trace.SpanContext]]:
        """The plan of :meth:`submit`: its call in a ``tandem.submit`` span;
        returns the job, whether it was deduplicated, and the span's context
        (which the handle's waits link to)."""
        req = rpc.request
        attributes = {"tandem.queue": req.queue or "default", "tandem.ops": op_names(req.steps)}
        with ClientSpan("tandem.submit", attributes, new_trace=True) as span:
            job, dedup = yield from self._unary(replace(rpc, metadata=span.metadata))
            span.set_ids([job.id])
            span.set("tandem.deduplicated", dedup)
            return job, dedup, span.context

    def _wait_span(
        self,
        call: str,
        ids: Sequence[str],
        queue: str | None = None,
        links: Sequence[trace.SpanContext] = (),
    ) -> ClientSpan:
        """The ``tandem.wait`` span of a wait, result or watch (``call``)."""
        span = ClientSpan("tandem.wait", {"tandem.call": call}, links=links)
        span.set_ids(ids)
        if not ids:
            span.set("tandem.queue", queue or "default")
        return span

    def _unary(self, rpc: Rpc[R], deadline: float | None | _NotWaiting = NOT_WAITING) -> Plan[R]:
        """The plan of one call: retried under the client's policy, or, when
        made for a waiter, until the waiter's ``deadline``."""
        return unary(rpc, self._retries(deadline), self._closed)

    def _retries(self, deadline: float | None | _NotWaiting, what: str = "wait") -> Retry:
        if isinstance(deadline, _NotWaiting):
            return self.retry
        return UntilDeadline(self.retry, deadline, what)

    def _submit_many(
        self,
        jobs: Iterable[JobSpec | jobs_pb2.SubmitJobRequest],
        batch_size: int,
        handle: Callable[[Job, bool], R],
        policy: Retry | None = None,
    ) -> Plan[list[R | TandemError]]:
        plan = SubmitMany(
            [spec_request(j, self.queue) for j in jobs],
            max_message_bytes=self.max_message_bytes,
            batch_size=batch_size,
            policy=policy or self.retry,
        )
        return plan.run(handle)

    def _map(
        self,
        steps: StepsLike,
        inputs: Iterable[Payload],
        queue: str | None,
        window: int,
        max_bytes: int,
        batch_size: int,
    ) -> MapPlan:
        return MapPlan(
            steps,
            inputs,
            self.queue if queue is None else queue,
            window=window,
            max_bytes=max_bytes,
            batch_size=batch_size,
        )

    def _ops_fallback(self, err: InternalError) -> str:
        """The compute address to ask ListOps when the orchestrator failed
        with ``err``; raises when there is none or ``err`` is another failure."""
        if err.code is not grpc.StatusCode.UNIMPLEMENTED:
            raise err
        if not self.compute_address:
            raise TandemError(
                f"the orchestrator at {self.address} does not serve ListOps: give the "
                "compute service's address (compute_address=, $TANDEM_COMPUTE_ADDRESS)",
                reason=err.reason,
                code=err.code,
                cause=err,
            ) from err
        return self.compute_address


class HandleBase(Generic[C]):
    """What a job handle holds; the sync and asyncio handles add the calls.

    ``submitted`` is the context of the ``tandem.submit`` span that made the
    handle: the ``tandem.wait`` spans of the handle link to it."""

    def __init__(
        self,
        client: C,
        job: Job,
        deduplicated: bool = False,
        submitted: trace.SpanContext | None = None,
    ) -> None:
        self._client = client
        self.job = job
        self.id = job.id
        self.deduplicated = deduplicated
        self._links = (submitted,) if submitted is not None else ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, deduplicated={self.deduplicated})"


# ---------------------------------------------------------------- unary calls


@dataclass(frozen=True)
class Rpc(Generic[R]):
    """One unary JobService call: the stub method's name, its request, the
    conversion of its response, and its metadata."""

    method: str
    request: Any
    convert: Callable[[Any], R]
    metadata: Metadata | None = None


def _job(resp: Any) -> Job:
    return Job.from_proto(resp.job)


def _submitted(resp: Any) -> Submitted:
    return Job.from_proto(resp.job), bool(resp.deduplicated)


def _queue(resp: Any) -> QueueInfo:
    return QueueInfo.from_proto(resp.queue)


def get_job(job_id: str, include_result: bool, metadata: Metadata | None = None) -> Rpc[Job]:
    req = jobs_pb2.GetJobRequest(job_id=job_id, include_result=include_result)
    return Rpc("GetJob", req, _job, metadata)


def cancel_job(job_id: str) -> Rpc[Job]:
    return Rpc("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id), _job)


def list_queues() -> Rpc[list[QueueInfo]]:
    return Rpc(
        "ListQueues",
        jobs_pb2.ListQueuesRequest(),
        lambda resp: [QueueInfo.from_proto(q) for q in resp.queues],
    )


def pause_queue(queue: str) -> Rpc[QueueInfo]:
    return Rpc("PauseQueue", jobs_pb2.PauseQueueRequest(queue=queue), _queue)


def resume_queue(queue: str) -> Rpc[QueueInfo]:
    return Rpc("ResumeQueue", jobs_pb2.ResumeQueueRequest(queue=queue), _queue)


def list_dead_letters(queue: str, limit: int) -> Rpc[DeadLetters]:
    return Rpc(
        "ListDeadLetters",
        jobs_pb2.ListDeadLettersRequest(queue=queue, limit=limit),
        lambda resp: DeadLetters(
            queue=queue, jobs=[Job.from_proto(j) for j in resp.jobs], total=resp.total
        ),
    )


def _dead_letter_selection(queue: str, job_ids: Sequence[str] | None) -> dict[str, Any]:
    """The given dead jobs of ``queue``, or all of them when ``job_ids`` is None."""
    return {"queue": queue, "job_ids": list(job_ids or []), "all": job_ids is None}


def retry_dead_letters(queue: str, job_ids: Sequence[str] | None) -> Rpc[list[str]]:
    return Rpc(
        "RetryDeadLetters",
        jobs_pb2.RetryDeadLettersRequest(**_dead_letter_selection(queue, job_ids)),
        lambda resp: list(resp.retried_job_ids),
    )


def purge_dead_letters(queue: str, job_ids: Sequence[str] | None) -> Rpc[int]:
    return Rpc(
        "PurgeDeadLetters",
        jobs_pb2.PurgeDeadLettersRequest(**_dead_letter_selection(queue, job_ids)),
        lambda resp: int(resp.purged),
    )


def job_state(state: JobState | str | None) -> JobState:
    """A state given as a :class:`JobState` or its name (any case)."""
    if state is None:
        return JobState.UNSPECIFIED
    if isinstance(state, JobState):
        return state
    try:
        return JobState[str(state).upper()]
    except KeyError:
        names = ", ".join(s.name.lower() for s in JobState if s is not JobState.UNSPECIFIED)
        raise ValueError(f"unknown job state {state!r}: one of {names}") from None


def list_jobs(
    queue: str | None, state: JobState | str | None, label: str | None, limit: int, scan: int
) -> Rpc[JobList]:
    """JobService.ListJobs; ``label`` is ``KEY`` (any value) or ``KEY=VALUE``."""
    key, _, value = (label or "").partition("=")
    req = jobs_pb2.ListJobsRequest(
        queue=queue or "",
        state=f"JOB_STATE_{job_state(state).name}",
        label_key=key,
        label_value=value,
        limit=max(0, limit),
        scan=max(0, scan),
    )
    return Rpc(
        "ListJobs",
        req,
        lambda resp: JobList(
            jobs=[Job.from_proto(j) for j in resp.jobs],
            scanned=int(resp.scanned),
            truncated=bool(resp.truncated),
        ),
    )


def list_ops() -> Rpc[Ops]:
    """ComputeService.ListOps (asked of the orchestrator, else of compute)."""
    return Rpc("ListOps", compute_pb2.ListOpsRequest(), ops_from_proto)


def list_workers() -> Rpc[list[WorkerInfo]]:
    """JobService.ListWorkers: the live op workers."""
    return Rpc(
        "ListWorkers",
        worker_pb2.ListWorkersRequest(),
        lambda resp: [WorkerInfo.from_proto(w) for w in resp.workers],
    )


#: The most entries one ListAudit call answers (the orchestrator's limit).
AUDIT_MAX_LIMIT = 1000


def list_audit(
    after_seq: int, limit: int, actor: str | None, action: str | None, queue: str | None
) -> Rpc[AuditPage]:
    """JobService.ListAudit: entries after ``after_seq``, oldest first."""
    if after_seq < 0:
        raise ValueError(f"after_seq must be 0 or more, not {after_seq}")
    if not 1 <= limit <= AUDIT_MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {AUDIT_MAX_LIMIT}, not {limit}")
    return Rpc(
        "ListAudit",
        jobs_pb2.ListAuditRequest(
            after_seq=after_seq,
            limit=limit,
            actor=actor or "",
            action=action or "",
            queue=queue or "",
        ),
        lambda resp: AuditPage(
            entries=[AuditEntry.from_proto(e) for e in resp.entries], last_seq=resp.last_seq
        ),
    )


# ---------------------------------------------------------------- submit_many


Batch = list[tuple[int, jobs_pb2.SubmitJobRequest]]


class SubmitMany:
    """The bookkeeping of one ``submit_many``: rounds of batched SubmitJobs
    calls; items rejected with a retryable error go into the next round.

    :meth:`run` is the plan: for each batch of :meth:`round` it sends
    :meth:`request` and reports the answer to :meth:`answered` or
    :meth:`failed`, then sleeps :meth:`end_round` seconds when it is not None.
    """

    def __init__(
        self,
        requests: list[jobs_pb2.SubmitJobRequest],
        *,
        max_message_bytes: int,
        batch_size: int,
        policy: Retry,
    ) -> None:
        self.results: list[Submitted | TandemError | None] = [None] * len(requests)
        self.pending: Batch = []
        for i, r in enumerate(requests):
            try:
                check_size(r, max_message_bytes)
            except TandemError as too_big:
                self.results[i] = too_big
                continue
            self.pending.append((i, r))
        self.batch_size = batch_size
        self.policy = policy
        self.attempt = 0
        self._queues = sorted({r.queue or "default" for r in requests})
        self._ops = op_names(s for r in requests for s in r.steps)
        self._retry_later: Batch = []
        self._last_err: TandemError | None = None

    def round(self) -> Iterator[Batch]:
        """Starts a round: the batches to send."""
        self.attempt += 1
        self._retry_later = []
        self._last_err = None
        return batches(self.pending, max_items=self.batch_size)

    @staticmethod
    def request(batch: Batch) -> jobs_pb2.SubmitJobsRequest:
        return jobs_pb2.SubmitJobsRequest(jobs=[r for _, r in batch])

    def _retry(self, err: TandemError, items: Batch) -> None:
        if self.policy.should_retry(err, self.attempt):
            self._retry_later.extend(items)
            self._last_err = err

    def failed(self, batch: Batch, err: TandemError) -> None:
        """The whole SubmitJobs call failed."""
        for i, _ in batch:
            self.results[i] = err
        self._retry(err, batch)

    def answered(self, batch: Batch, resp: jobs_pb2.SubmitJobsResponse) -> None:
        if len(resp.results) != len(batch):
            wrong = InternalError(
                f"SubmitJobs answered {len(resp.results)} results for {len(batch)} jobs"
            )
            for i, _ in batch:
                self.results[i] = wrong
            return
        for (i, r), res in zip(batch, resp.results):
            if res.HasField("submitted"):
                self.results[i] = (Job.from_proto(res.submitted.job), res.submitted.deduplicated)
            else:
                err = from_proto_error(res.error)
                self.results[i] = err
                self._retry(err, [(i, r)])

    def end_round(self) -> float | None:
        """Seconds to sleep before the next round; None when all are settled."""
        self.pending = sorted(self._retry_later, key=lambda p: p[0])
        if self.pending:
            return self.policy.backoff(self._last_err, self.attempt)
        return None

    def run(self, handle: Callable[[Job, bool], R]) -> Plan[list[R | TandemError]]:
        """The whole submit_many as a plan, in one ``tandem.submit`` span
        (one trace context for every batch and retry)."""
        attributes = {
            "tandem.queue": ",".join(self._queues),
            "tandem.ops": self._ops,
            "tandem.job_count": len(self.results),
        }
        with ClientSpan("tandem.submit", attributes, new_trace=True) as span:
            while self.pending:
                for batch in self.round():
                    reply = yield Send(
                        "SubmitJobs", self.request(batch), span.metadata, _call_timeout(self.policy)
                    )
                    if isinstance(reply, TandemError):
                        self.failed(batch, reply)
                    else:
                        self.answered(batch, reply)
                delay = self.end_round()
                if delay is not None:
                    yield Sleep(delay)
            self.traced(span)
            return self.outcome(handle)

    def traced(self, span: ClientSpan) -> None:
        """Records the outcome on the span: the job ids, how many were
        rejected; failed when none was submitted."""
        ids = [r[0].id for r in self.results if isinstance(r, tuple)]
        span.set_ids(ids)
        span.set("tandem.job_count", len(self.results))
        rejected = [r for r in self.results if isinstance(r, TandemError)]
        span.set("tandem.rejected", len(rejected))
        if rejected and not ids:
            span.fail(rejected[0])

    def outcome(self, handle: Callable[[Job, bool], R]) -> list[R | TandemError]:
        """One entry per job, in order: ``handle(job, deduplicated)`` or the
        error (for a waiter's submit, :class:`Timeout` when only its deadline
        stopped the retries)."""
        expired = self.policy.expired if isinstance(self.policy, UntilDeadline) else None
        return [
            (expired(r) if expired else r)
            if isinstance(r, TandemError)
            else handle(*r)
            if r is not None
            else InternalError("no result")
            for r in self.results
        ]


# ---------------------------------------------------------------- watch and wait


def watch_ids(job_ids: Sequence[str] | str | None, queue: str | None) -> list[str]:
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids or [])
    if not ids and not queue:
        raise ValueError("watch needs job ids or a queue")
    return ids


def id_groups(ids: list[str]) -> list[list[str]]:
    """``ids`` cut into groups one WatchJobs call may name."""
    return [ids[start : start + WATCH_MAX_IDS] for start in range(0, len(ids), WATCH_MAX_IDS)]


# Status codes on which a watch stream breaks although the same call would
# not fail again: the server's own deadline for a NATS call (not the
# caller's: that is checked first), a reset stream (INTERNAL, UNKNOWN), a
# cancel or ABORTED from the server side.
_STREAM_BREAKS = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)


def resumable(err: TandemError) -> bool:
    """Whether reopening a broken watch stream may help: a retryable error
    (per the catalogue), or a break of the stream that is not a permanent
    answer of the catalogue (NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION)."""
    if err.retryable:
        return True
    if err.code not in _STREAM_BREAKS:
        return False
    entry = CATALOGUE.get(err.reason)
    return entry is None or entry.code is None or entry.code in _STREAM_BREAKS


@dataclass
class Watch:
    """The bookkeeping of one ``watch`` of at most :data:`WATCH_MAX_IDS` ids
    (or of a queue): which ids are still open, the deadline, whether a broken
    stream is to be reopened and after how long.

    The driver loops: ``req, timeout = w.request()``; opens the stream; for
    a queue watch (:attr:`wants_headers`) waits for the response headers and
    calls :meth:`opened` with whether the stream is still live; passes each
    message to :meth:`job` and yields it, stopping when :attr:`finished`; at
    the stream's end stops when :meth:`ended` says so; on an ``RpcError``
    calls :meth:`broken` (which raises when it is final); then sleeps
    :meth:`reconnect_delay` seconds and loops.
    """

    ids: list[str]
    queue: str | None
    include_result: bool
    timeout: float | None
    closed: threading.Event
    #: The backoff between reopenings (not its max_attempts: a watch goes on
    #: until its deadline).
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: What every WatchJobs call carries (the trace context of its span).
    metadata: Metadata | None = None
    deadline: float | None = field(init=False)
    open_ids: set[str] = field(init=False)
    finished: bool = field(init=False, default=False)
    #: A queue watch is live once the server has subscribed (it sends its
    #: headers then) or an event came: from then on a break may lose events.
    live: bool = field(init=False, default=False)
    _failures: int = field(init=False, default=0)
    _last_error: TandemError | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.deadline = deadline_after(self.timeout)
        self.open_ids = set(self.ids)

    @property
    def wants_headers(self) -> bool:
        return not self.ids

    def _timed_out(self) -> Timeout:
        return Timeout(f"watch timed out after {self.timeout} s", reason="TIMEOUT")

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def request(self) -> tuple[jobs_pb2.WatchJobsRequest, float | None]:
        """The next WatchJobs request and its call timeout; raises Timeout
        when the deadline has passed."""
        rem = remaining(self.deadline)
        if rem is not None and rem <= 0:
            raise self._timed_out()
        req = jobs_pb2.WatchJobsRequest(
            job_ids=[i for i in self.ids if i in self.open_ids] if self.ids else [],
            queue="" if self.ids else (self.queue or ""),
            include_result=self.include_result,
        )
        return req, rem

    def opened(self, live: bool) -> None:
        """The response headers came (``live``), or the call ended without any."""
        self.live = self.live or live

    def job(self, resp: jobs_pb2.WatchJobsResponse) -> Job:
        job = Job.from_proto(resp.job)
        self._failures = 0
        self.live = True
        if self.ids and job.done:
            self.open_ids.discard(job.id)
            self.finished = not self.open_ids
        return job

    def ended(self) -> bool:
        """The server ended the stream: True when the watch is over (a queue
        watch), False to reconnect (ids still open)."""
        return not self.ids

    def broken(self, rpc_err: grpc.RpcError) -> None:
        """The stream failed: returns to reconnect, raises when final.

        Final are: the client closed; the caller's deadline; an error that
        reopening cannot cure (:func:`resumable`); and any break of a live
        queue watch, whose events in between are lost (the error is raised
        as it came, e.g. :class:`Unavailable` with reason BROKER_UNAVAILABLE).
        """
        err = from_rpc_error(rpc_err)
        self._failures += 1
        self._last_error = err
        if self.closed.is_set():
            raise err from rpc_err
        if self._past_deadline():
            raise self._timed_out() from rpc_err
        if not self.ids and self.live:
            raise err from rpc_err
        if not resumable(err):
            raise err from rpc_err

    def reconnect_delay(self) -> float:
        """Seconds to wait before reopening: the policy's backoff for the
        breaks in a row (reset by an event), never past the deadline."""
        delay = self.policy.backoff(self._last_error, max(1, self._failures))
        rem = remaining(self.deadline)
        return delay if rem is None else max(0.0, min(delay, rem))


def wait_ids(job_ids: Sequence[str]) -> list[str]:
    """The distinct ids of a ``wait``, in order."""
    return list(dict.fromkeys(job_ids))


def lacks_result(job: Job, include_result: bool) -> bool:
    """Whether a finished job of a ``wait`` needs a GetJob for its result
    bytes (the watch did not carry them)."""
    return include_result and job.state is JobState.SUCCEEDED and job.result is None


# ---------------------------------------------------------------- map


def payload_size(payload: Payload) -> int:
    """A payload's size in bytes without reading it (a path: its file's size)."""
    if isinstance(payload, memoryview):
        return payload.nbytes
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, os.PathLike):
        return os.stat(payload).st_size
    raise TypeError(f"no size for a payload of type {type(payload).__name__}")


@dataclass
class MapChunk:
    """Inputs of a ``map`` submitted together: their positions, jobs, payload
    bytes, and (once submitted) each one's job or rejection."""

    indexes: list[int] = field(default_factory=list)
    specs: list[JobSpec] = field(default_factory=list)
    size: int = 0
    results: list[Job | TandemError] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [r.id for r in self.results if not isinstance(r, TandemError)]

    def index_of(self) -> dict[str, int]:
        return {
            r.id: i for i, r in zip(self.indexes, self.results) if not isinstance(r, TandemError)
        }


class MapPlan:
    """The bookkeeping of one ``map``: cuts the inputs, in order, into
    submit_many chunks (at most ``batch_size`` inputs) while fewer than
    ``window`` jobs and ``max_bytes`` payload bytes are in flight, and
    turns each settled chunk into outcomes in input order.

    The driver submits every chunk of :meth:`chunks` and passes its results
    to :meth:`submitted`; then, while :attr:`inflight`, takes :meth:`next`,
    waits for its ids, fills again, and yields :meth:`outcomes`.
    """

    def __init__(
        self,
        steps: StepsLike,
        inputs: Iterable[Payload],
        queue: str,
        *,
        window: int = MAP_WINDOW,
        max_bytes: int = MAP_WINDOW_BYTES,
        batch_size: int = 128,
    ) -> None:
        if window < 1 or max_bytes < 1 or batch_size < 1:
            raise ValueError("map: window, max_bytes and batch_size must be at least 1")
        self.steps = steps
        self.queue = queue
        self.window = window
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.inflight: deque[MapChunk] = deque()
        self._jobs = 0
        self._bytes = 0
        self._inputs = enumerate(inputs)
        self._ahead: tuple[int, Payload, int] | None = None

    def _peek(self) -> tuple[int, Payload, int] | None:
        if self._ahead is None:
            try:
                index, payload = next(self._inputs)
            except StopIteration:
                return None
            if not isinstance(payload, (bytes, bytearray, memoryview, os.PathLike)):
                payload = read_payload(payload)  # a file object: its size is its bytes'
            self._ahead = (index, payload, payload_size(payload))
        return self._ahead

    def _fits(self, chunk: MapChunk, size: int) -> bool:
        jobs = self._jobs + len(chunk.indexes)
        if jobs == 0:
            return True  # one input always goes, however large
        return jobs < self.window and self._bytes + chunk.size + size <= self.max_bytes

    def chunks(self) -> Iterator[MapChunk]:
        """The next chunks to submit (call :meth:`submitted` after each)."""
        while True:
            chunk = MapChunk()
            while len(chunk.indexes) < self.batch_size:
                item = self._peek()
                if item is None or not self._fits(chunk, item[2]):
                    break
                index, payload, size = item
                self._ahead = None
                chunk.indexes.append(index)
                chunk.specs.append(JobSpec(steps=self.steps, payload=payload, queue=self.queue))
                chunk.size += size
            if not chunk.indexes:
                return
            yield chunk

    def submitted(
        self, chunk: MapChunk, results: Sequence[Job | TandemError]
    ) -> list[tuple[int, TandemError]]:
        """Records a chunk's submit; returns the rejected inputs (position, error)."""
        chunk.results = list(results)
        chunk.specs = []  # the payloads are the server's now
        self.inflight.append(chunk)
        self._jobs += len(chunk.results)
        self._bytes += chunk.size
        return [(i, r) for i, r in zip(chunk.indexes, chunk.results) if isinstance(r, TandemError)]

    def next(self) -> MapChunk:
        """The oldest chunk in flight, which is no longer counted as such."""
        chunk = self.inflight.popleft()
        self._jobs -= len(chunk.results)
        self._bytes -= chunk.size
        return chunk

    @staticmethod
    def outcomes(
        chunk: MapChunk, final: Mapping[str, Job], return_exceptions: bool
    ) -> Iterator[Any]:
        """Each input's result bytes, or its error (raised unless
        ``return_exceptions``)."""
        for r in chunk.results:
            outcome: Any
            if isinstance(r, TandemError):
                outcome = r
            elif r.id not in final:
                outcome = InternalError(f"map: no final state of job {r.id}")
            else:
                try:
                    outcome = job_outcome(final[r.id])
                except TandemError as e:
                    outcome = e
            if isinstance(outcome, TandemError) and not return_exceptions:
                raise outcome
            yield outcome

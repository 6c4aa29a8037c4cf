"""The client logic shared by :class:`tandem.Client` and :class:`tandem.AsyncClient`,
without I/O: requests to send, conversions of responses, and small state machines
that take responses and errors and say what to do next (retry, sleep, stop).

The two clients only perform what these say: blocking stub calls and
``time.sleep`` for the one, awaited calls and ``asyncio.sleep`` for the other.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import grpc

from tandem._errors import (
    Cancelled,
    InternalError,
    JobFailed,
    TandemError,
    Timeout,
    Unavailable,
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
    traceparent,
)
from tandem._retry import RetryPolicy
from tandem._types import (
    DeadLetters,
    Job,
    JobState,
    Ops,
    Payload,
    QueueInfo,
    StepsLike,
    ops_from_proto,
)
from tandem.v1 import compute_pb2, jobs_pb2, jobs_pb2_grpc

R = TypeVar("R")
C = TypeVar("C")

#: The most job ids one WatchJobs call may name (the orchestrator's limit).
WATCH_MAX_IDS = 1000

# How long a waiter sleeps between reconnects of a broken watch stream; it
# keeps waiting (until its own timeout) across orchestrator restarts.
_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 2.0

Metadata = tuple[tuple[str, str], ...]
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
        raise Cancelled(f"job {job.id} was cancelled", reason="CANCELLED",
                        metadata={"job_id": job.id})
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
    """One unary call: ``<stub>.<method>(request, timeout=client timeout, metadata=...)``."""

    method: str
    request: Any
    metadata: Metadata | None = None


@dataclass(frozen=True)
class Sleep:
    seconds: float


Plan = Generator[Send | Sleep, Any, R]


def unary(rpc: Rpc[R], policy: RetryPolicy, closed: threading.Event) -> Plan[R]:
    """One unary call, retried under ``policy`` (not once the client is closed)."""
    attempt = 0
    while True:
        attempt += 1
        reply = yield Send(rpc.method, rpc.request, rpc.metadata)
        if not isinstance(reply, TandemError):
            return rpc.convert(reply)
        if not policy.should_retry(reply, attempt) or closed.is_set():
            raise reply
        yield Sleep(policy.backoff(reply, attempt))


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
    ) -> None:
        self.address = address or default_address()
        self.compute_address = compute_address or os.environ.get("TANDEM_COMPUTE_ADDRESS") or ""
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.queue = queue
        self.max_message_bytes = max_message_bytes
        target, extra = channel_target(self.address)
        options: list[tuple[str, Any]] = [*channel_options(max_message_bytes), *extra]
        self._closed = threading.Event()
        if credentials is not None:
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = self._grpc.insecure_channel(target, options=options)
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)

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
        return Rpc("SubmitJob", req, _submitted, traceparent())

    def _unary(self, rpc: Rpc[R]) -> Plan[R]:
        return unary(rpc, self.retry, self._closed)

    def _submit_many(
        self, jobs: Iterable[JobSpec | jobs_pb2.SubmitJobRequest], batch_size: int,
        handle: Callable[[Job, bool], R],
    ) -> Plan[list[R | TandemError]]:
        plan = SubmitMany(
            [spec_request(j, self.queue) for j in jobs],
            max_message_bytes=self.max_message_bytes,
            batch_size=batch_size,
            policy=self.retry,
        )
        return plan.run(handle)

    def _map(
        self, steps: StepsLike, inputs: Iterable[Payload], queue: str | None,
        window: int, batch_size: int,
    ) -> MapPlan[Any]:
        return MapPlan(steps, inputs, self.queue if queue is None else queue, window, batch_size)

    def _ops_fallback(self, err: InternalError) -> str:
        """The compute address to ask ListOps when the orchestrator failed
        with ``err``; raises when there is none or ``err`` is another failure."""
        if err.code is not grpc.StatusCode.UNIMPLEMENTED:
            raise err
        if not self.compute_address:
            raise TandemError(
                f"the orchestrator at {self.address} does not serve ListOps: give the "
                "compute service's address (compute_address=, $TANDEM_COMPUTE_ADDRESS)",
                reason=err.reason, code=err.code, cause=err,
            ) from err
        return self.compute_address


class HandleBase(Generic[C]):
    """What a job handle holds; the sync and asyncio handles add the calls."""

    def __init__(self, client: C, job: Job, deduplicated: bool = False) -> None:
        self._client = client
        self.job = job
        self.id = job.id
        self.deduplicated = deduplicated

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


def get_job(job_id: str, include_result: bool) -> Rpc[Job]:
    return Rpc("GetJob", jobs_pb2.GetJobRequest(job_id=job_id, include_result=include_result), _job)


def cancel_job(job_id: str) -> Rpc[Job]:
    return Rpc("CancelJob", jobs_pb2.CancelJobRequest(job_id=job_id), _job)


def list_queues() -> Rpc[list[QueueInfo]]:
    return Rpc("ListQueues", jobs_pb2.ListQueuesRequest(),
               lambda resp: [QueueInfo.from_proto(q) for q in resp.queues])


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


def list_ops() -> Rpc[Ops]:
    """ComputeService.ListOps (asked of the orchestrator, else of compute)."""
    return Rpc("ListOps", compute_pb2.ListOpsRequest(), ops_from_proto)


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
        policy: RetryPolicy,
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
        self.trace = traceparent()
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
        """The whole submit_many as a plan."""
        while self.pending:
            for batch in self.round():
                reply = yield Send("SubmitJobs", self.request(batch), self.trace)
                if isinstance(reply, TandemError):
                    self.failed(batch, reply)
                else:
                    self.answered(batch, reply)
            delay = self.end_round()
            if delay is not None:
                yield Sleep(delay)
        return self.outcome(handle)

    def outcome(self, handle: Callable[[Job, bool], R]) -> list[R | TandemError]:
        """One entry per job, in order: ``handle(job, deduplicated)`` or the error."""
        return [
            r if isinstance(r, TandemError)
            else handle(*r) if r is not None
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
    return [ids[start:start + WATCH_MAX_IDS] for start in range(0, len(ids), WATCH_MAX_IDS)]


@dataclass
class Watch:
    """The bookkeeping of one ``watch`` of at most :data:`WATCH_MAX_IDS` ids
    (or of a queue): which ids are still open, the deadline, whether a broken
    stream is to be reopened and after how long.

    The driver loops: ``req, timeout = w.request()``; opens the stream; passes
    each message to :meth:`job` and yields it, stopping when :attr:`finished`;
    at the stream's end stops when :meth:`ended` says so; on an ``RpcError``
    calls :meth:`broken` (which raises when it is final); then sleeps
    :meth:`reconnect_delay` seconds and loops.
    """

    ids: list[str]
    queue: str | None
    include_result: bool
    timeout: float | None
    closed: threading.Event
    deadline: float | None = field(init=False)
    open_ids: set[str] = field(init=False)
    finished: bool = field(init=False, default=False)
    _sleep: float = field(init=False, default=_RECONNECT_MIN)

    def __post_init__(self) -> None:
        self.deadline = deadline_after(self.timeout)
        self.open_ids = set(self.ids)

    def _timed_out(self) -> Timeout:
        return Timeout(f"watch timed out after {self.timeout} s", reason="TIMEOUT")

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

    def job(self, resp: jobs_pb2.WatchJobsResponse) -> Job:
        job = Job.from_proto(resp.job)
        self._sleep = _RECONNECT_MIN
        if self.ids and job.done:
            self.open_ids.discard(job.id)
            self.finished = not self.open_ids
        return job

    def ended(self) -> bool:
        """The server ended the stream: True when the watch is over (a queue
        watch), False to reconnect (ids still open)."""
        return not self.ids

    def broken(self, rpc_err: grpc.RpcError) -> None:
        """The stream failed: returns to reconnect, raises when final."""
        err = from_rpc_error(rpc_err)
        if isinstance(err, Timeout) and self.deadline is not None \
                and time.monotonic() >= self.deadline:
            raise self._timed_out() from rpc_err
        if not isinstance(err, (Unavailable, InternalError, Cancelled)) or self.closed.is_set():
            raise err from rpc_err

    def reconnect_delay(self) -> float:
        rem = remaining(self.deadline)
        delay = min(self._sleep, max(0.0, rem if rem is not None else self._sleep))
        self._sleep = min(_RECONNECT_MAX, self._sleep * 2 * random.uniform(0.8, 1.2))
        return delay


def wait_ids(job_ids: Sequence[str]) -> list[str]:
    """The distinct ids of a ``wait``, in order."""
    return list(dict.fromkeys(job_ids))


def missing_results(final: Mapping[str, Job], include_result: bool) -> list[str]:
    """The SUCCEEDED jobs of a finished ``wait`` whose result bytes must be
    fetched with GetJob (the watch did not carry them)."""
    if not include_result:
        return []
    return [job_id for job_id, job in final.items()
            if job.state is JobState.SUCCEEDED and job.result is None]


# ---------------------------------------------------------------- map


H = TypeVar("H", bound="HandleBase[Any]")


@dataclass
class MapPlan(Generic[H]):
    """The bookkeeping of one ``map``: cuts the inputs into submit_many chunks
    while fewer than ``window`` jobs are in flight, and turns each settled
    chunk into outcomes in input order.

    The driver submits every chunk of :meth:`chunks` and passes the handles
    to :meth:`submitted`; then, while :attr:`inflight`, takes :meth:`next`,
    waits for its ids, fills again, and yields :meth:`outcomes`.
    """

    steps: StepsLike
    inputs: Iterable[Payload]
    queue: str
    window: int
    batch_size: int
    inflight: list[list[H | TandemError]] = field(init=False, default_factory=list)
    _count: int = field(init=False, default=0)
    _exhausted: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._it = iter(self.inputs)

    def chunks(self) -> Iterator[list[JobSpec]]:
        """The next chunks to submit (call :meth:`submitted` after each)."""
        while not self._exhausted and self._count < self.window:
            chunk: list[JobSpec] = []
            for payload in self._it:
                chunk.append(JobSpec(steps=self.steps, payload=payload, queue=self.queue))
                if len(chunk) >= self.batch_size:
                    break
            if len(chunk) < self.batch_size:
                self._exhausted = True
            if chunk:
                yield chunk

    def submitted(self, results: list[H | TandemError]) -> None:
        self.inflight.append(results)
        self._count += len(results)

    def next(self) -> tuple[list[H | TandemError], list[str]]:
        """The oldest chunk in flight and the ids of its submitted jobs."""
        chunk = self.inflight.pop(0)
        self._count -= len(chunk)
        return chunk, [r.id for r in chunk if not isinstance(r, TandemError)]

    @staticmethod
    def outcomes(
        chunk: list[H | TandemError], final: Mapping[str, Job], return_exceptions: bool
    ) -> Iterator[Any]:
        """Each job's result bytes, or its error (raised unless
        ``return_exceptions``)."""
        for r in chunk:
            outcome: Any
            if isinstance(r, TandemError):
                outcome = r
            else:
                try:
                    outcome = job_outcome(final[r.id])
                except TandemError as e:
                    outcome = e
            if isinstance(outcome, TandemError) and not return_exceptions:
                raise outcome
            yield outcome

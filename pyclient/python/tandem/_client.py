"""The synchronous client."""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

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

__all__ = ["Client", "JobHandle"]

T = TypeVar("T")

# How long a waiter sleeps between reconnects of a broken watch stream; it
# keeps waiting (until its own timeout) across orchestrator restarts.
#: The most job ids one WatchJobs call may name (the orchestrator's limit).
WATCH_MAX_IDS = 1000

_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 2.0


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.monotonic()


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


class JobHandle:
    """A submitted job. Cheap to create; thread-safe.

    Attributes:
        id: the job id.
        job: the job record as returned by the submit.
        deduplicated: True when the idempotency key matched an existing job,
            which this handle now refers to.
    """

    def __init__(self, client: Client, job: Job, deduplicated: bool = False) -> None:
        self._client = client
        self.job = job
        self.id = job.id
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, deduplicated={self.deduplicated})"

    def get(self, *, include_result: bool = False) -> Job:
        """The job's current record."""
        return self._client.get(self.id, include_result=include_result)

    def wait(self, timeout: float | None = None) -> Job:
        """Waits until the job is terminal and returns its record (with the
        result bytes when it SUCCEEDED). Raises :class:`tandem.Timeout`."""
        return self._client.wait([self.id], timeout=timeout)[self.id]

    def result(self, timeout: float | None = None) -> bytes:
        """Waits for the job and returns its result bytes.

        Raises:
            JobFailed: the job ended FAILED or DEAD (``.error`` says why).
            Cancelled: the job was cancelled.
            Timeout: ``timeout`` seconds passed first (the job goes on).
        """
        return job_outcome(self.wait(timeout))

    def cancel(self) -> Job:
        """Cancels the job (see :meth:`Client.cancel`)."""
        return self._client.cancel(self.id)


class Client:
    """A connection to a Tandem orchestrator (``tandem.v1.JobService``).

    ``address`` defaults to ``$TANDEM_ADDRESS`` or ``127.0.0.1:50051``; a
    comma-separated list of IP:port, or ``dns:///host:port``, spreads calls
    round-robin over several orchestrators and goes on through the live ones
    when one is down.
    ``timeout`` is the deadline in seconds of each unary call (not of
    waiting for a job). ``retry`` governs retries of calls failing with
    UNAVAILABLE or RESOURCE_EXHAUSTED; submits are safe to retry because they
    always carry an idempotency key. ``queue`` is the default queue of
    submits (empty: the server's ``default``). ``compute_address`` (default
    ``$TANDEM_COMPUTE_ADDRESS``) is used by :meth:`ops` only when the
    orchestrator does not answer ListOps itself. The client is thread-safe; use it as a
    context manager or call :meth:`close`.
    """

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
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._closed = threading.Event()

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Closes the channel; pending calls are cancelled."""
        if not self._closed.is_set():
            self._closed.set()
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r})"

    # ------------------------------------------------------------ plumbing

    def _call(
        self,
        method: Callable[..., T],
        request: Any,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> T:
        policy = retry or self.retry
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=timeout or self.timeout, metadata=metadata)
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            if not policy.should_retry(err, attempt) or self._closed.is_set():
                raise err
            time.sleep(policy.backoff(err, attempt))

    # ------------------------------------------------------------ jobs

    def submit(
        self,
        steps: StepsLike,
        payload: Payload = b"",
        *,
        queue: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> JobHandle:
        """Validates and enqueues one job; returns its handle at once.

        Args:
            steps: an op name (``"hash.sha256"``), a :class:`tandem.Step`, a
                ``{"op", "params"}`` mapping, or a list of them (a pipeline).
            payload: bytes, a ``pathlib.Path`` or a binary file.
            queue: queue name; the client's default queue, else ``default``.
            idempotency_key: submits with the same key on the same queue
                make one job. Generated when omitted (so retries are safe).
            max_attempts: overrides the queue's setting.
            timeout: per-attempt job timeout in seconds (not the call's).
            labels: free-form labels stored with the job.

        Raises:
            InvalidJob: unknown op, bad params, payload too large...
            NotFound: no such queue.
            Overloaded: the queue is full (after the client's retries).
            Unavailable: the orchestrator cannot be reached (after retries).
        """
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
        resp = self._call(self._stub.SubmitJob, req, metadata=traceparent())
        return JobHandle(self, Job.from_proto(resp.job), resp.deduplicated)

    def submit_many(
        self,
        jobs: Iterable[JobSpec | jobs_pb2.SubmitJobRequest],
        *,
        batch_size: int = 256,
    ) -> list[JobHandle | TandemError]:
        """Submits many jobs with batched ``SubmitJobs`` calls.

        Returns one entry per job, in order: a :class:`JobHandle`, or the
        :class:`TandemError` that rejected that job. Items rejected with a
        retryable error (queue full, unavailable) are retried under the
        client's retry policy; the others are reported, never raised. A
        failure of a whole call after all retries is reported for each of
        its items.
        """
        requests = [spec_request(j, self.queue) for j in jobs]
        results: list[JobHandle | TandemError | None] = [None] * len(requests)
        pending = []
        for i, r in enumerate(requests):
            try:
                check_size(r, self.max_message_bytes)
            except TandemError as too_big:
                results[i] = too_big
                continue
            pending.append((i, r))
        attempt = 0
        trace = traceparent()
        while pending:
            attempt += 1
            retry_later: list[tuple[int, jobs_pb2.SubmitJobRequest]] = []
            last_err: TandemError | None = None
            for batch in batches(pending, max_items=batch_size):
                try:
                    resp = self._stub.SubmitJobs(
                        jobs_pb2.SubmitJobsRequest(jobs=[r for _, r in batch]),
                        timeout=self.timeout,
                        metadata=trace,
                    )
                except grpc.RpcError as rpc_err:
                    err = from_rpc_error(rpc_err)
                    for i, r in batch:
                        results[i] = err
                    if self.retry.should_retry(err, attempt):
                        retry_later.extend(batch)
                        last_err = err
                    continue
                if len(resp.results) != len(batch):
                    err = InternalError(
                        f"SubmitJobs answered {len(resp.results)} results for {len(batch)} jobs"
                    )
                    for i, _ in batch:
                        results[i] = err
                    continue
                for (i, r), res in zip(batch, resp.results):
                    if res.HasField("submitted"):
                        results[i] = JobHandle(
                            self, Job.from_proto(res.submitted.job), res.submitted.deduplicated
                        )
                    else:
                        err = from_proto_error(res.error)
                        results[i] = err
                        if self.retry.should_retry(err, attempt):
                            retry_later.append((i, r))
                            last_err = err
            pending = sorted(retry_later, key=lambda p: p[0])
            if pending:
                time.sleep(self.retry.backoff(last_err, attempt))
        return [r if r is not None else InternalError("no result") for r in results]

    def get(self, job_id: str, *, include_result: bool = False) -> Job:
        """A job's record; with ``include_result`` also its result bytes.

        Raises :class:`NotFound` for an unknown (or expired) job.
        """
        resp = self._call(
            self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id, include_result=include_result)
        )
        return Job.from_proto(resp.job)

    def handle(self, job_id: str) -> JobHandle:
        """A handle for an existing job (fetches its record)."""
        return JobHandle(self, self.get(job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancels a job: a queued job never runs, a running job has its
        compute call cancelled. Raises :class:`Conflict` when the job
        already finished."""
        resp = self._call(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))
        return Job.from_proto(resp.job)

    def watch(
        self,
        job_ids: Sequence[str] | str | None = None,
        *,
        queue: str | None = None,
        include_result: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Job]:
        """Yields state changes of the given jobs (current state first),
        ending when all are terminal; or of every job of ``queue``
        (endless). A broken stream is reopened (for job ids, only for those
        not yet terminal) until ``timeout`` seconds have passed.

        More than :data:`WATCH_MAX_IDS` ids are watched in consecutive
        groups, so later groups report their current state when their turn
        comes rather than every intermediate change.
        """
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids or [])
        if not ids and not queue:
            raise ValueError("watch needs job ids or a queue")
        if len(ids) > WATCH_MAX_IDS:
            deadline = None if timeout is None else time.monotonic() + timeout
            for start in range(0, len(ids), WATCH_MAX_IDS):
                yield from self.watch(ids[start:start + WATCH_MAX_IDS],
                                      include_result=include_result,
                                      timeout=_remaining(deadline))
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        open_ids = set(ids)
        sleep = _RECONNECT_MIN
        while True:
            req = jobs_pb2.WatchJobsRequest(
                job_ids=[i for i in ids if i in open_ids] if ids else [],
                queue="" if ids else (queue or ""),
                include_result=include_result,
            )
            rem = _remaining(deadline)
            if rem is not None and rem <= 0:
                raise Timeout(f"watch timed out after {timeout} s", reason="TIMEOUT")
            call = self._stub.WatchJobs(req, timeout=rem)
            try:
                for resp in call:
                    job = Job.from_proto(resp.job)
                    sleep = _RECONNECT_MIN
                    if ids and job.done:
                        open_ids.discard(job.id)
                    yield job
                    if ids and not open_ids:
                        return
                if ids and open_ids:
                    # The server ended the stream early: reconnect.
                    raise Unavailable("watch stream ended early")
                if not ids:
                    return
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
                if isinstance(err, Timeout) and deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"watch timed out after {timeout} s", reason="TIMEOUT") from rpc_err
                if not isinstance(err, (Unavailable, InternalError, Cancelled)) or self._closed.is_set():
                    raise err from rpc_err
            except Unavailable:
                pass
            finally:
                call.cancel()
            time.sleep(min(sleep, max(0.0, _remaining(deadline) or sleep)))
            sleep = min(_RECONNECT_MAX, sleep * 2 * random.uniform(0.8, 1.2))

    def wait(
        self, job_ids: Sequence[str], *, timeout: float | None = None, include_result: bool = True
    ) -> dict[str, Job]:
        """Waits until every job is terminal; returns their final records
        keyed by id (with result bytes when asked). Survives orchestrator
        restarts by reconnecting. Raises :class:`tandem.Timeout`."""
        final: dict[str, Job] = {}
        want = list(dict.fromkeys(job_ids))
        if not want:
            return final
        for job in self.watch(want, include_result=include_result, timeout=timeout):
            if job.done:
                final[job.id] = job
        if include_result:
            for job_id, job in list(final.items()):
                if job.state is JobState.SUCCEEDED and job.result is None:
                    final[job_id] = self.get(job_id, include_result=True)
        return final

    def map(
        self,
        steps: StepsLike,
        inputs: Iterable[Payload],
        *,
        queue: str | None = None,
        window: int = 512,
        batch_size: int = 128,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> Iterator[Any]:
        """Runs one pipeline over many inputs; yields results in input order.

        Keeps up to ``window`` jobs in flight, submitted in batches. A job
        that fails raises its error (:class:`JobFailed`, :class:`Cancelled`,
        or the submit's error) from the iterator, unless
        ``return_exceptions`` is true, in which case the exception is
        yielded in its place. ``timeout`` bounds the wait for each batch.
        """
        q = self.queue if queue is None else queue
        it = iter(inputs)
        inflight: collections.deque[list[JobHandle | TandemError]] = collections.deque()
        in_count = 0
        exhausted = False

        def fill() -> None:
            nonlocal in_count, exhausted
            while not exhausted and in_count < window:
                chunk: list[JobSpec] = []
                for payload in it:
                    chunk.append(JobSpec(steps=steps, payload=payload, queue=q))
                    if len(chunk) >= batch_size:
                        break
                if len(chunk) < batch_size:
                    exhausted = True
                if chunk:
                    inflight.append(self.submit_many(chunk, batch_size=batch_size))
                    in_count += len(chunk)

        fill()
        while inflight:
            chunk_results = inflight.popleft()
            in_count -= len(chunk_results)
            ids = [r.id for r in chunk_results if isinstance(r, JobHandle)]
            final = self.wait(ids, timeout=timeout) if ids else {}
            fill()
            for r in chunk_results:
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

    # ------------------------------------------------------------ catalogue and queues

    def ops(self) -> Ops:
        """The op catalogue and limits of the compute service.

        Asks ``tandem.v1.ComputeService/ListOps`` at the orchestrator's
        address; when the orchestrator does not serve it, asks the compute
        service at ``compute_address`` (``$TANDEM_COMPUTE_ADDRESS``).
        """
        from tandem.v1 import compute_pb2_grpc

        stub = compute_pb2_grpc.ComputeServiceStub(self._channel)
        try:
            resp: compute_pb2.ListOpsResponse = self._call(
                stub.ListOps, compute_pb2.ListOpsRequest()
            )
        except InternalError as err:
            if err.code is not grpc.StatusCode.UNIMPLEMENTED:
                raise
            if not self.compute_address:
                raise TandemError(
                    f"the orchestrator at {self.address} does not serve ListOps: give the "
                    "compute service's address (compute_address=, $TANDEM_COMPUTE_ADDRESS)",
                    reason=err.reason, code=err.code, cause=err,
                ) from err
            with grpc.insecure_channel(self.compute_address) as channel:
                stub = compute_pb2_grpc.ComputeServiceStub(channel)
                resp = self._call(stub.ListOps, compute_pb2.ListOpsRequest())
        return ops_from_proto(resp)

    def queues(self) -> list[QueueInfo]:
        """Every queue's configuration and live figures."""
        resp = self._call(self._stub.ListQueues, jobs_pb2.ListQueuesRequest())
        return [QueueInfo.from_proto(q) for q in resp.queues]

    def pause_queue(self, queue: str) -> QueueInfo:
        """Stops the queue's workers from pulling; submits still queue."""
        resp = self._call(self._stub.PauseQueue, jobs_pb2.PauseQueueRequest(queue=queue))
        return QueueInfo.from_proto(resp.queue)

    def resume_queue(self, queue: str) -> QueueInfo:
        """Undoes :meth:`pause_queue`."""
        resp = self._call(self._stub.ResumeQueue, jobs_pb2.ResumeQueueRequest(queue=queue))
        return QueueInfo.from_proto(resp.queue)

    # ------------------------------------------------------------ dead letters

    def dead_letters(self, queue: str = "default", *, limit: int = 100) -> DeadLetters:
        """The jobs parked in ``queue``'s dead-letter queue (at most
        ``limit``, max 1000) and the total count."""
        resp = self._call(
            self._stub.ListDeadLetters, jobs_pb2.ListDeadLettersRequest(queue=queue, limit=limit)
        )
        return DeadLetters(queue=queue, jobs=[Job.from_proto(j) for j in resp.jobs], total=resp.total)

    def retry_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Re-enqueues dead jobs with fresh attempts: the given ones, or all
        of the queue when ``job_ids`` is None. Returns the retried ids."""
        req = jobs_pb2.RetryDeadLettersRequest(
            queue=queue, job_ids=list(job_ids or []), all=job_ids is None
        )
        resp = self._call(self._stub.RetryDeadLetters, req)
        return list(resp.retried_job_ids)

    def purge_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> int:
        """Deletes dead jobs for good: the given ones, or all of the queue
        when ``job_ids`` is None. Returns how many were purged."""
        req = jobs_pb2.PurgeDeadLettersRequest(
            queue=queue, job_ids=list(job_ids or []), all=job_ids is None
        )
        resp = self._call(self._stub.PurgeDeadLetters, req)
        return int(resp.purged)

    # ------------------------------------------------------------ health

    def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when the orchestrator reports SERVING for ``service``."""
        from tandem._health import check

        return check(self._channel, service, timeout=timeout)


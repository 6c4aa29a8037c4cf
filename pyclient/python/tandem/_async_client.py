"""The asyncio client (grpc.aio), with the same methods as :class:`Client`."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from tandem._client import WATCH_MAX_IDS, job_outcome
from tandem._errors import (
    Cancelled,
    InternalError,
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
from tandem.v1 import compute_pb2, compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc

__all__ = ["AsyncClient", "AsyncJobHandle"]

T = TypeVar("T")

_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 2.0


class AsyncJobHandle:
    """A submitted job (asyncio). ``await handle`` is ``await handle.result()``."""

    def __init__(self, client: AsyncClient, job: Job, deduplicated: bool = False) -> None:
        self._client = client
        self.job = job
        self.id = job.id
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"AsyncJobHandle(id={self.id!r}, deduplicated={self.deduplicated})"

    def __await__(self) -> Generator[Any, None, bytes]:
        return self.result().__await__()

    async def get(self, *, include_result: bool = False) -> Job:
        """The job's current record."""
        return await self._client.get(self.id, include_result=include_result)

    async def wait(self, timeout: float | None = None) -> Job:
        """Waits until the job is terminal; returns its record."""
        return (await self._client.wait([self.id], timeout=timeout))[self.id]

    async def result(self, timeout: float | None = None) -> bytes:
        """Waits for the job and returns its result bytes; raises
        :class:`JobFailed`, :class:`Cancelled` or :class:`Timeout`."""
        return job_outcome(await self.wait(timeout))

    async def cancel(self) -> Job:
        """Cancels the job."""
        return await self._client.cancel(self.id)


class AsyncClient:
    """The asyncio twin of :class:`tandem.Client` (same arguments, same
    methods, as coroutines and async iterators). Create it inside a running
    event loop; use ``async with`` or ``await client.close()``."""

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
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        self._stub = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._closed = False

    async def close(self) -> None:
        """Closes the channel."""
        if not self._closed:
            self._closed = True
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(address={self.address!r})"

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        *,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=timeout or self.timeout, metadata=metadata)
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
            if not self.retry.should_retry(err, attempt) or self._closed:
                raise err
            await asyncio.sleep(self.retry.backoff(err, attempt))

    # ------------------------------------------------------------ jobs

    async def submit(
        self,
        steps: StepsLike,
        payload: Payload = b"",
        *,
        queue: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AsyncJobHandle:
        """See :meth:`tandem.Client.submit`."""
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
        resp = await self._call(self._stub.SubmitJob, req, metadata=traceparent())
        return AsyncJobHandle(self, Job.from_proto(resp.job), resp.deduplicated)

    async def submit_many(
        self, jobs: Iterable[JobSpec | jobs_pb2.SubmitJobRequest], *, batch_size: int = 256
    ) -> list[AsyncJobHandle | TandemError]:
        """See :meth:`tandem.Client.submit_many`."""
        requests = [spec_request(j, self.queue) for j in jobs]
        results: list[AsyncJobHandle | TandemError | None] = [None] * len(requests)
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
                    resp = await self._stub.SubmitJobs(
                        jobs_pb2.SubmitJobsRequest(jobs=[r for _, r in batch]),
                        timeout=self.timeout,
                        metadata=trace,
                    )
                except grpc.RpcError as rpc_err:
                    err = from_rpc_error(rpc_err)
                    for i, _ in batch:
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
                        results[i] = AsyncJobHandle(
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
                await asyncio.sleep(self.retry.backoff(last_err, attempt))
        return [r if r is not None else InternalError("no result") for r in results]

    async def get(self, job_id: str, *, include_result: bool = False) -> Job:
        """See :meth:`tandem.Client.get`."""
        resp = await self._call(
            self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id, include_result=include_result)
        )
        return Job.from_proto(resp.job)

    async def handle(self, job_id: str) -> AsyncJobHandle:
        """A handle for an existing job (fetches its record)."""
        return AsyncJobHandle(self, await self.get(job_id))

    async def cancel(self, job_id: str) -> Job:
        """See :meth:`tandem.Client.cancel`."""
        resp = await self._call(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id))
        return Job.from_proto(resp.job)

    async def watch(
        self,
        job_ids: Sequence[str] | str | None = None,
        *,
        queue: str | None = None,
        include_result: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """See :meth:`tandem.Client.watch`."""
        ids = [job_ids] if isinstance(job_ids, str) else list(job_ids or [])
        if not ids and not queue:
            raise ValueError("watch needs job ids or a queue")
        deadline = None if timeout is None else time.monotonic() + timeout
        if len(ids) > WATCH_MAX_IDS:
            for start in range(0, len(ids), WATCH_MAX_IDS):
                rem = None if deadline is None else deadline - time.monotonic()
                async for job in self.watch(ids[start:start + WATCH_MAX_IDS],
                                            include_result=include_result, timeout=rem):
                    yield job
            return
        open_ids = set(ids)
        sleep = _RECONNECT_MIN
        while True:
            rem = None if deadline is None else deadline - time.monotonic()
            if rem is not None and rem <= 0:
                raise Timeout(f"watch timed out after {timeout} s", reason="TIMEOUT")
            req = jobs_pb2.WatchJobsRequest(
                job_ids=[i for i in ids if i in open_ids] if ids else [],
                queue="" if ids else (queue or ""),
                include_result=include_result,
            )
            call = self._stub.WatchJobs(req, timeout=rem)
            try:
                async for resp in call:
                    job = Job.from_proto(resp.job)
                    sleep = _RECONNECT_MIN
                    if ids and job.done:
                        open_ids.discard(job.id)
                    yield job
                    if ids and not open_ids:
                        return
                if not ids:
                    return
            except grpc.RpcError as rpc_err:
                err = from_rpc_error(rpc_err)
                if isinstance(err, Timeout) and deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"watch timed out after {timeout} s", reason="TIMEOUT") from rpc_err
                if not isinstance(err, (Unavailable, InternalError, Cancelled)) or self._closed:
                    raise err from rpc_err
            finally:
                call.cancel()
            rem = None if deadline is None else deadline - time.monotonic()
            await asyncio.sleep(min(sleep, max(0.0, rem if rem is not None else sleep)))
            sleep = min(_RECONNECT_MAX, sleep * 2 * random.uniform(0.8, 1.2))

    async def wait(
        self, job_ids: Sequence[str], *, timeout: float | None = None, include_result: bool = True
    ) -> dict[str, Job]:
        """See :meth:`tandem.Client.wait`."""
        final: dict[str, Job] = {}
        want = list(dict.fromkeys(job_ids))
        if not want:
            return final
        async for job in self.watch(want, include_result=include_result, timeout=timeout):
            if job.done:
                final[job.id] = job
        if include_result:
            for job_id, job in list(final.items()):
                if job.state is JobState.SUCCEEDED and job.result is None:
                    final[job_id] = await self.get(job_id, include_result=True)
        return final

    async def map(
        self,
        steps: StepsLike,
        inputs: Iterable[Payload],
        *,
        queue: str | None = None,
        window: int = 512,
        batch_size: int = 128,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> AsyncIterator[Any]:
        """See :meth:`tandem.Client.map`."""
        q = self.queue if queue is None else queue
        it = iter(inputs)
        pending: list[list[AsyncJobHandle | TandemError]] = []
        in_count = 0
        exhausted = False

        async def fill() -> None:
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
                    pending.append(await self.submit_many(chunk, batch_size=batch_size))
                    in_count += len(chunk)

        await fill()
        while pending:
            chunk_results = pending.pop(0)
            in_count -= len(chunk_results)
            ids = [r.id for r in chunk_results if isinstance(r, AsyncJobHandle)]
            final = await self.wait(ids, timeout=timeout) if ids else {}
            await fill()
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

    async def ops(self) -> Ops:
        """See :meth:`tandem.Client.ops`."""
        stub = compute_pb2_grpc.ComputeServiceStub(self._channel)
        try:
            resp: compute_pb2.ListOpsResponse = await self._call(
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
            async with grpc.aio.insecure_channel(self.compute_address) as channel:
                stub = compute_pb2_grpc.ComputeServiceStub(channel)
                resp = await self._call(stub.ListOps, compute_pb2.ListOpsRequest())
        return ops_from_proto(resp)

    async def queues(self) -> list[QueueInfo]:
        """See :meth:`tandem.Client.queues`."""
        resp = await self._call(self._stub.ListQueues, jobs_pb2.ListQueuesRequest())
        return [QueueInfo.from_proto(q) for q in resp.queues]

    async def pause_queue(self, queue: str) -> QueueInfo:
        """See :meth:`tandem.Client.pause_queue`."""
        resp = await self._call(self._stub.PauseQueue, jobs_pb2.PauseQueueRequest(queue=queue))
        return QueueInfo.from_proto(resp.queue)

    async def resume_queue(self, queue: str) -> QueueInfo:
        """See :meth:`tandem.Client.resume_queue`."""
        resp = await self._call(self._stub.ResumeQueue, jobs_pb2.ResumeQueueRequest(queue=queue))
        return QueueInfo.from_proto(resp.queue)

    async def dead_letters(self, queue: str = "default", *, limit: int = 100) -> DeadLetters:
        """See :meth:`tandem.Client.dead_letters`."""
        resp = await self._call(
            self._stub.ListDeadLetters, jobs_pb2.ListDeadLettersRequest(queue=queue, limit=limit)
        )
        return DeadLetters(queue=queue, jobs=[Job.from_proto(j) for j in resp.jobs], total=resp.total)

    async def retry_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> list[str]:
        """See :meth:`tandem.Client.retry_dead_letters`."""
        req = jobs_pb2.RetryDeadLettersRequest(
            queue=queue, job_ids=list(job_ids or []), all=job_ids is None
        )
        resp = await self._call(self._stub.RetryDeadLetters, req)
        return list(resp.retried_job_ids)

    async def purge_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> int:
        """See :meth:`tandem.Client.purge_dead_letters`."""
        req = jobs_pb2.PurgeDeadLettersRequest(
            queue=queue, job_ids=list(job_ids or []), all=job_ids is None
        )
        resp = await self._call(self._stub.PurgeDeadLetters, req)
        return int(resp.purged)

    # ------------------------------------------------------------ health

    async def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when the orchestrator reports SERVING for ``service``."""
        from tandem._health import SERVING, decode_status, encode_request

        call = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=encode_request,
            response_deserializer=decode_status,
        )
        try:
            status: int = await call(service, timeout=timeout)
        except grpc.RpcError:
            return False
        return status == SERVING

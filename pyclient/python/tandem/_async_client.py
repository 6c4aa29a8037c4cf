"""The asyncio client (grpc.aio), with the same methods as :class:`Client`: the
awaited I/O around the logic of :mod:`tandem._core`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from opentelemetry.trace import SpanContext

from tandem import _core as core
from tandem._core import WATCH_MAX_IDS, job_outcome
from tandem._errors import InternalError, TandemError, from_rpc_error
from tandem._requests import JobSpec
from tandem._tracing import Metadata
from tandem._types import (
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
)
from tandem.v1 import compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc

__all__ = ["AsyncClient", "AsyncJobHandle"]

T = TypeVar("T")


class AsyncJobHandle(core.HandleBase["AsyncClient"]):
    """A submitted job (asyncio). ``await handle`` is ``await handle.result()``."""

    def __await__(self) -> Generator[Any, None, bytes]:
        return self.result().__await__()

    async def get(self, *, include_result: bool = False) -> Job:
        """The job's current record."""
        return await self._client.get(self.id, include_result=include_result)

    async def wait(self, timeout: float | None = None) -> Job:
        """Waits until the job is terminal; returns its record."""
        return (await self._client._wait([self.id], timeout, True, "wait", self._links))[self.id]

    async def result(self, timeout: float | None = None) -> bytes:
        """Waits for the job and returns its result bytes; raises
        :class:`JobFailed`, :class:`Cancelled` or :class:`Timeout`."""
        job = (await self._client._wait([self.id], timeout, True, "result", self._links))[self.id]
        return job_outcome(job)

    async def cancel(self) -> Job:
        """Cancels the job."""
        return await self._client.cancel(self.id)


class AsyncClient(core.ClientBase):
    """The asyncio twin of :class:`tandem.Client` (same arguments, TLS and
    token ones included, same methods, as coroutines and async iterators).
    Create it inside a running event loop; use ``async with`` or ``await
    client.close()``."""

    _grpc = grpc.aio
    _channel: grpc.aio.Channel
    _stub: jobs_pb2_grpc.JobServiceStub

    async def close(self) -> None:
        """Closes the channel."""
        if not self._closed.is_set():
            self._closed.set()
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _drive(self, plan: core.Plan[T], stub: Any = None) -> T:
        """Performs the calls and pauses ``plan`` asks for; returns its result."""
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, core.Sleep):
                await asyncio.sleep(step.seconds)
                reply = None
                continue
            method = getattr(stub or self._stub, step.method)
            timeout = self.timeout if step.timeout is None else min(self.timeout, step.timeout)
            try:
                reply = await method(
                    step.request, timeout=timeout, metadata=self._md(step.metadata)
                )
            except grpc.RpcError as rpc_err:
                reply = from_rpc_error(rpc_err)

    async def _run(self, rpc: core.Rpc[T], stub: Any = None) -> T:
        return await self._drive(self._unary(rpc), stub)

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
        rpc = self._job_request(
            steps, payload, queue, idempotency_key, max_attempts, timeout, labels
        )
        return AsyncJobHandle(self, *await self._drive(self._submit(rpc)))

    async def submit_many(
        self, jobs: Iterable[JobSpec | jobs_pb2.SubmitJobRequest], *, batch_size: int = 256
    ) -> list[AsyncJobHandle | TandemError]:
        """See :meth:`tandem.Client.submit_many`."""
        plan = self._submit_many(
            jobs, batch_size, lambda job, dedup: AsyncJobHandle(self, job, dedup)
        )
        return await self._drive(plan)

    async def get(self, job_id: str, *, include_result: bool = False) -> Job:
        """See :meth:`tandem.Client.get`."""
        return await self._run(core.get_job(job_id, include_result))

    async def jobs(
        self,
        queue: str | None = None,
        *,
        state: JobState | str | None = None,
        label: str | None = None,
        limit: int = 50,
        scan: int = 0,
    ) -> JobList:
        """See :meth:`tandem.Client.jobs`."""
        return await self._run(core.list_jobs(queue, state, label, limit, scan))

    async def handle(self, job_id: str) -> AsyncJobHandle:
        """A handle for an existing job (fetches its record)."""
        return AsyncJobHandle(self, await self.get(job_id))

    async def cancel(self, job_id: str) -> Job:
        """See :meth:`tandem.Client.cancel`."""
        return await self._run(core.cancel_job(job_id))

    async def watch(
        self,
        job_ids: Sequence[str] | str | None = None,
        *,
        queue: str | None = None,
        include_result: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Job]:
        """See :meth:`tandem.Client.watch`."""
        ids = core.watch_ids(job_ids, queue)
        with self._wait_span("watch", ids, queue) as span:
            async for job in self._watch(ids, queue, include_result, timeout, span.metadata):
                yield job

    async def _watch(
        self,
        ids: list[str],
        queue: str | None,
        include_result: bool,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[Job]:
        if len(ids) > WATCH_MAX_IDS:
            deadline = core.deadline_after(timeout)
            for group in core.id_groups(ids):
                async for job in self._watch(
                    group, None, include_result, core.remaining(deadline), metadata
                ):
                    yield job
            return
        w = core.Watch(ids, queue, include_result, timeout, self._closed, self.retry, metadata)
        while True:
            req, rem = w.request()
            call = self._stub.WatchJobs(req, timeout=rem, metadata=self._md(w.metadata))
            try:
                if w.wants_headers:
                    await call.initial_metadata()
                    w.opened(not call.done())
                async for resp in call:
                    yield w.job(resp)
                    if w.finished:
                        return
                if w.ended():
                    return
            except grpc.RpcError as rpc_err:
                w.broken(rpc_err)
            finally:
                call.cancel()
            await asyncio.sleep(w.reconnect_delay())

    async def _settle(
        self,
        job_ids: list[str],
        timeout: float | None,
        include_result: bool,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[Job]:
        """See :meth:`tandem.Client._settle`."""
        deadline = core.deadline_after(timeout)
        async for job in self._watch(job_ids, None, include_result, timeout, metadata):
            if job.done:
                if core.lacks_result(job, include_result):
                    rpc = core.get_job(job.id, True, metadata)
                    job = await self._drive(self._unary(rpc, deadline))
                yield job

    async def wait(
        self, job_ids: Sequence[str], *, timeout: float | None = None, include_result: bool = True
    ) -> dict[str, Job]:
        """See :meth:`tandem.Client.wait`."""
        return await self._wait(job_ids, timeout, include_result, "wait")

    async def _wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None,
        include_result: bool,
        call: str,
        links: Sequence[SpanContext] = (),
    ) -> dict[str, Job]:
        want = core.wait_ids(job_ids)
        if not want:
            return {}
        with self._wait_span(call, want, links=links) as span:
            return {
                job.id: job
                async for job in self._settle(want, timeout, include_result, span.metadata)
            }

    async def map(
        self,
        steps: StepsLike,
        inputs: Iterable[Payload],
        *,
        queue: str | None = None,
        window: int = core.MAP_WINDOW,
        max_bytes: int = core.MAP_WINDOW_BYTES,
        batch_size: int = 128,
        timeout: float | None = None,
        return_exceptions: bool = False,
        on_result: Callable[[int, Job | TandemError], None] | None = None,
    ) -> AsyncIterator[Any]:
        """See :meth:`tandem.Client.map`."""
        plan = self._map(steps, inputs, queue, window, max_bytes, batch_size)

        async def fill() -> None:
            for chunk in plan.chunks():
                retries = self._retries(core.deadline_after(timeout), "map")
                results = await self._drive(
                    self._submit_many(chunk.specs, batch_size, lambda job, dedup: job, retries)
                )
                for index, err in plan.submitted(chunk, results):
                    if on_result is not None:
                        on_result(index, err)

        await fill()
        while plan.inflight:
            chunk = plan.next()
            index_of = chunk.index_of()
            final: dict[str, Job] = {}
            if index_of:
                async for job in self._settle(chunk.ids(), timeout, True):
                    final[job.id] = job
                    if on_result is not None:
                        on_result(index_of[job.id], job)
            await fill()
            for outcome in plan.outcomes(chunk, final, return_exceptions):
                yield outcome

    # ------------------------------------------------------------ catalogue and queues

    async def ops(self) -> Ops:
        """See :meth:`tandem.Client.ops`."""
        try:
            return await self._run(
                core.list_ops(), compute_pb2_grpc.ComputeServiceStub(self._channel)
            )
        except InternalError as err:
            address = self._ops_fallback(err)
        async with self._side_channel(address) as channel:
            return await self._run(core.list_ops(), compute_pb2_grpc.ComputeServiceStub(channel))

    async def queues(self) -> list[QueueInfo]:
        """See :meth:`tandem.Client.queues`."""
        return await self._run(core.list_queues())

    async def workers(self) -> list[WorkerInfo]:
        """See :meth:`tandem.Client.workers`."""
        return await self._run(core.list_workers())

    async def pause_queue(self, queue: str) -> QueueInfo:
        """See :meth:`tandem.Client.pause_queue`."""
        return await self._run(core.pause_queue(queue))

    async def resume_queue(self, queue: str) -> QueueInfo:
        """See :meth:`tandem.Client.resume_queue`."""
        return await self._run(core.resume_queue(queue))

    async def dead_letters(self, queue: str = "default", *, limit: int = 100) -> DeadLetters:
        """See :meth:`tandem.Client.dead_letters`."""
        return await self._run(core.list_dead_letters(queue, limit))

    async def retry_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> list[str]:
        """See :meth:`tandem.Client.retry_dead_letters`."""
        return await self._run(core.retry_dead_letters(queue, job_ids))

    async def purge_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> int:
        """See :meth:`tandem.Client.purge_dead_letters`."""
        return await self._run(core.purge_dead_letters(queue, job_ids))

    async def audit(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        queue: str | None = None,
    ) -> AuditPage:
        """See :meth:`tandem.Client.audit`."""
        return await self._run(core.list_audit(after_seq, limit, actor, action, queue))

    # ------------------------------------------------------------ health

    async def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when the orchestrator reports SERVING for ``service``."""
        from tandem._health import SERVING, health_call

        try:
            status: int = await health_call(self._channel)(service, timeout=timeout)
        except grpc.RpcError:
            return False
        return status == SERVING

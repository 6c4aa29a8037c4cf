"""The synchronous client: the blocking I/O around the logic of :mod:`tandem._core`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
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

__all__ = ["Client", "JobHandle"]

T = TypeVar("T")


class JobHandle(core.HandleBase["Client"]):
    """A submitted job. Cheap to create; thread-safe.

    Attributes:
        id: the job id.
        job: the job record as returned by the submit.
        deduplicated: True when the idempotency key matched an existing job,
            which this handle now refers to.
    """

    def get(self, *, include_result: bool = False) -> Job:
        """The job's current record."""
        return self._client.get(self.id, include_result=include_result)

    def wait(self, timeout: float | None = None) -> Job:
        """Waits until the job is terminal and returns its record (with the
        result bytes when it SUCCEEDED); goes on through orchestrator
        restarts and broker outages. Raises :class:`tandem.Timeout` after
        ``timeout`` seconds (None: never), :class:`NotFound` for an unknown
        job."""
        return self._client._wait([self.id], timeout, True, "wait", self._links)[self.id]

    def result(self, timeout: float | None = None) -> bytes:
        """Waits for the job and returns its result bytes.

        Raises:
            JobFailed: the job ended FAILED or DEAD (``.error`` says why).
            Cancelled: the job was cancelled.
            Timeout: ``timeout`` seconds passed first (the job goes on).
                Failures of the service or its broker before then are waited
                out (see :meth:`Client.watch`), never raised.
        """
        job = self._client._wait([self.id], timeout, True, "result", self._links)[self.id]
        return job_outcome(job)

    def cancel(self) -> Job:
        """Cancels the job (see :meth:`Client.cancel`)."""
        return self._client.cancel(self.id)


class Client(core.ClientBase):
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

    Security (each falls back to its environment variable):

    * ``ca`` (``$TANDEM_CA``): PEM CA bundle that signs the server's
      certificate; turns TLS on. ``tls=True`` (``TANDEM_TLS=1``) turns it on
      with the system's roots.
    * ``cert`` and ``key`` (``$TANDEM_CERT``, ``$TANDEM_KEY``): a client
      certificate and its key, for servers that require mTLS; turn TLS on.
    * ``token`` (``$TANDEM_TOKEN``): a bearer token (``tdm_<id>_<secret>``,
      from ``tandem-orchestrator token create``), sent as ``authorization:
      Bearer <token>`` on every call, streams and waits included. It is
      refused over a plaintext channel to a non-loopback address unless
      ``insecure=True`` (anyone on the path could read and replay it).

    The files are read once, here: a bad path raises ``ValueError``
    (:class:`tandem.SecurityError`) naming the argument. To pick up a
    rotated client certificate, create a new client. ``credentials`` (a
    ``grpc.ChannelCredentials``) replaces the TLS settings for uncommon
    set-ups. Calls the server refuses raise :class:`Unauthenticated`
    (:class:`TokenExpired`), :class:`PermissionDenied` or, when the caller
    exceeds its rate, :class:`RateLimited` (retried with backoff).
    """

    _grpc = grpc
    _channel: grpc.Channel
    _stub: jobs_pb2_grpc.JobServiceStub

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

    # ------------------------------------------------------------ plumbing

    def _drive(self, plan: core.Plan[T], stub: Any = None) -> T:
        """Performs the calls and pauses ``plan`` asks for; returns its result."""
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, core.Sleep):
                time.sleep(step.seconds)
                reply = None
                continue
            method = getattr(stub or self._stub, step.method)
            timeout = self.timeout if step.timeout is None else min(self.timeout, step.timeout)
            try:
                reply = method(step.request, timeout=timeout, metadata=self._md(step.metadata))
            except grpc.RpcError as rpc_err:
                reply = from_rpc_error(rpc_err)

    def _run(self, rpc: core.Rpc[T], stub: Any = None) -> T:
        return self._drive(self._unary(rpc), stub)

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
        rpc = self._job_request(
            steps, payload, queue, idempotency_key, max_attempts, timeout, labels
        )
        return JobHandle(self, *self._drive(self._submit(rpc)))

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
        plan = self._submit_many(jobs, batch_size, lambda job, dedup: JobHandle(self, job, dedup))
        return self._drive(plan)

    def get(self, job_id: str, *, include_result: bool = False) -> Job:
        """A job's record; with ``include_result`` also its result bytes.

        Raises :class:`NotFound` for an unknown (or expired) job.
        """
        return self._run(core.get_job(job_id, include_result))

    def jobs(
        self,
        queue: str | None = None,
        *,
        state: JobState | str | None = None,
        label: str | None = None,
        limit: int = 50,
        scan: int = 0,
    ) -> JobList:
        """Finds recent jobs, newest first (``ListJobs``): of ``queue`` (None:
        every queue), in ``state`` (a :class:`JobState` or its name), carrying
        ``label`` (``"KEY"``: any value, or ``"KEY=VALUE"``); at most
        ``limit`` (server default 50, max 500). It looks at the newest
        ``scan`` records only (0: the server's 5000, max 50000): a tool for
        finding a job, not an index; ``truncated`` says older ones exist."""
        return self._run(core.list_jobs(queue, state, label, limit, scan))

    def handle(self, job_id: str) -> JobHandle:
        """A handle for an existing job (fetches its record)."""
        return JobHandle(self, self.get(job_id))

    def cancel(self, job_id: str) -> Job:
        """Cancels a job: a queued job never runs, a running job has its
        compute call cancelled. Raises :class:`Conflict` when the job
        already finished."""
        return self._run(core.cancel_job(job_id))

    def watch(
        self,
        job_ids: Sequence[str] | str | None = None,
        *,
        queue: str | None = None,
        include_result: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Job]:
        """Yields state changes of the given jobs (current state first),
        ending when all are terminal; or of every job of ``queue``.

        Job ids: a broken stream is reopened, with backoff, for the ids not
        yet terminal (each reopening sends their current state first, so no
        final state is missed; intermediate ones may be): across orchestrator
        restarts, broker (NATS) outages, and any retryable error or
        server-side deadline. Ends the iterator with :class:`Timeout` once
        ``timeout`` seconds (None: never) have passed, or with a permanent
        error (:class:`NotFound` for an unknown id, :class:`InvalidJob`).

        A queue: opening the stream is retried the same way, but once it is
        live a break ends the iterator with the error, because events between
        the break and a new watch are lost: :class:`Unavailable` (reason
        BROKER_UNAVAILABLE with code ABORTED or UNAVAILABLE: the orchestrator
        lost NATS; or no reason: the orchestrator went away) or
        :class:`Overloaded` (reason OVERLOADED: the caller fell behind and
        events were dropped). Their ``retryable`` is true: re-read the jobs
        that matter (:meth:`get`) and watch again. Without a break a queue
        watch runs until ``timeout`` (:class:`Timeout`).

        More than :data:`WATCH_MAX_IDS` ids are watched in consecutive
        groups, so later groups report their current state when their turn
        comes rather than every intermediate change.

        The watch is one ``tandem.wait`` span, from the first ``next`` to the
        iterator's end.
        """
        ids = core.watch_ids(job_ids, queue)
        with self._wait_span("watch", ids, queue) as span:
            yield from self._watch(ids, queue, include_result, timeout, span.metadata)

    def _watch(
        self,
        ids: list[str],
        queue: str | None,
        include_result: bool,
        timeout: float | None,
        metadata: Metadata | None,
    ) -> Iterator[Job]:
        if len(ids) > WATCH_MAX_IDS:
            deadline = core.deadline_after(timeout)
            for group in core.id_groups(ids):
                yield from self._watch(
                    group, None, include_result, core.remaining(deadline), metadata
                )
            return
        w = core.Watch(ids, queue, include_result, timeout, self._closed, self.retry, metadata)
        while True:
            req, rem = w.request()
            call = self._stub.WatchJobs(req, timeout=rem, metadata=self._md(w.metadata))
            try:
                if w.wants_headers:
                    call.initial_metadata()
                    w.opened(not call.done())
                for resp in call:
                    yield w.job(resp)
                    if w.finished:
                        return
                if w.ended():
                    return
            except grpc.RpcError as rpc_err:
                w.broken(rpc_err)
            finally:
                call.cancel()
            time.sleep(w.reconnect_delay())

    def _settle(
        self,
        job_ids: list[str],
        timeout: float | None,
        include_result: bool,
        metadata: Metadata | None = None,
    ) -> Iterator[Job]:
        """Each job's final record as it ends (with its result bytes when
        asked), through broken streams and failing calls until ``timeout``;
        every call carries ``metadata`` (else the caller's trace context)."""
        deadline = core.deadline_after(timeout)
        for job in self._watch(job_ids, None, include_result, timeout, metadata):
            if job.done:
                if core.lacks_result(job, include_result):
                    rpc = core.get_job(job.id, True, metadata)
                    job = self._drive(self._unary(rpc, deadline))
                yield job

    def wait(
        self, job_ids: Sequence[str], *, timeout: float | None = None, include_result: bool = True
    ) -> dict[str, Job]:
        """Waits until every job is terminal; returns their final records
        keyed by id (with result bytes when asked). Goes on through
        orchestrator restarts and broker outages (see :meth:`watch`).
        Raises :class:`tandem.Timeout` after ``timeout`` seconds (None:
        never), or a permanent error (:class:`NotFound` for an unknown id)."""
        return self._wait(job_ids, timeout, include_result, "wait")

    def _wait(
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
                job.id: job for job in self._settle(want, timeout, include_result, span.metadata)
            }

    def map(
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
    ) -> Iterator[Any]:
        """Runs one pipeline over many inputs; yields results in input order.

        Keeps at most ``window`` jobs (default 256) and ``max_bytes``
        payload bytes (default 128 MiB; one larger input goes alone) in
        flight, submitted in batches of ``batch_size``; inputs are read only
        when their batch is submitted. A job that fails raises its error
        (:class:`JobFailed`, :class:`Cancelled`, or the submit's error) from
        the iterator, unless ``return_exceptions`` is true, in which case the
        exception is yielded in its place.

        ``on_result(index, outcome)`` is called once per input as it settles
        (for progress): with the job's final record (result bytes included),
        or with the error that rejected its submit. ``timeout`` bounds the
        submit and the wait of each batch (:class:`Timeout`); before it,
        failures of the service or its broker are waited out, never raised.
        """
        plan = self._map(steps, inputs, queue, window, max_bytes, batch_size)

        def fill() -> None:
            for chunk in plan.chunks():
                retries = self._retries(core.deadline_after(timeout), "map")
                results = self._drive(
                    self._submit_many(chunk.specs, batch_size, lambda job, dedup: job, retries)
                )
                for index, err in plan.submitted(chunk, results):
                    if on_result is not None:
                        on_result(index, err)

        fill()
        while plan.inflight:
            chunk = plan.next()
            index_of = chunk.index_of()
            final: dict[str, Job] = {}
            for job in self._settle(chunk.ids(), timeout, True) if index_of else ():
                final[job.id] = job
                if on_result is not None:
                    on_result(index_of[job.id], job)
            fill()
            yield from plan.outcomes(chunk, final, return_exceptions)

    # ------------------------------------------------------------ catalogue and queues

    def ops(self) -> Ops:
        """The op catalogue and limits of the compute service.

        Asks ``tandem.v1.ComputeService/ListOps`` at the orchestrator's
        address; when the orchestrator does not serve it, asks the compute
        service at ``compute_address`` (``$TANDEM_COMPUTE_ADDRESS``).
        """
        try:
            return self._run(core.list_ops(), compute_pb2_grpc.ComputeServiceStub(self._channel))
        except InternalError as err:
            address = self._ops_fallback(err)
        with self._side_channel(address) as channel:
            return self._run(core.list_ops(), compute_pb2_grpc.ComputeServiceStub(channel))

    def queues(self) -> list[QueueInfo]:
        """Every queue's configuration and live figures."""
        return self._run(core.list_queues())

    def workers(self) -> list[WorkerInfo]:
        """The live op workers (``tandem worker``): their ops, concurrency,
        steps in flight, outcome counts and last heartbeat."""
        return self._run(core.list_workers())

    def pause_queue(self, queue: str) -> QueueInfo:
        """Stops the queue's workers from pulling; submits still queue."""
        return self._run(core.pause_queue(queue))

    def resume_queue(self, queue: str) -> QueueInfo:
        """Undoes :meth:`pause_queue`."""
        return self._run(core.resume_queue(queue))

    # ------------------------------------------------------------ dead letters

    def dead_letters(self, queue: str = "default", *, limit: int = 100) -> DeadLetters:
        """The jobs parked in ``queue``'s dead-letter queue (at most
        ``limit``, max 1000) and the total count."""
        return self._run(core.list_dead_letters(queue, limit))

    def retry_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Re-enqueues dead jobs with fresh attempts: the given ones, or all
        of the queue when ``job_ids`` is None. Returns the retried ids."""
        return self._run(core.retry_dead_letters(queue, job_ids))

    def purge_dead_letters(
        self, queue: str = "default", job_ids: Sequence[str] | None = None
    ) -> int:
        """Deletes dead jobs for good: the given ones, or all of the queue
        when ``job_ids`` is None. Returns how many were purged."""
        return self._run(core.purge_dead_letters(queue, job_ids))

    # ------------------------------------------------------------ audit

    def audit(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        queue: str | None = None,
    ) -> AuditPage:
        """A page of the audit trail (``ListAudit``): state-changing calls
        (submits, cancels, dead-letter retries and purges, pauses, resumes,
        token changes), oldest first, after sequence number ``after_seq``
        (0: from the oldest kept); at most ``limit`` (1 to 1000); only those
        of ``actor`` / ``action`` / ``queue`` when given. Pass the page's
        ``last_seq`` as ``after_seq`` to go on. Needs a token with admin on
        every queue (:class:`PermissionDenied` otherwise)."""
        return self._run(core.list_audit(after_seq, limit, actor, action, queue))

    # ------------------------------------------------------------ health

    def health(self, service: str = "", *, timeout: float = 5.0) -> bool:
        """True when the orchestrator reports SERVING for ``service``."""
        from tandem._health import check

        return check(self._channel, service, timeout=timeout)

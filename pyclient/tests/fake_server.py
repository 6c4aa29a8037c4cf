"""An in-process JobService stub for tests of the client's own logic
(retries, batching, watch reconnects, error details). It is not a model of
the orchestrator: each test scripts what it answers."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tandem.v1 import (
    compute_pb2,
    compute_pb2_grpc,
    errors_pb2,
    jobs_pb2,
    jobs_pb2_grpc,
    worker_pb2,
)


def status_error(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    metadata: dict[str, str] | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    """A status as a Tandem service sends it; ``reason=""``: a bare status
    without an ErrorInfo (as gRPC itself or a proxy would fail a call)."""
    details = []
    if reason:
        info = error_details_pb2.ErrorInfo(
            reason=reason, domain="tandem.dev", metadata=metadata or {}
        )
        details.append(any_pb2.Any())
        details[0].Pack(info)
    if retry_after is not None:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=int(retry_after), nanos=int((retry_after % 1) * 1e9)
            )
        )
        d = any_pb2.Any()
        d.Pack(retry)
        details.append(d)
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


class RpcError(grpc.RpcError):
    """A failed call as grpc reports it (code, details, trailing metadata),
    for tests that need no server."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str = "msg", domain: str = "tandem.dev"
    ) -> None:
        details = []
        if reason:
            info = any_pb2.Any()
            info.Pack(
                error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata={"k": "v"})
            )
            details.append(info)
        status = status_pb2.Status(code=code.value[0], message=message, details=details)
        self._code = code
        self._message = message
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


class FakeJobs(jobs_pb2_grpc.JobServiceServicer, compute_pb2_grpc.ComputeServiceServicer):
    """Jobs succeed at once with sha256 of the payload, unless scripted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, jobs_pb2.Job] = {}
        self.by_key: dict[str, str] = {}
        self.ids = itertools.count(1)
        self.submit_calls = 0
        self.batch_calls = 0
        self.watch_calls = 0
        self.keys_seen: list[str] = []
        self.traces_seen: list[str] = []
        # (method, traceparent or "") of every call.
        self.calls: list[tuple[str, str]] = []
        # Scripts: called with the call number; return a grpc.Status to fail.
        self.submit_script: Callable[[int, jobs_pb2.SubmitJobRequest], grpc.Status | None] = (
            lambda n, r: None
        )
        self.item_script: Callable[[int, jobs_pb2.SubmitJobRequest], errors_pb2.Error | None] = (
            lambda n, r: None
        )
        # Final state for new jobs.
        self.outcome: Callable[[jobs_pb2.Job, bytes], None] = self._succeed
        # Break the watch stream after this many messages (once).
        self.break_watch_after: int | None = None
        # Fail a WatchJobs / GetJob call before it answers anything.
        self.watch_script: Callable[[int, jobs_pb2.WatchJobsRequest], grpc.Status | None] = (
            lambda n, r: None
        )
        self.get_script: Callable[[int, jobs_pb2.GetJobRequest], grpc.Status | None] = (
            lambda n, r: None
        )
        self.get_calls = 0
        # Watches of job ids leave out result bytes (the client must GetJob them).
        self.watch_without_results = False
        # A queue watch sends its headers, these events, then ends with this
        # status (None: ends normally).
        self.queue_events: list[jobs_pb2.Job] = []
        self.queue_end: grpc.Status | None = None
        # What ListWorkers answers.
        self.workers: list[worker_pb2.WorkerInfo] = []
        # What ListQueues answers (None: one `default` queue).
        self.queues: list[jobs_pb2.QueueInfo] | None = None
        self.list_requests: list[jobs_pb2.ListJobsRequest] = []

    def _succeed(self, job: jobs_pb2.Job, payload: bytes) -> None:
        job.state = jobs_pb2.JOB_STATE_SUCCEEDED
        job.attempt = 1
        job.result = hashlib.sha256(payload).digest()
        job.result_size = 32

    def _create(self, req: jobs_pb2.SubmitJobRequest) -> jobs_pb2.SubmitJobResponse:
        key = f"{req.queue}/{req.idempotency_key}"
        if req.idempotency_key and key in self.by_key:
            return jobs_pb2.SubmitJobResponse(
                job=self._public(self.jobs[self.by_key[key]]), deduplicated=True
            )
        job_id = f"job-{next(self.ids):04d}"
        job = jobs_pb2.Job(
            id=job_id,
            queue=req.queue or "default",
            steps=req.steps,
            idempotency_key=req.idempotency_key,
            labels=req.labels,
            payload_size=len(req.payload),
            max_attempts=req.max_attempts or 5,
            state=jobs_pb2.JOB_STATE_QUEUED,
        )
        job.created_at.GetCurrentTime()
        self.outcome(job, req.payload)
        self.jobs[job_id] = job
        if req.idempotency_key:
            self.by_key[key] = job_id
        queued = jobs_pb2.Job()
        queued.CopyFrom(job)
        queued.state = jobs_pb2.JOB_STATE_QUEUED
        queued.ClearField("result")
        return jobs_pb2.SubmitJobResponse(job=queued)

    def _public(self, job: jobs_pb2.Job, include_result: bool = False) -> jobs_pb2.Job:
        out = jobs_pb2.Job()
        out.CopyFrom(job)
        if not include_result:
            out.ClearField("result")
        return out

    def _seen(self, method: str, context: Any) -> str:
        md = dict(context.invocation_metadata())
        tp = str(md.get("traceparent", ""))
        self.calls.append((method, tp))
        return tp

    def traces_of(self, method: str) -> list[str]:
        return [tp for m, tp in self.calls if m == method]

    # JobService -------------------------------------------------------

    def SubmitJob(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.submit_calls += 1
            self.keys_seen.append(request.idempotency_key)
            self.traces_seen.append(self._seen("SubmitJob", context))
            st = self.submit_script(self.submit_calls, request)
            if st is not None:
                context.abort_with_status(st)
            return self._create(request)

    def SubmitJobs(self, request: Any, context: Any) -> Any:
        with self.lock:
            self._seen("SubmitJobs", context)
            self.batch_calls += 1
            st = self.submit_script(self.batch_calls, request)
            if st is not None:
                context.abort_with_status(st)
            results = []
            for r in request.jobs:
                self.submit_calls += 1
                err = self.item_script(self.submit_calls, r)
                if err is not None:
                    results.append(jobs_pb2.SubmitJobsResult(error=err))
                else:
                    results.append(jobs_pb2.SubmitJobsResult(submitted=self._create(r)))
            return jobs_pb2.SubmitJobsResponse(results=results)

    def GetJob(self, request: Any, context: Any) -> Any:
        with self.lock:
            self._seen("GetJob", context)
            self.get_calls += 1
            st = self.get_script(self.get_calls, request)
            job = self.jobs.get(request.job_id)
        if st is not None:
            context.abort_with_status(st)
        if job is None:
            context.abort_with_status(
                status_error(
                    grpc.StatusCode.NOT_FOUND,
                    "JOB_NOT_FOUND",
                    f"no job {request.job_id}",
                    {"job_id": request.job_id},
                )
            )
        return jobs_pb2.GetJobResponse(job=self._public(job, request.include_result))

    def WatchJobs(self, request: Any, context: Any) -> Iterator[Any]:
        with self.lock:
            self._seen("WatchJobs", context)
            self.watch_calls += 1
            brk = self.break_watch_after
            self.break_watch_after = None
            st = self.watch_script(self.watch_calls, request)
        if st is not None:
            context.abort_with_status(st)
        if request.queue:
            context.send_initial_metadata(())
            for job in self.queue_events:
                yield jobs_pb2.WatchJobsResponse(job=self._public(job))
            if self.queue_end is not None:
                # As in the orchestrator, the end comes well after the
                # headers (back to back, the client could not tell them
                # from a failed opening).
                time.sleep(0.05)
                context.abort_with_status(self.queue_end)
            return
        include_result = request.include_result and not self.watch_without_results
        if len(request.job_ids) > 1000:
            context.abort_with_status(
                status_error(
                    grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_INVALID", "too many job ids"
                )
            )
        sent = 0
        for job_id in request.job_ids:
            job = self.jobs.get(job_id)
            if job is None:
                context.abort_with_status(
                    status_error(grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", f"no job {job_id}")
                )
            if brk is not None and sent >= brk:
                context.abort_with_status(
                    status_error(grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", "draining")
                )
            yield jobs_pb2.WatchJobsResponse(job=self._public(job, include_result))
            sent += 1

    def CancelJob(self, request: Any, context: Any) -> Any:
        job = self.jobs.get(request.job_id)
        if job is None:
            context.abort_with_status(
                status_error(grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND", "no job")
            )
        if job.state == jobs_pb2.JOB_STATE_SUCCEEDED:
            context.abort_with_status(
                status_error(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "JOB_STATE_CONFLICT",
                    f"job {job.id} already SUCCEEDED",
                )
            )
        job.state = jobs_pb2.JOB_STATE_CANCELLED
        return jobs_pb2.CancelJobResponse(job=self._public(job))

    def ListQueues(self, request: Any, context: Any) -> Any:
        with self.lock:
            self._seen("ListQueues", context)
            if self.queues is not None:
                return jobs_pb2.ListQueuesResponse(queues=self.queues)
        q = jobs_pb2.QueueInfo(
            name="default",
            depth=3,
            in_flight=1,
            workers=2,
            min_workers=1,
            max_workers=4,
            max_attempts=5,
            max_depth=100,
        )
        q.job_timeout.FromSeconds(60)
        return jobs_pb2.ListQueuesResponse(queues=[q])

    def ListDeadLetters(self, request: Any, context: Any) -> Any:
        dead = [self._public(j) for j in self.jobs.values() if j.state == jobs_pb2.JOB_STATE_DEAD]
        return jobs_pb2.ListDeadLettersResponse(jobs=dead[: request.limit or 100], total=len(dead))

    def RetryDeadLetters(self, request: Any, context: Any) -> Any:
        ids = [
            j.id
            for j in self.jobs.values()
            if j.state == jobs_pb2.JOB_STATE_DEAD and (request.all or j.id in request.job_ids)
        ]
        for i in ids:
            self._succeed(self.jobs[i], b"")
        return jobs_pb2.RetryDeadLettersResponse(retried_job_ids=ids)

    def PurgeDeadLetters(self, request: Any, context: Any) -> Any:
        ids = [
            j.id
            for j in self.jobs.values()
            if j.state == jobs_pb2.JOB_STATE_DEAD and (request.all or j.id in request.job_ids)
        ]
        for i in ids:
            del self.jobs[i]
        return jobs_pb2.PurgeDeadLettersResponse(purged=len(ids))

    def ListJobs(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.list_requests.append(request)
            found = [
                self._public(j)
                for j in sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
                if (not request.queue or j.queue == request.queue)
                and (not request.state or j.state == request.state)
                and (
                    not request.label_key
                    or (
                        request.label_key in j.labels
                        and request.label_value in ("", j.labels[request.label_key])
                    )
                )
            ]
        return jobs_pb2.ListJobsResponse(
            jobs=found[: request.limit or 50], scanned=len(self.jobs), truncated=False
        )

    def ListWorkers(self, request: Any, context: Any) -> Any:
        return worker_pb2.ListWorkersResponse(workers=self.workers)

    # ComputeService (ListOps only) ------------------------------------

    def ListOps(self, request: Any, context: Any) -> Any:
        return compute_pb2.ListOpsResponse(
            ops=[
                compute_pb2.OpSpec(
                    name="compress.zstd",
                    description="zstd",
                    output_content_type="application/zstd",
                    params=[
                        compute_pb2.ParamSpec(
                            name="level",
                            type=compute_pb2.PARAM_TYPE_INT,
                            default_value="3",
                            min=1,
                            max=22,
                        )
                    ],
                ),
                compute_pb2.OpSpec(
                    name="acme.ocr",
                    description="OCR",
                    output_content_type="text/plain",
                    provider="worker",
                    live_workers=2,
                    version="3",
                ),
            ],
            limits=compute_pb2.Limits(max_request_bytes=64 << 20, max_steps=16),
        )


def failed_outcome(
    reason: str, code: int = code_pb2.INVALID_ARGUMENT, state: int = jobs_pb2.JOB_STATE_FAILED
) -> Callable[[jobs_pb2.Job, bytes], None]:
    def outcome(job: jobs_pb2.Job, payload: bytes) -> None:
        job.state = state  # type: ignore[assignment]
        job.attempt = 3 if state == jobs_pb2.JOB_STATE_DEAD else 1
        job.last_error.CopyFrom(
            errors_pb2.Error(
                code=code,
                reason=errors_pb2.ErrorReason.Value(reason),
                message=f"step 0 (image.thumbnail): {reason.lower()}",
                metadata={"step": "0"},
            )
        )

    return outcome


class FakeServer:
    def __init__(self) -> None:
        self.service = FakeJobs()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.service, self.server)
        compute_pb2_grpc.add_ComputeServiceServicer_to_server(self.service, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)

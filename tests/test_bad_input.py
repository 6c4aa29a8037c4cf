"""Bad input, through the client and through raw gRPC: each gets its clear
error, and both services stay healthy (checked after each)."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

import tandem
from harness import Stack, raw_channel
from tandem import local
from tandem._errors import from_rpc_error
from tandem.v1 import compute_pb2, compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc

MiB = 1 << 20


@pytest.fixture(autouse=True)
def healthy_after(stack: Stack) -> Iterator[None]:
    yield
    stack.assert_healthy()


def _zstd_bomb(total: int) -> bytes:
    """Concatenated zstd frames that decode to ``total`` zero bytes."""
    frame = local.run([{"op": "compress.zstd", "params": {"level": "19"}}], b"\0" * (16 * MiB))
    return frame * (total // (16 * MiB))


def _gzip_bomb(total: int) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    zeros = b"\0" * MiB
    parts = [co.compress(zeros) for _ in range(total // MiB)]
    parts.append(co.flush())
    return b"".join(parts)


# ---------------------------------------------------------------- through the client


def test_unknown_op(client: tandem.Client) -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit("no.such.op", b"x")
    assert info.value.reason == "UNKNOWN_OP"
    assert "no.such.op" in info.value.message
    assert info.value.metadata.get("op") == "no.such.op"


def test_param_out_of_range(client: tandem.Client) -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit(tandem.Step("compress.zstd", level=40), b"x")
    assert info.value.reason == "PARAM_OUT_OF_RANGE"
    assert info.value.metadata.get("param") == "level"
    assert "level" in info.value.message


def test_unknown_param(client: tandem.Client) -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit(tandem.Step("hash.sha256", colour="blue"), b"x")
    assert info.value.reason == "PARAM_INVALID"


def test_empty_pipeline(client: tandem.Client, stack: Stack) -> None:
    with pytest.raises(ValueError):
        client.submit([], b"x")  # refused by the client itself
    with raw_channel(stack.address) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitJob(jobs_pb2.SubmitJobRequest(payload=b"x"), timeout=10)
    err = from_rpc_error(info.value)
    assert isinstance(err, tandem.InvalidJob) and err.reason == "REQUEST_INVALID"


def test_oversized_payload(client: tandem.Client) -> None:
    data = b"\0" * (64 * MiB + 1)
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit("hash.sha256", data)
    assert info.value.reason == "PAYLOAD_TOO_LARGE"
    assert info.value.metadata.get("limit")


def test_payload_at_the_limit_is_admitted_consistently(client: tandem.Client) -> None:
    # Exactly the limit: the orchestrator may admit it or refuse it, but a
    # job it admitted must not fail later on the same limit.
    import hashlib

    data = b"\1" * (64 * MiB)
    try:
        h = client.submit("hash.sha256", data)
    except tandem.InvalidJob as err:
        assert err.reason == "PAYLOAD_TOO_LARGE"
        return
    assert h.result(timeout=120) == hashlib.sha256(data).digest()


def test_corrupt_image(client: tandem.Client) -> None:
    png_header_only = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 20
    with pytest.raises(tandem.JobFailed) as info:
        client.submit(tandem.Step("image.thumbnail"), png_header_only).result(timeout=60)
    assert info.value.error.reason == "INPUT_CORRUPT"


def test_zstd_bomb(client: tandem.Client) -> None:
    bomb = _zstd_bomb(512 * MiB)
    assert len(bomb) < MiB
    with pytest.raises(tandem.JobFailed) as info:
        client.submit("decompress.zstd", bomb).result(timeout=60)
    assert info.value.state == "FAILED"
    assert info.value.error.reason == "OUTPUT_TOO_LARGE"
    assert info.value.error.metadata.get("limit")


def test_gzip_bomb(client: tandem.Client) -> None:
    bomb = _gzip_bomb(300 * MiB)
    with pytest.raises(tandem.JobFailed) as info:
        client.submit("decompress.gzip", bomb).result(timeout=60)
    assert info.value.error.reason == "OUTPUT_TOO_LARGE"


# ---------------------------------------------------------------- raw gRPC


def _transform(stack: Stack, req: compute_pb2.TransformRequest) -> tandem.TandemError:
    with raw_channel(stack.compute_address) as ch:
        stub = compute_pb2_grpc.ComputeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Transform(req, timeout=60)
    return from_rpc_error(info.value)


def test_raw_compute_unknown_op(stack: Stack) -> None:
    err = _transform(
        stack, compute_pb2.TransformRequest(steps=[compute_pb2.Step(op="nope")], input=b"x")
    )
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and err.reason == "UNKNOWN_OP"


def test_raw_compute_bad_params(stack: Stack) -> None:
    err = _transform(
        stack,
        compute_pb2.TransformRequest(
            steps=[compute_pb2.Step(op="compress.zstd", params={"level": "forty"})], input=b"x"
        ),
    )
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT and err.reason == "PARAM_INVALID"


def test_raw_compute_oversized(stack: Stack) -> None:
    err = _transform(
        stack,
        compute_pb2.TransformRequest(
            steps=[compute_pb2.Step(op="hash.sha256")], input=b"\0" * (64 * MiB + 1)
        ),
    )
    assert err.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_raw_compute_zstd_bomb(stack: Stack) -> None:
    err = _transform(
        stack,
        compute_pb2.TransformRequest(
            steps=[compute_pb2.Step(op="decompress.zstd")], input=_zstd_bomb(512 * MiB)
        ),
    )
    assert err.reason == "OUTPUT_TOO_LARGE"


def test_raw_grpc_compressed_request_bomb(stack: Stack) -> None:
    # A gRPC-compressed (gzip) request that inflates past the request limit.
    with raw_channel(stack.compute_address) as ch:
        stub = compute_pb2_grpc.ComputeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Transform(
                compute_pb2.TransformRequest(
                    steps=[compute_pb2.Step(op="hash.sha256")], input=b"\0" * (80 * MiB)
                ),
                timeout=60,
                compression=grpc.Compression.Gzip,
            )
    assert info.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize(
    "method", ["/tandem.v1.ComputeService/Transform", "/tandem.v1.JobService/SubmitJob"]
)
def test_malformed_protobuf_frame(stack: Stack, method: str) -> None:
    address = stack.compute_address if "Compute" in method else stack.address
    with raw_channel(address) as ch:
        call = ch.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for garbage in (b"\xff\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", b"\x12\x05ab"):
            with pytest.raises(grpc.RpcError) as info:
                call(garbage, timeout=10)
            assert info.value.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.INTERNAL,
            ), info.value


def test_raw_orchestrator_submit_unknown_queue(stack: Stack) -> None:
    with raw_channel(stack.address) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitJob(
                jobs_pb2.SubmitJobRequest(
                    queue="nope", steps=[compute_pb2.Step(op="hash.sha256")], payload=b"x"
                ),
                timeout=10,
            )
    err = from_rpc_error(info.value)
    assert err.code is grpc.StatusCode.NOT_FOUND and err.reason == "QUEUE_NOT_FOUND"


def test_raw_orchestrator_too_many_jobs_in_one_batch(stack: Stack) -> None:
    req = jobs_pb2.SubmitJobsRequest(
        jobs=[
            jobs_pb2.SubmitJobRequest(steps=[compute_pb2.Step(op="hash.sha256")], payload=b"x")
            for _ in range(100_000)
        ]
    )
    with raw_channel(stack.address) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitJobs(req, timeout=30)
    err = from_rpc_error(info.value)
    assert isinstance(err, (tandem.InvalidJob, tandem.Overloaded))


def test_raw_compute_overload_answers_resource_exhausted_with_hint(stack: Stack) -> None:
    # More concurrent slow requests than workers + wait queue: the excess is
    # refused at once with RESOURCE_EXHAUSTED (OVERLOADED, retry hint), the
    # rest complete, and nothing queues without bound.
    from concurrent.futures import ThreadPoolExecutor

    with raw_channel(stack.compute_address) as ch:
        stub = compute_pb2_grpc.ComputeServiceStub(ch)
        limits = stub.ListOps(compute_pb2.ListOpsRequest(), timeout=10).limits
        n = limits.workers + limits.queue_depth + 6
        req = compute_pb2.TransformRequest(
            steps=[compute_pb2.Step(op="debug.sleep", params={"ms": "1500"})], input=b""
        )

        def call(_: int) -> tandem.TandemError | None:
            try:
                stub.Transform(req, timeout=30)
                return None
            except grpc.RpcError as e:
                return from_rpc_error(e)

        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(call, range(n)))
    refused = [e for e in outcomes if e is not None]
    assert refused, "no request was refused"
    assert all(isinstance(e, tandem.Overloaded) and e.reason == "OVERLOADED" for e in refused), (
        refused
    )
    assert all(e.retry_after for e in refused if isinstance(e, tandem.Overloaded))
    assert len(refused) <= n - limits.workers, "fewer requests ran than there are workers"


def test_payload_over_the_orchestrators_message_limit(client: tandem.Client) -> None:
    # Larger than the orchestrator's gRPC message limit but within the
    # client's: the transport refuses it; the client must not retry it.
    calls = _count_calls(client)
    with pytest.raises((tandem.Overloaded, tandem.InvalidJob)):
        client.submit("hash.sha256", b"\0" * (70 * MiB))
    assert calls == ["/tandem.v1.JobService/SubmitJob"], f"retried: {calls}"


def _count_calls(client: tandem.Client) -> list[str]:
    """Routes the client's calls through an interceptor that records each
    method called; returns the (live) list."""
    calls: list[str] = []

    class Counter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            calls.append(details.method)
            return continuation(details, request)

    client._stub = jobs_pb2_grpc.JobServiceStub(grpc.intercept_channel(client._channel, Counter()))
    return calls


# ---------------------------------------------------------------- hostile identifiers

# Values no identifier may have: NATS subject wildcards and separators, paths,
# spaces, control characters, empty, and lengths past the documented limit
# and past NATS's 4 KiB control line (which once closed the orchestrator's
# connection for every client).
HOSTILE_IDS = [
    "*",
    ">",
    ".",
    "a.b",
    "a b",
    "../..",
    "../../etc/passwd",
    "a\x00b",
    "a\r\nPUB x 1",
    "",
    "A" * 65,
    "A" * 4096,
    "A" * MiB,
]


def _code_and_size(fn: Callable[[], object]) -> tuple[grpc.StatusCode, int, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    err = info.value
    return err.code(), len(err.details() or ""), from_rpc_error(err).reason


@pytest.mark.parametrize("value", HOSTILE_IDS, ids=lambda v: repr(v[:12]) + f"/{len(v)}")
def test_hostile_job_ids_through_every_rpc(stack: Stack, value: str) -> None:
    with raw_channel(stack.address) as ch:
        stub = jobs_pb2_grpc.JobServiceStub(ch)
        calls: dict[str, Callable[[], object]] = {
            "GetJob": lambda: stub.GetJob(jobs_pb2.GetJobRequest(job_id=value), timeout=10),
            "CancelJob": lambda: stub.CancelJob(
                jobs_pb2.CancelJobRequest(job_id=value), timeout=10
            ),
            "WatchJobs": lambda: list(
                stub.WatchJobs(jobs_pb2.WatchJobsRequest(job_ids=[value]), timeout=10)
            ),
            "RetryDeadLetters": lambda: stub.RetryDeadLetters(
                jobs_pb2.RetryDeadLettersRequest(queue="default", job_ids=[value]), timeout=10
            ),
            "PurgeDeadLetters": lambda: stub.PurgeDeadLetters(
                jobs_pb2.PurgeDeadLettersRequest(queue="default", job_ids=[value]), timeout=10
            ),
        }
        if value:  # the empty queue name is the default queue
            calls["SubmitJob(queue)"] = lambda: stub.SubmitJob(
                jobs_pb2.SubmitJobRequest(queue=value, steps=[compute_pb2.Step(op="hash.sha256")]),
                timeout=10,
            )
            calls["PauseQueue"] = lambda: stub.PauseQueue(
                jobs_pb2.PauseQueueRequest(queue=value), timeout=10
            )
            calls["ListDeadLetters"] = lambda: stub.ListDeadLetters(
                jobs_pb2.ListDeadLettersRequest(queue=value), timeout=10
            )
        for name, fn in calls.items():
            code, size, reason = _code_and_size(fn)
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {code}"
            assert reason == "REQUEST_INVALID", f"{name}: {reason}"
            assert size < 400, f"{name}: a {size}-byte message"
    # The orchestrator kept its NATS connection: a job still runs.
    with tandem.Client(stack.address) as c:
        assert (
            c.submit("hash.sha256", b"after").result(timeout=60)
            == hashlib.sha256(b"after").digest()
        )


def test_wildcard_ids_touch_no_dead_letter(client: tandem.Client, stack: Stack) -> None:
    from harness import debug_fail_params

    h = client.submit(
        tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE")), b"dead", max_attempts=1
    )
    with pytest.raises(tandem.JobFailed):
        h.result(timeout=60)
    for pattern in ("*", ">", "default.*", h.id[:-1] + "*"):
        with pytest.raises(tandem.InvalidJob):
            client.retry_dead_letters("default", [pattern])
        with pytest.raises(tandem.InvalidJob):
            client.purge_dead_letters("default", [pattern])
    assert h.id in {j.id for j in client.dead_letters("default", limit=1000).jobs}
    assert client.get(h.id).state is tandem.JobState.DEAD
    client.purge_dead_letters("default", [h.id])


@pytest.mark.parametrize("where", ["op", "param name", "param value"])
@pytest.mark.parametrize("service", ["compute", "orchestrator"])
def test_huge_caller_values_get_a_short_error(stack: Stack, where: str, service: str) -> None:
    # A plain grpcio client refuses status metadata over 16 KiB: an error that
    # echoed a 1 MiB value came back as RESOURCE_EXHAUSTED or INTERNAL.
    huge = "x" * MiB
    step = {
        "op": compute_pb2.Step(op=huge),
        "param name": compute_pb2.Step(op="compress.zstd", params={huge: "3"}),
        "param value": compute_pb2.Step(op="compress.zstd", params={"level": huge}),
    }[where]
    with raw_channel(stack.compute_address if service == "compute" else stack.address) as ch:
        stub = compute_pb2_grpc.ComputeServiceStub(ch)
        jstub = jobs_pb2_grpc.JobServiceStub(ch)

        def call() -> object:
            if service == "compute":
                return stub.Transform(
                    compute_pb2.TransformRequest(steps=[step], input=b"x"), timeout=30
                )
            return jstub.SubmitJob(
                jobs_pb2.SubmitJobRequest(steps=[step], payload=b"x"), timeout=30
            )

        code, size, _ = _code_and_size(call)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, code
    assert size < 1024, f"a {size}-byte message"


def test_client_submit_with_a_20_kb_op_name_is_invalid_job(client: tandem.Client) -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit("o" * 20_000, b"x")
    assert len(info.value.message) < 400

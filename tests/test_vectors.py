"""Every shared transform vector (testdata/vectors.json) through the whole
system equals the vector, and equals tandem._native."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest

import tandem
from harness import ROOT, Stack, compute_bin, raw_channel
from tandem import local
from tandem._errors import from_rpc_error
from tandem._stack import Process, free_port, grpc_ready
from tandem.v1 import compute_pb2, compute_pb2_grpc, jobs_pb2, jobs_pb2_grpc

VECTORS = ROOT / "testdata" / "vectors.json"


def _load() -> list[Any]:
    if not VECTORS.exists():
        return [pytest.param(None, id="vectors.json-missing")]
    doc = json.loads(VECTORS.read_text())
    assert doc.get("version") == 1, "unknown vectors.json version"
    return [pytest.param(v, id=v["name"]) for v in doc["vectors"]]


def _check_output(vector: dict[str, Any], out: bytes) -> None:
    if "expected_b64" in vector:
        assert out == base64.b64decode(vector["expected_b64"])
    elif "expected_json" in vector:
        assert json.loads(out) == vector["expected_json"]
    else:
        raise AssertionError(f"vector {vector['name']} expects an error, got {len(out)} bytes")


_PLAIN: dict[str, str] = {}


def _plain_compute(stack: Stack) -> str:
    """A compute started without --enable-debug-ops (once per session)."""
    if stack.external:
        pytest.skip("needs a compute without debug ops; the compose stack has one compute")
    if "address" not in _PLAIN:
        address = f"127.0.0.1:{free_port()}"
        proc = Process(
            "tandem-compute-plain",
            [compute_bin(), "--listen", address, "--metrics-listen", ""],
            log_path=stack.tmp / "logs/compute-plain.log",
            ready=grpc_ready(address),
            address=address,
        )
        proc.start()
        stack.computes.append(proc)  # stopped and logged with the stack
        _PLAIN["address"] = address
    return _PLAIN["address"]


def _check_raw(address: str, vector: dict[str, Any]) -> None:
    """One ComputeService.Transform call with the vector's attempt number."""
    req = compute_pb2.TransformRequest(
        steps=[compute_pb2.Step(op=s["op"], params=s.get("params") or {}) for s in vector["steps"]],
        input=base64.b64decode(vector.get("input_b64", "")),
        attempt=int(vector.get("attempt", 0)),
    )
    with raw_channel(address) as ch:
        stub = compute_pb2_grpc.ComputeServiceStub(ch)
        try:
            resp = stub.Transform(req, timeout=30)
        except grpc.RpcError as rpc_err:
            err = from_rpc_error(rpc_err)
            want = vector.get("expected_error")
            assert want, f"unexpected error {err!r}"
            assert err.reason == want["reason"]
            assert err.code is not None and err.code.value[0] == want.get("code", err.code.value[0])
            if "message" in want:
                assert err.message == want["message"]
            return
    assert "expected_error" not in vector, f"expected {vector['expected_error']}, got a result"
    _check_output(vector, resp.output)


RETRYABLE_CODES = {4, 8, 13, 14}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE


def _uses_debug_ops(vector: dict[str, Any]) -> bool:
    return any(str(s.get("op", "")).startswith("debug.") for s in vector["steps"])


@pytest.mark.parametrize("vector", _load())
def test_vector_through_the_stack(
    vector: dict[str, Any] | None, client: tandem.Client, stack: Stack
) -> None:
    if vector is None:
        pytest.fail(f"{VECTORS} does not exist (owned by compute-rs)")
    if "attempt" in vector:
        # Attempt-specific: only meaningful on one call, so straight to compute
        # (retries through the orchestrator are covered by test_semantics).
        _check_raw(stack.compute_address, vector)
        return
    if _uses_debug_ops(vector) and not vector.get("debug_ops"):
        _check_raw(_plain_compute(stack), vector)
        return
    data = base64.b64decode(vector.get("input_b64", ""))
    steps = vector["steps"]
    expected_error = vector.get("expected_error")
    try:
        if not steps:
            # The client refuses an empty pipeline itself; send it raw.
            with raw_channel(stack.address) as ch:
                try:
                    jobs_pb2_grpc.JobServiceStub(ch).SubmitJob(
                        jobs_pb2.SubmitJobRequest(queue="fast", payload=data), timeout=30
                    )
                except grpc.RpcError as rpc_err:
                    raise from_rpc_error(rpc_err) from rpc_err
            raise AssertionError("an empty pipeline was accepted")
        handle = client.submit(steps, data, queue="fast")
        job = handle.wait(timeout=60)
    except tandem.InvalidJob as err:  # rejected by validation at submit
        assert expected_error, f"submit rejected: {err}"
        assert err.reason == expected_error["reason"]
        if "code" in expected_error:
            assert err.code is not None and err.code.value[0] == expected_error["code"]
        return
    if expected_error:
        retryable = expected_error.get("code") in RETRYABLE_CODES
        want = tandem.JobState.DEAD if retryable else tandem.JobState.FAILED
        assert job.state is want, f"expected {expected_error} ({want.name}), job {job.state.name}"
        assert job.last_error is not None
        assert job.last_error.reason == expected_error["reason"]
        if "code" in expected_error:
            assert job.last_error.code is not None
            assert job.last_error.code.value[0] == expected_error["code"]
        if retryable:
            assert job.attempt == job.max_attempts
        else:
            assert job.attempt == 1, "a permanent error must not be retried"
        return
    assert job.state is tandem.JobState.SUCCEEDED, f"job {job.state}: {job.last_error}"
    assert job.result is not None
    _check_output(vector, job.result)
    # The same bytes in-process.
    assert local.run(steps, data, debug_ops=bool(vector.get("debug_ops"))) == job.result

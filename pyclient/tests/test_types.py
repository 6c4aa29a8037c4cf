"""Steps, payloads and record conversion."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import tandem
from tandem._requests import batches, submit_request
from tandem._types import read_payload, to_steps
from tandem.v1 import errors_pb2, jobs_pb2


def test_step_forms() -> None:
    assert to_steps("hash.sha256") == [tandem.Step("hash.sha256")]
    assert to_steps({"op": "compress.zstd", "params": {"level": 3}}) == [
        tandem.Step("compress.zstd", level="3")
    ]
    steps = to_steps(["decompress.gzip", tandem.Step("image.thumbnail", max_width=64, fit=True)])
    assert [s.op for s in steps] == ["decompress.gzip", "image.thumbnail"]
    assert steps[1].params == {"max_width": "64", "fit": "true"}
    assert steps[1].to_dict() == {
        "op": "image.thumbnail",
        "params": {"max_width": "64", "fit": "true"},
    }


@pytest.mark.parametrize("bad", [[], [{"params": {}}], [42], 3.5])
def test_bad_steps(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        to_steps(bad)  # type: ignore[arg-type]


def test_payload_forms(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"\x00\x01")
    assert read_payload(b"ab") == b"ab"
    assert read_payload(bytearray(b"ab")) == b"ab"
    assert read_payload(memoryview(b"ab")) == b"ab"
    assert read_payload(f) == b"\x00\x01"
    assert read_payload(io.BytesIO(b"xyz")) == b"xyz"
    with open(f, "rb") as fh:
        assert read_payload(fh) == b"\x00\x01"


def test_str_payload_is_refused() -> None:
    with pytest.raises(TypeError, match="pathlib.Path"):
        read_payload("photo.jpg")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text mode"):
        read_payload(io.StringIO("x"))  # type: ignore[arg-type]


def test_submit_request_generates_idempotency_key() -> None:
    a = submit_request("hash.sha256", b"x")
    b = submit_request("hash.sha256", b"x")
    assert a.idempotency_key and b.idempotency_key and a.idempotency_key != b.idempotency_key
    c = submit_request(
        "hash.sha256",
        b"x",
        idempotency_key="k1",
        timeout=1.5,
        max_attempts=2,
        labels={"a": "1"},
        queue="q",
    )
    assert c.idempotency_key == "k1"
    assert c.timeout.seconds == 1 and c.timeout.nanos == 500_000_000
    assert (c.max_attempts, c.queue, dict(c.labels)) == (2, "q", {"a": "1"})


def test_batches_bounded_by_items_and_bytes() -> None:
    reqs = [(i, jobs_pb2.SubmitJobRequest(payload=b"x" * 1000)) for i in range(10)]
    assert [len(b) for b in batches(reqs, max_items=4)] == [4, 4, 2]
    assert [len(b) for b in batches(reqs, max_items=100, max_bytes=2600)] == [2, 2, 2, 2, 2]
    big = [(0, jobs_pb2.SubmitJobRequest(payload=b"x" * 5000))]
    assert [len(b) for b in batches(big, max_bytes=100)] == [1]


def test_job_from_proto() -> None:
    msg = jobs_pb2.Job(id="j1", queue="q", state=jobs_pb2.JOB_STATE_DEAD, attempt=3, max_attempts=3)
    msg.last_error.CopyFrom(
        errors_pb2.Error(code=14, reason=errors_pb2.COMPUTE_UNAVAILABLE, message="down")
    )
    a = msg.attempts.add(number=1)
    a.error.CopyFrom(errors_pb2.Error(code=14, reason=errors_pb2.COMPUTE_UNAVAILABLE))
    msg.attempts.add(number=2)
    msg.created_at.FromSeconds(1_700_000_000)
    msg.timeout.FromMilliseconds(1500)
    job = tandem.Job.from_proto(msg)
    assert job.state is tandem.JobState.DEAD and job.done
    assert isinstance(job.last_error, tandem.Unavailable)
    assert job.attempts[0].error is not None and job.attempts[1].error is None
    assert job.created_at is not None and job.created_at.year == 2023
    assert job.timeout == pytest.approx(1.5)
    assert job.result is None
    d = job.to_dict()
    assert d["state"] == "DEAD" and d["last_error"]["reason"] == "COMPUTE_UNAVAILABLE"


def test_job_states_terminal() -> None:
    terminal = {s for s in tandem.JobState if s.terminal}
    assert terminal == {
        tandem.JobState.SUCCEEDED,
        tandem.JobState.FAILED,
        tandem.JobState.DEAD,
        tandem.JobState.CANCELLED,
    }


def test_retry_policy_backoff_bounds() -> None:
    p = tandem.RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=0.3)
    for attempt in range(1, 10):
        assert 0 <= p.backoff(None, attempt) <= 0.3
    over = tandem.Overloaded("full", retry_after=0.5)
    assert p.backoff(over, 1) >= 0.5
    assert p.should_retry(tandem.Unavailable("x"), 3)
    assert not p.should_retry(tandem.Unavailable("x"), 4)
    assert not p.should_retry(tandem.InvalidJob("x"), 1)
    with pytest.raises(ValueError):
        tandem.RetryPolicy(max_attempts=0)


def test_package_is_typed_and_curated() -> None:
    import importlib.resources

    assert importlib.resources.files("tandem").joinpath("py.typed").is_file()
    assert set(tandem.__all__) <= set(dir(tandem))
    assert issubclass(tandem.JobFailed, tandem.TandemError)
    for name in tandem.__all__:
        obj = getattr(tandem, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


def test_channel_target() -> None:
    from tandem._requests import channel_target

    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])
    assert channel_target("orch:50051") == ("orch:50051", [])
    target, opts = channel_target("127.0.0.1:1, 127.0.0.1:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert ("grpc.lb_policy_name", "round_robin") in opts
    assert channel_target("dns:///orch:50051")[0] == "dns:///orch:50051"
    with pytest.raises(ValueError):
        channel_target("a:1,b:2")


def test_bare_resource_exhausted_is_not_retried() -> None:
    p = tandem.RetryPolicy()
    assert not p.should_retry(tandem.Overloaded("Received message larger than max"), 1)
    assert p.should_retry(tandem.Overloaded("full", reason="QUEUE_FULL"), 1)
    assert p.should_retry(tandem.Overloaded("busy", retry_after=0.1), 1)

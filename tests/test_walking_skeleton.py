"""The thin path: a job through nats-server, compute and orchestrator."""

from __future__ import annotations

import hashlib

import pytest

import tandem
from harness import Stack
from tandem import local


def test_sha256_through_the_stack_equals_hashlib_and_native(client: tandem.Client) -> None:
    data = bytes(range(256)) * 4096 + b"tandem"
    handle = client.submit("hash.sha256", data)
    assert handle.id
    digest = handle.result(timeout=60)
    assert digest == hashlib.sha256(data).digest()
    if not local.available():
        pytest.fail("tandem._native is not importable: install the package (make build)")
    assert local.run("hash.sha256", data) == digest


def test_job_record_after_success(client: tandem.Client) -> None:
    handle = client.submit("hash.sha256", b"abc", labels={"test": "record"})
    job = handle.wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED
    assert job.result == hashlib.sha256(b"abc").digest()
    again = client.get(handle.id)
    assert again.state is tandem.JobState.SUCCEEDED
    assert again.labels.get("test") == "record"
    assert again.payload_size == 3
    assert again.result_size == 32
    assert again.attempt >= 1


def test_services_are_healthy(stack: Stack) -> None:
    stack.assert_healthy()

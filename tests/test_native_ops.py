"""A team's own Rust op, through the whole stack: the example compute binary
(compute-rs/crates/example-acme-compute, `acme-compute`: every built-in op
plus `acme.invert`) runs in place of tandem-compute under a real
orchestrator; its op is validated at submit from ListOps, runs in pipelines
with built-in ops, and gets the same limits and errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import tandem
from harness import ROOT, Stack

ACME = os.environ.get("TANDEM_ACME_COMPUTE_BIN") or str(
    ROOT / "compute-rs/target/release/acme-compute"
)


@pytest.fixture
def acme_stack(new_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch) -> Stack:
    assert Path(ACME).is_file(), f"no acme-compute at {ACME}: `make build` builds it"
    monkeypatch.setenv("TANDEM_COMPUTE_BIN", ACME)
    return new_stack()


def test_a_library_op_through_the_stack(acme_stack: Stack) -> None:
    client = acme_stack.client()
    spec = client.ops().get("acme.invert")
    assert spec is not None and spec.provider == "compute"
    assert [p.name for p in spec.params] == ["mask"]

    data = bytes(range(256)) * 4
    inverted = bytes(b ^ 0x0F for b in data)
    # Alone, then mixed with built-in ops in one compute call.
    assert client.submit(tandem.Step("acme.invert", mask=15), data).result(timeout=60) == inverted
    steps = [tandem.Step("acme.invert", mask=15), tandem.Step("hash.sha256")]
    assert client.submit(steps, data).result(timeout=60) == hashlib.sha256(inverted).digest()
    steps = [
        tandem.Step("compress.zstd"),
        tandem.Step("decompress.zstd"),
        tandem.Step("acme.invert"),
    ]
    assert client.submit(steps, data).result(timeout=60) == bytes(b ^ 0xFF for b in data)


def test_a_library_op_gets_the_same_validation(acme_stack: Stack) -> None:
    client = acme_stack.client()
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit(tandem.Step("acme.invert", mask=256), b"x")
    assert info.value.reason == "PARAM_OUT_OF_RANGE"
    assert (
        info.value.metadata.get("param") == "mask"
        and info.value.metadata.get("limit") == "[0, 255]"
    )
    with pytest.raises(tandem.InvalidJob) as info:
        client.submit(tandem.Step("acme.invert", shift=1), b"x")
    assert info.value.reason == "PARAM_INVALID"
    # The built-in ops are all still there.
    assert (
        client.submit("hash.sha256", b"abc").result(timeout=60) == hashlib.sha256(b"abc").digest()
    )

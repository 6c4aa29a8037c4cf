"""tandem.local (the native module) against the shared vectors, and its
errors mapped to the same exception tree as the client's."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import tandem
from tandem import local

VECTORS = Path(__file__).resolve().parents[2] / "testdata" / "vectors.json"

pytestmark = pytest.mark.skipif(not local.available(), reason="tandem._native is not built")


def _vectors() -> list[Any]:
    if not VECTORS.exists():
        return [pytest.param(None, id="vectors.json-missing")]
    return [pytest.param(v, id=v["name"]) for v in json.loads(VECTORS.read_text())["vectors"]]


@pytest.mark.parametrize("vector", _vectors())
def test_vector(vector: dict[str, Any] | None) -> None:
    if vector is None:
        pytest.fail(f"{VECTORS} does not exist")
    data = base64.b64decode(vector.get("input_b64", ""))
    kwargs = {"attempt": int(vector.get("attempt", 0)), "debug_ops": bool(vector.get("debug_ops"))}
    if not vector["steps"]:
        with pytest.raises(ValueError):  # the Python API refuses an empty pipeline itself
            local.run(vector["steps"], data, **kwargs)
        return
    if "expected_error" in vector:
        want = vector["expected_error"]
        with pytest.raises(tandem.TandemError) as info:
            local.run(vector["steps"], data, **kwargs)
        err = info.value
        assert err.reason == want["reason"]
        if "code" in want:
            assert err.code is not None and err.code.value[0] == want["code"]
        if "message" in want:
            assert err.message == want["message"]
        return
    out = local.run(vector["steps"], data, **kwargs)
    if "expected_b64" in vector:
        assert out == base64.b64decode(vector["expected_b64"])
    else:
        assert json.loads(out) == vector["expected_json"]


def test_errors_are_the_client_exception_tree() -> None:
    with pytest.raises(tandem.InvalidJob) as info:
        local.run(tandem.Step("compress.zstd", level=40), b"x")
    assert info.value.reason == "PARAM_OUT_OF_RANGE"
    assert info.value.metadata.get("param") == "level"
    assert type(info.value.__cause__).__name__ == "TransformError"


def test_payload_forms_and_catalogue(tmp_path: Path) -> None:
    f = tmp_path / "in"
    f.write_bytes(b"abc")
    assert local.run("hash.sha256", f) == hashlib.sha256(b"abc").digest()
    ops = local.ops()
    assert "hash.sha256" in ops.names() and not any(o.debug for o in ops)
    assert any(o.debug for o in local.ops(debug_ops=True))
    limits = local.limits()
    assert limits is not None and limits.max_request_bytes > 0

"""The user-op workloads: Tandem's Python ops give what Celery's tasks give.

Celery is not in the main venv: its app module is imported with a stand-in
``celery`` module whose task decorator returns the function as it is, so the
tasks' own bodies run here, in this process.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import user_ops
import workloads


class _FakeConf:
    def update(self, *args: Any, **kwargs: Any) -> None:
        pass


class _FakeCelery:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.conf = _FakeConf()

    def task(self, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return lambda fn: fn


@pytest.fixture
def celery_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    fake = types.ModuleType("celery")
    fake.Celery = _FakeCelery  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "celery", fake)
    monkeypatch.delitem(sys.modules, "celery_app", raising=False)
    monkeypatch.setenv("BENCH_CELERY_MODE", "reliable")
    yield importlib.import_module("celery_app")
    sys.modules.pop("celery_app", None)


def run_op(workload: str, data: bytes) -> bytes:
    """The workload's pipeline (one Python op) run as the worker runs it:
    params parsed from their wire strings, str results sent as UTF-8."""
    [step] = workloads.plan()[workload].steps_as_dicts()
    op = user_ops.worker.get(step["op"])
    assert op is not None, f"user_ops serves no {step['op']}"
    out = op.fn(data, **op.kwargs(step["params"]))
    return out.encode() if isinstance(out, str) else bytes(out)


def test_sha256_op_equals_the_celery_task(celery_app: types.ModuleType) -> None:
    for data in workloads.tiny_payloads(5):
        task = celery_app.sha256(data)
        assert task == hashlib.sha256(data).hexdigest()
        assert run_op("user-tiny", data) == task.encode()


def test_pillow_op_equals_the_celery_task(celery_app: types.ModuleType) -> None:
    from PIL import Image

    spec = workloads.plan()["user-thumbnails"]
    jpeg = workloads.render_jpeg(0)
    task = celery_app.thumbnail(jpeg, **spec.celery_kwargs)
    got = run_op("user-thumbnails", jpeg)
    assert got == task
    with Image.open(io.BytesIO(got)) as im:
        assert im.format == "PNG"
        assert max(im.size) == workloads.THUMB_BOX
        # Aspect ratio kept (16:9 → 256×144).
        assert im.size == (256, 144)


def test_ops_are_served_by_the_process_pool() -> None:
    # The pool's children import each op by module and name.
    user_ops.worker.check_picklable()
    names = {op.name for op in user_ops.worker.ops}
    for w in ("user-tiny", "user-thumbnails"):
        for step in workloads.plan()[w].steps_as_dicts():
            assert step["op"] in names
            op = user_ops.worker.get(step["op"])
            assert op is not None and not op.is_async
            declared = {p.name for p in op.signature.params}
            # The driver's param resolution keeps every param (none dropped).
            assert workloads.resolve_params(step["params"], declared) == step["params"]

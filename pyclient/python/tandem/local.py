"""Run transforms in-process through ``tandem._native``, the same Rust core
the compute service runs, with byte-identical results::

    import tandem.local
    digest = tandem.local.run("hash.sha256", b"hello")
    thumb = tandem.local.run([{"op": "image.thumbnail", "params": {"max_width": "64"}}], png)

Errors are the same typed exceptions the client raises (``InvalidJob`` for
an unknown op, bad params, corrupt input...).
"""

from __future__ import annotations

import importlib
from typing import Any

from tandem._errors import TandemError, from_native_error
from tandem._types import Limits, Ops, OpSpec, Payload, StepsLike, read_payload, to_steps

__all__ = ["run", "ops", "limits", "available"]


def _native() -> Any:
    try:
        native = importlib.import_module("tandem._native")
    except ImportError as err:  # pragma: no cover - depends on the build
        raise TandemError(
            "the native module tandem._native is not built: install the package "
            "with `pip install ./pyclient` (maturin builds it)",
            cause=err,
        ) from err
    return native


def available() -> bool:
    """True when ``tandem._native`` can be imported."""
    try:
        _native()
    except TandemError:
        return False
    return True


def run(steps: StepsLike, data: Payload, *, attempt: int = 0, debug_ops: bool = False) -> bytes:
    """Runs a pipeline over ``data`` in this process and returns the output.

    ``steps`` takes the same forms as :meth:`tandem.Client.submit`. The GIL
    is released while the Rust code runs, so threads run transforms in
    parallel. ``debug_ops`` enables the test-only ``debug.*`` ops;
    ``attempt`` is what ``debug.fail`` sees as the attempt number.

    Raises:
        InvalidJob: unknown op, bad params, corrupt input, output too large.
        TandemError: the native module is missing, or another error.
    """
    native = _native()
    step_dicts = [s.to_dict() for s in to_steps(steps)]
    payload = read_payload(data)
    try:
        out = native.run(step_dicts, payload, attempt=attempt, debug_ops=debug_ops)
    except native.TransformError as err:
        raise from_native_error(err) from err
    return bytes(out)


def ops(*, debug_ops: bool = False) -> Ops:
    """The op catalogue of the native module, with its limits."""
    native = _native()
    specs = [OpSpec.from_dict(d) for d in native.list_ops(debug_ops)]
    return Ops(ops=specs, limits=limits())


def limits() -> Limits | None:
    """The native module's limits (same fields as the service's)."""
    native = _native()
    raw = dict(native.limits())
    fields = Limits.__dataclass_fields__
    try:
        return Limits(**{k: int(raw.get(k, 0) or 0) for k in fields})
    except (TypeError, ValueError):
        return None

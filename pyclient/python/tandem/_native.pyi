"""Type stubs for ``tandem._native``, the Rust core (compute-rs/crates/tandem-py).

The same ops as the compute service, byte for byte; the GIL is released while
an op runs. Owned by the compute-rs engineer.
"""

from typing import Literal, Mapping, Sequence, TypedDict

from typing_extensions import NotRequired

__version__: str

class StepDict(TypedDict):
    op: str
    # Values are strings; int and bool are accepted and converted
    # (True -> "true", 3 -> "3").
    params: NotRequired[Mapping[str, str | int | bool] | None]

class ParamInfo(TypedDict):
    name: str
    type: Literal["int", "enum", "bool", "string"]
    description: str
    default: str
    required: bool
    min: int
    max: int
    choices: list[str]

class OpInfo(TypedDict):
    name: str
    description: str
    params: list[ParamInfo]
    output_content_type: str
    output_encoding: str
    debug: bool

class LimitsInfo(TypedDict):
    max_request_bytes: int
    max_output_bytes: int
    max_steps: int
    max_batch_items: int
    max_image_pixels: int
    max_image_dimension: int
    workers: int
    queue_depth: int

class TransformError(Exception):
    """A transform failed; mirrors the gRPC status the compute service returns."""

    reason: str
    """ErrorReason name, e.g. "UNKNOWN_OP", "PARAM_OUT_OF_RANGE"."""
    code: int
    """gRPC status code number (3 = INVALID_ARGUMENT, ...)."""
    message: str
    """The same text as the gRPC status message."""
    metadata: dict[str, str]
    """ErrorInfo metadata: "step", "op", "param", "limit", "actual", ..."""

def run(
    steps: Sequence[StepDict | Mapping[str, object]],
    data: bytes | bytearray,
    *,
    attempt: int = 0,
    debug_ops: bool = False,
) -> bytes:
    """Run a pipeline over ``data``; return the last step's output.

    Raises TransformError for every transform failure, TypeError for a
    malformed ``steps`` argument.
    """

def list_ops(debug_ops: bool = False) -> list[OpInfo]:
    """Every op with its params, like the gRPC ListOps."""

def limits() -> LimitsInfo:
    """The limits the native module enforces (workers/queue_depth are 0)."""

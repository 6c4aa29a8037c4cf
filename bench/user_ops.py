"""The benchmark's user ops: Python functions served by Tandem's op worker.

run.py starts, for the user-* workloads, next to each Tandem stack::

    PYTHONPATH=bench tandem worker user_ops:worker --pool process \\
        --concurrency CORES --nats-url nats://127.0.0.1:PORT

The op bodies are bench/transforms.py's, the very functions Celery's
``bench.sha256`` and ``bench.thumbnail`` tasks call (bench/celery_app.py), so
Tandem's Python worker and Celery's prefork worker run the same code.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

import tandem

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transforms  # noqa: E402

worker = tandem.Worker("bench")


@worker.op("bench.sha256", version="1", content_type="text/plain")
def sha256(data: bytes) -> str:
    """The SHA-256 of the input as lowercase hex (hashlib), as Celery's tiny task."""
    return transforms.sha256_hex(data)


@worker.op("bench.thumbnail_pillow", version="1", content_type="image/png")
def thumbnail_pillow(
    data: bytes,
    *,
    box: Annotated[int, tandem.Range(1, 8192), "longest side in pixels"] = 256,
    fmt: Literal["png", "jpeg", "webp"] = "png",
) -> bytes:
    """A thumbnail with Pillow's Image.thumbnail (Lanczos), as Celery's thumbnail task."""
    return transforms.pillow_thumbnail(data, box, fmt)

"""The Celery side of the benchmark: the same three transforms as Tandem.

Configured from the environment (set by run.py):

  BENCH_REDIS_URL     redis://127.0.0.1:PORT/0 (broker and result backend)
  BENCH_CELERY_MODE   "reliable": acks_late, prefetch multiplier 1,
                      reject on worker loss (Celery's documented settings for
                      not losing tasks); "fast": Celery's defaults for acking
                      (ack on receipt) with a deep prefetch, the fastest
                      settings that still deliver every result.
  BENCH_CONCURRENCY   prefork worker processes (default: cores)

Both modes keep the Redis result backend on (the benchmark waits for results)
and use msgpack, which carries bytes natively (JSON would need base64).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transforms  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MODE = os.environ.get("BENCH_CELERY_MODE", "reliable")
QUEUE = "bench"

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)

_common = dict(
    task_serializer="msgpack",
    result_serializer="msgpack",
    accept_content=["msgpack"],
    result_accept_content=["msgpack"],
    task_default_queue=QUEUE,
    worker_concurrency=int(os.environ.get("BENCH_CONCURRENCY", os.cpu_count() or 1)),
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    task_track_started=False,
)

if MODE == "reliable":
    app.conf.update(
        _common,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_reject_on_worker_lost=True,
        broker_transport_options={"visibility_timeout": 3600},
    )
elif MODE == "fast":
    app.conf.update(
        _common,
        task_acks_late=False,
        worker_prefetch_multiplier=64,
        worker_disable_rate_limits=True,
    )
else:
    raise SystemExit(f"BENCH_CELERY_MODE must be reliable or fast, not {MODE!r}")


@app.task(name="bench.sha256")
def sha256(data: bytes) -> str:
    # The same function Tandem's Python op bench.sha256 runs (bench/user_ops.py).
    return transforms.sha256_hex(data)


@app.task(name="bench.thumbnail")
def thumbnail(data: bytes, box: int = 256, fmt: str = "png") -> bytes:
    # Pillow's Image.thumbnail (bench/transforms.py); Tandem's Python op
    # bench.thumbnail_pillow runs the same function.
    return transforms.pillow_thumbnail(data, box, fmt)


_zstd_cache: dict[int, Any] = {}


@app.task(name="bench.zstd")
def zstd(data: bytes, level: int = 3) -> bytes:
    import zstandard

    c = _zstd_cache.get(level)
    if c is None:
        c = _zstd_cache[level] = zstandard.ZstdCompressor(level=level)
    out: bytes = c.compress(data)
    return out

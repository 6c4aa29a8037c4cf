"""Example ops for tests/test_workers.py, served by real `tandem worker
workers_fixture:worker` processes (the test puts tests/ on PYTHONPATH).

Each op is small and deterministic so a test can compute the expected bytes
itself; the slow ones report progress and honour ``ctx.cancelled`` except
``fixture.spin``, which holds the GIL in a busy loop on purpose.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
import time
from typing import Annotated, Literal

import tandem

worker = tandem.Worker("fixture")


@worker.op(
    "fixture.gunzip_upper",
    description="Gunzips the input and upper-cases it.",
    version="1",
    content_type="text/plain",
)
def gunzip_upper(data: bytes) -> bytes:
    return gzip.decompress(data).upper()


@worker.op("fixture.upper_async", content_type="text/plain")
async def upper_async(data: bytes, *, repeat: Annotated[int, tandem.Range(1, 4)] = 1) -> str:
    """Upper-cases UTF-8 text, on the event loop."""
    await asyncio.sleep(0)
    return data.decode().upper() * repeat


@worker.op("fixture.params", content_type="application/json")
def params(
    data: bytes,
    *,
    level: Annotated[int, tandem.Range(1, 9)] = 5,
    mode: Literal["fast", "small"] = "fast",
    flag: bool = False,
    label: Annotated[str, tandem.MaxLen(8), "a short label"] = "",
    count: int | None = None,
) -> str:
    """Echoes its parsed params as JSON (types included)."""
    return json.dumps(
        {
            "level": level,
            "mode": mode,
            "flag": flag,
            "label": label,
            "count": count,
            "types": [type(v).__name__ for v in (level, mode, flag, label)],
        },
        sort_keys=True,
    )


@worker.op("fixture.sleep")
def sleep(
    data: bytes, *, ms: Annotated[int, tandem.Range(0, 600_000)] = 100, ctx: tandem.StepContext
) -> bytes:
    """Sleeps ``ms`` while reporting progress; stops early when cancelled;
    returns the input."""
    end = time.monotonic() + ms / 1000
    ctx.progress(0.0, f"pid {os.getpid()}")
    while time.monotonic() < end:
        if ctx.cancelled:
            return b"cancelled"
        left = end - time.monotonic()
        ctx.progress(1 - left / (ms / 1000 or 1), f"pid {os.getpid()} sleeping")
        time.sleep(min(0.02, max(left, 0)))
    ctx.progress(1.0, "done")
    return data


@worker.op("fixture.spin")
def spin(
    data: bytes, *, seconds: Annotated[int, tandem.Range(1, 300)] = 120, ctx: tandem.StepContext
) -> bytes:
    """Burns CPU holding the GIL (a pure-Python loop with a huge switch
    interval), never looking at ctx.cancelled: only a hard stop ends it."""
    ctx.progress(0.0, f"pid {os.getpid()}")
    sys.setswitchinterval(1000)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return str(n).encode()


@worker.op("fixture.fail")
def fail(
    data: bytes,
    *,
    mode: Literal["permanent", "retryable", "crash"] = "permanent",
    until_attempt: Annotated[int, tandem.Range(0, 100)] = 0,
    ctx: tandem.StepContext,
) -> bytes:
    """Fails while the attempt is <= until_attempt (0: always), else returns
    the input: PermanentError, RetryableError, or a plain exception."""
    if until_attempt and ctx.attempt > until_attempt:
        return data
    if mode == "permanent":
        raise tandem.PermanentError("the input is no good", metadata={"why": "fixture"})
    if mode == "retryable":
        raise tandem.RetryableError(f"flaky dependency (attempt {ctx.attempt})")
    raise KeyError("no such thing")


@worker.op("fixture.reverse")
def reverse(data: bytes) -> bytes:
    """The input's bytes in reverse order (any size: big ones go through the
    object store)."""
    return data[::-1]


#: A second worker whose op nobody serves unless a test starts it
#: (`tandem worker workers_fixture:other`).
other = tandem.Worker("other")


@other.op("fixture_other.echo")
def echo(data: bytes) -> bytes:
    """Returns the input."""
    return data


#: Served with `--pool thread` by the test of hard stops in the thread pool.
threads = tandem.Worker("threads")


@threads.op("fixture_threads.block")
def block(
    data: bytes, *, seconds: Annotated[int, tandem.Range(1, 300)] = 60, ctx: tandem.StepContext
) -> bytes:
    """Blocks in time.sleep, never looking at ctx.cancelled (as a blocking
    call into a library would)."""
    ctx.progress(0.0, "blocking")
    time.sleep(seconds)
    return data

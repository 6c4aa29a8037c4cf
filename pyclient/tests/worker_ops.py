"""Op functions for test_worker.py's runner tests (a module the process
pool's children can import by name)."""

from __future__ import annotations

import os
import time

import tandem

worker = tandem.Worker("unit")


@worker.op("unit.upper")
def upper(data: bytes, *, times: int = 1) -> bytes:
    return data.upper() * times


@worker.op("unit.progress")
def progress(data: bytes, *, ctx: tandem.StepContext) -> bytes:
    ctx.progress(0.5, f"pid {os.getpid()}")
    while not ctx.cancelled:
        time.sleep(0.005)
    return b"saw the cancel"


@worker.op("unit.stubborn")
def stubborn(data: bytes, *, ctx: tandem.StepContext) -> bytes:
    ctx.progress(0.1, f"pid {os.getpid()}")
    while True:  # ignores ctx.cancelled
        pass


@worker.op("unit.boom")
def boom(data: bytes) -> bytes:
    raise ValueError("bad things")


@worker.op("unit.exit")
def exits(data: bytes) -> bytes:
    os._exit(3)

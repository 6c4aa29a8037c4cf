"""The process pool's child: runs sync op functions one at a time, in a
process of its own, so CPU-bound Python that holds the GIL never stalls
the worker's event loop (its heartbeats).

Protocol over its pipe: the child sends ``("ready", pid)`` (or ``("failed",
text)``) once set up, then for each task ``(fn, data, kwargs, info)`` one
:data:`tandem._worker.outcome.Outcome`; ``None`` asks it to exit, as does
the pipe closing. The cancel flag and progress travel through shared
memory (:class:`SharedSignals`), so a busy loop that never yields can still
read the one and write the other; the parent stops a child that ignores
the flag by killing it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["SharedSignals", "child_main"]

_MESSAGE_BYTES = 256


class SharedSignals:
    """A slot's cancel flag and latest progress in shared memory.

    The child writes progress under a sequence counter (odd while writing),
    and the parent reads it back when the counter is even and unchanged,
    so neither side ever waits on a lock a killed process could hold.
    """

    def __init__(self, mp_context: Any) -> None:
        self._cancel = mp_context.RawValue(ctypes.c_bool, False)
        self._seq = mp_context.RawValue(ctypes.c_uint64, 0)
        self._fraction = mp_context.RawValue(ctypes.c_double, 0.0)
        self._length = mp_context.RawValue(ctypes.c_uint16, 0)
        self._message = mp_context.RawArray(ctypes.c_char, _MESSAGE_BYTES)

    # -- the child's side (tandem._worker.api.Signals)

    def cancelled(self) -> bool:
        return bool(self._cancel.value)

    def report(self, fraction: float, message: str) -> None:
        data = message.encode("utf-8")[:_MESSAGE_BYTES]
        self._seq.value += 1
        self._fraction.value = fraction
        ctypes.memmove(self._message, data, len(data))
        self._length.value = len(data)
        self._seq.value += 1

    # -- the parent's side

    def reset(self) -> None:
        """Before a task: not cancelled, no progress."""
        self._cancel.value = False
        self._seq.value = 0

    def cancel(self) -> None:
        self._cancel.value = True

    def latest(self) -> tuple[float, str] | None:
        for _ in range(100):
            seq = self._seq.value
            if seq == 0:
                return None
            if seq % 2:
                continue
            fraction = float(self._fraction.value)
            data = bytes(self._message.raw[: self._length.value])
            if self._seq.value == seq:
                return fraction, data.decode("utf-8", errors="ignore")
        return None


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this child when the worker dies (even by SIGKILL), so
    no orphan goes on burning CPU."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)  # the worker is already gone


def child_main(
    conn: Connection,
    signals: SharedSignals,
    parent: int,
    log_level: str,
    log_static: dict[str, Any],
    modules: list[str],
) -> None:
    """Entry point of a pool process (multiprocessing spawn target)."""
    _die_with_parent(parent)
    # Ctrl-C, and a SIGTERM sent to the whole group or cgroup (systemd,
    # a terminal), reach this child too: the worker drains and decides when
    # a step is stopped (it SIGKILLs the child), so the step is not cut off
    # here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    import importlib

    from tandem._worker.logs import configure

    configure(log_level, **log_static, pid=os.getpid())
    try:
        for name in modules:
            importlib.import_module(name)
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which exits
        conn.send(("failed", f"importing the op modules failed: {type(err).__name__}: {err}"))
        return
    from tandem._tracing import attached
    from tandem._worker.api import StepContext, StepInfo
    from tandem._worker.logs import StepLogger
    from tandem._worker.outcome import Failure, call_sync, describe

    conn.send(("ready", os.getpid()))
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            task = pickle.loads(raw)
            if task is None:
                return
            fn, data, kwargs, ctx_arg, info = task
            assert isinstance(info, StepInfo)
            kwargs = dict(kwargs)
            if ctx_arg:
                kwargs[ctx_arg] = StepContext(info, signals)
            log = StepLogger(logging.getLogger(f"tandem.op.{info.op}"), info.log_fields())
            with attached(info.traceparent):  # the step span, for the op's own spans
                result: Any = call_sync(fn, data, kwargs, log)
        except BaseException as err:  # noqa: BLE001 - an unpicklable task, a SystemExit...
            result = Failure("OP_ERROR", describe(err))
        try:
            conn.send(result)
        except (EOFError, OSError):
            return
        except Exception as err:  # noqa: BLE001 - e.g. an unpicklable Failure metadata
            conn.send(Failure("OP_ERROR", describe(err)))

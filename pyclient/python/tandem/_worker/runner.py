"""The three ways a step's function runs, behind one interface
(:class:`Runner`): on the event loop (``async def`` ops), in a thread, or in
a pool of child processes. Each returns a :class:`Running`: the outcome to
await, the step's signals (cancel flag, progress) and how to stop it hard.

Hard stops differ, and this is where: an asyncio task is cancelled; a child
process is terminated and replaced by a fresh one; a thread cannot be
stopped, so its result is abandoned (the step is answered at once and the
thread's eventual return value dropped, as the log says).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tandem._tracing import attached
from tandem._worker.api import OpDef, StepContext, StepInfo
from tandem._worker.child import SharedSignals, child_main
from tandem._worker.logs import LOGGER, StepLogger
from tandem._worker.outcome import Failure, Outcome, call_async, call_sync, describe

__all__ = ["Running", "Runner", "AsyncRunner", "ThreadRunner", "ProcessRunner", "LocalSignals"]


class MainSignals(Protocol):
    """The worker's side of a step's signals."""

    def cancel(self) -> None: ...

    def latest(self) -> tuple[float, str] | None: ...


class LocalSignals:
    """Signals of a step that runs in the worker's own process."""

    def __init__(self) -> None:
        self._cancel = threading.Event()
        self._progress: tuple[float, str] | None = None

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def report(self, fraction: float, message: str) -> None:
        self._progress = (fraction, message)

    def cancel(self) -> None:
        self._cancel.set()

    def latest(self) -> tuple[float, str] | None:
        return self._progress


@dataclass
class Running:
    """A started step."""

    outcome: asyncio.Future[Outcome]
    signals: MainSignals
    hard_stop: Callable[[], None]
    #: The pool process running it (process pool only).
    pid: int | None = None


def _log(info: StepInfo) -> StepLogger:
    return StepLogger(LOGGER.getChild("op").getChild(info.op), info.log_fields())


def _kwargs(op: OpDef, kwargs: dict[str, Any], info: StepInfo, signals: Any) -> dict[str, Any]:
    if op.signature.ctx_arg:
        return {**kwargs, op.signature.ctx_arg: StepContext(info, signals)}
    return kwargs


class Runner(Protocol):
    #: ``"async"``, ``"thread"`` or ``"process"``.
    kind: str

    async def start(self) -> None: ...

    async def begin(
        self, op: OpDef, data: bytes, kwargs: dict[str, Any], info: StepInfo
    ) -> Running: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- async


class AsyncRunner:
    """``async def`` ops: tasks on the worker's loop (they must not block it)."""

    kind = "async"

    async def start(self) -> None:
        pass

    async def begin(
        self, op: OpDef, data: bytes, kwargs: dict[str, Any], info: StepInfo
    ) -> Running:
        signals = LocalSignals()

        async def call() -> Outcome:
            with attached(info.traceparent):  # the task's own context
                return await call_async(op.fn, data, _kwargs(op, kwargs, info, signals), _log(info))

        task = asyncio.get_running_loop().create_task(
            call(), name=f"tandem-step-{info.job_id}-{info.attempt}"
        )

        def hard_stop() -> None:
            task.cancel()

        return Running(task, signals, hard_stop)

    async def close(self) -> None:
        pass


# ---------------------------------------------------------------- threads


class ThreadRunner:
    """Sync ops in daemon threads of the worker process (for blocking I/O:
    code that holds the GIL stalls the worker's heartbeats here; use the
    process pool for it). Threads are reused; one abandoned by a hard stop
    is replaced, and ends whenever its function returns."""

    kind = "thread"

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    async def start(self) -> None:
        pass

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._loop, name="tandem-step", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()
            with self._lock:
                self._idle += 1

    async def begin(
        self, op: OpDef, data: bytes, kwargs: dict[str, Any], info: StepInfo
    ) -> Running:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        signals = LocalSignals()
        args = _kwargs(op, kwargs, info, signals)
        log = _log(info)

        def settle(outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        def job() -> None:
            with attached(info.traceparent):
                outcome = call_sync(op.fn, data, args, log)
            try:
                loop.call_soon_threadsafe(settle, outcome)
            except RuntimeError:
                pass  # the loop is closed: the worker is exiting

        def abandon() -> None:
            log.warning(
                "a thread cannot be stopped: the step is answered now and whatever its "
                "function returns later is discarded (use --pool process for code that "
                "ignores ctx.cancelled)"
            )
            # The thread rejoins the pool when (if) its function returns;
            # until then new steps get new threads.
            settle(Failure("CANCELLED", "abandoned"))

        self._submit(job)
        return Running(fut, signals, abandon)

    async def close(self) -> None:
        pass  # daemon threads: nothing to wait for


# ---------------------------------------------------------------- processes


@dataclass(eq=False)
class _Slot:
    """One pool process and its pipe and shared signals."""

    proc: Any
    conn: Any
    signals: SharedSignals
    pid: int = 0
    dead: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, task: tuple[Any, ...]) -> Outcome:
        """Sends a task and waits for its outcome (in an I/O thread)."""
        try:
            payload = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:  # noqa: BLE001 - e.g. a param value that does not pickle
            return Failure("OP_ERROR", f"cannot send the step to a pool process: {describe(err)}")
        try:
            self.conn.send_bytes(payload)
            raw = self.conn.recv_bytes()
        except (EOFError, OSError):
            self.dead = True
            self.proc.join(5)
            code = self.proc.exitcode
            how = f"was killed by signal {-code}" if code and code < 0 else f"exited ({code})"
            return Failure("OP_ERROR", f"WorkerProcessDied: the pool process {how}")
        try:
            result: Outcome = pickle.loads(raw)
            return result
        except Exception as err:  # noqa: BLE001 - an output that does not unpickle here
            return Failure("OP_ERROR", f"cannot read the pool process's answer: {describe(err)}")

    def stop(self, grace: float = 0.0) -> None:
        """Waits up to ``grace`` for the process to exit, kills it (it
        ignores SIGTERM and SIGINT) and reaps it."""
        self.dead = True
        if grace and self.proc.is_alive():
            self.proc.join(grace)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()


class ProcessRunner:
    """Sync ops in ``size`` child processes (multiprocessing spawn), one step
    each at a time. A child stopped hard (SIGKILL: cancel past the grace,
    drain deadline) or dead is replaced by a fresh one."""

    kind = "process"

    def __init__(
        self, size: int, modules: list[str], log_level: str, log_static: dict[str, Any]
    ) -> None:
        self.size = size
        self.modules = modules
        self.log_level = log_level
        self.log_static = log_static
        self._mp = multiprocessing.get_context("spawn")
        # One thread per busy slot waits on its pipe; a few more start and
        # stop processes.
        self._io = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * size + 2, thread_name_prefix="tandem-pool"
        )
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots: set[_Slot] = set()
        self._closing = False

    def pids(self) -> list[int]:
        return sorted(s.pid for s in self._slots if not s.dead)

    def _spawn(self) -> _Slot:
        parent, child = self._mp.Pipe(duplex=True)
        signals = SharedSignals(self._mp)
        proc = self._mp.Process(
            target=child_main,
            args=(child, signals, os.getpid(), self.log_level, self.log_static, self.modules),
            name="tandem-pool",
            daemon=True,
        )
        proc.start()
        child.close()
        slot = _Slot(proc, parent, signals)
        if not parent.poll(120):
            slot.stop()
            raise RuntimeError("a pool process did not start within 120 s")
        try:
            kind, value = parent.recv()
        except (EOFError, OSError):
            slot.stop()
            raise RuntimeError(f"a pool process exited during start-up ({proc.exitcode})") from None
        if kind != "ready":
            slot.stop()
            raise RuntimeError(str(value))
        slot.pid = int(value)
        return slot

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        slots = await asyncio.gather(
            *(loop.run_in_executor(self._io, self._spawn) for _ in range(self.size)),
            return_exceptions=True,
        )
        errors = [s for s in slots if isinstance(s, BaseException)]
        for s in slots:
            if isinstance(s, _Slot):
                self._slots.add(s)
                self._idle.put_nowait(s)
        if errors:
            await self.close()
            raise errors[0]

    async def _replace(self, old: _Slot) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._io, old.stop)
        self._slots.discard(old)
        delay = 0.5
        while not self._closing:
            try:
                slot = await loop.run_in_executor(self._io, self._spawn)
            except Exception as err:  # noqa: BLE001 - logged; tried again with backoff
                LOGGER.error(
                    "starting a pool process failed; trying again", extra={"error": str(err)}
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._closing:
                await loop.run_in_executor(self._io, slot.stop)
                return
            self._slots.add(slot)
            self._idle.put_nowait(slot)
            LOGGER.info("pool process started", extra={"pool_pid": slot.pid, "replaces": old.pid})
            return

    async def begin(
        self, op: OpDef, data: bytes, kwargs: dict[str, Any], info: StepInfo
    ) -> Running:
        loop = asyncio.get_running_loop()
        slot = await self._idle.get()
        slot.signals.reset()
        task = (op.fn, data, kwargs, op.signature.ctx_arg, info)
        outcome = loop.run_in_executor(self._io, slot.call, task)
        log = _log(info)

        def done(_: Any) -> None:
            if slot.dead:
                loop.create_task(self._replace(slot))
            else:
                self._idle.put_nowait(slot)

        outcome.add_done_callback(done)

        def hard_stop() -> None:
            if slot.dead:
                return
            log.warning(
                "stopping the step's pool process (it did not stop within the grace period)",
                extra={"pool_pid": slot.pid},
            )
            slot.dead = True
            try:
                slot.proc.kill()
            except (OSError, ValueError):
                pass

        return Running(outcome, slot.signals, hard_stop, pid=slot.pid)

    async def close(self) -> None:
        """Stops every pool process (busy ones too)."""
        self._closing = True
        loop = asyncio.get_running_loop()

        idle: list[_Slot] = []
        while not self._idle.empty():
            idle.append(self._idle.get_nowait())

        def stop_all() -> None:
            for slot in idle:  # an idle child exits when asked
                try:
                    slot.conn.send(None)
                except (OSError, ValueError):
                    pass
            for slot in list(self._slots):
                slot.stop(grace=2.0 if slot in idle else 0.0)

        await loop.run_in_executor(self._io, stop_all)
        self._slots.clear()
        self._io.shutdown(wait=False, cancel_futures=True)

"""``tandem top``: a live terminal view of the queues and op workers of one
orchestrator, for people who live in a shell.

Every ``--interval`` seconds it asks ``ListQueues`` and ``ListWorkers`` and
redraws one frame (:func:`render`): a header with the address, the time and
totals; per queue its depth, jobs running, pool workers, completed/s (the
orchestrator's own rate), dead letters and whether it is paused; per live
op worker its steps in flight out of its concurrency. ``q`` or Ctrl-C
quits. A failed refresh shows the error and the next one tries again.

``--once`` prints one frame and exits (a failed call is the usual error
exit); ``--json`` prints each frame as one JSON document. When stdout is not
a terminal it prints one frame per interval, one after the other, like
``top -b``.
"""

from __future__ import annotations

import datetime as _dt
import os
import select
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Protocol

from tandem._client import Client
from tandem._errors import TandemError
from tandem._types import QueueInfo, WorkerInfo

__all__ = ["Frame", "fetch", "render", "frame_dict", "Keys", "run"]


@dataclass(frozen=True)
class Frame:
    """What one refresh saw. ``error`` is the call that failed, if one did
    (the lists then hold what came before it)."""

    address: str
    at: _dt.datetime
    queues: list[QueueInfo]
    workers: list[WorkerInfo]
    error: TandemError | None = None


def fetch(client: Client, address: str) -> Frame:
    """One frame from the orchestrator (never raises a TandemError: the
    frame carries it)."""
    at = _dt.datetime.now().astimezone()
    queues: list[QueueInfo] = []
    try:
        queues = client.queues()
        workers = client.workers()
    except TandemError as err:
        return Frame(address, at, queues, [], err)
    return Frame(address, at, queues, workers)


def _seen(frame: Frame, w: WorkerInfo) -> str:
    if w.last_heartbeat is None:
        return "-"
    return f"{max(0.0, (frame.at - w.last_heartbeat).total_seconds()):.1f}s ago"


def render(frame: Frame, hint: str = "") -> Any:
    """The frame as a rich renderable: header, queues, op workers, ``hint``."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    header = Text()
    header.append("tandem top", style="bold")
    header.append(f"  {frame.address}  {frame.at.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    parts.append(header)
    qs = frame.queues
    parts.append(
        Text(
            f"queues {len(qs)}  depth {sum(q.depth for q in qs)}  "
            f"running {sum(q.in_flight for q in qs)}  "
            f"completed {sum(q.completed_per_second for q in qs):.1f}/s  "
            f"dead letters {sum(q.dead_letters for q in qs)}  "
            f"op workers {len(frame.workers)}",
            style="dim" if frame.error else "",
        )
    )
    if frame.error is not None:
        parts.append(Text(f"refresh failed: {frame.error}", style="bold red"))

    queues = Table(title="queues", title_justify="left", expand=False)
    for col in ("queue", "depth", "running", "workers", "completed/s", "dead letters", "paused"):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for q in qs:
        queues.add_row(
            q.name,
            str(q.depth),
            str(q.in_flight),
            f"{q.workers} ({q.min_workers}-{q.max_workers})",
            f"{q.completed_per_second:.1f}",
            Text(str(q.dead_letters), style="red" if q.dead_letters else ""),
            Text("paused", style="yellow") if q.paused else "no",
        )
    parts.append(queues)

    if frame.workers:
        workers = Table(title="op workers", title_justify="left", expand=False)
        for col in ("worker", "ops", "pool", "running", "succeeded", "failed", "seen"):
            workers.add_column(
                col, justify="right" if col in ("running", "succeeded", "failed") else "left"
            )
        for w in frame.workers:
            workers.add_row(
                w.id + (" (draining)" if w.draining else ""),
                ", ".join(o.name for o in w.ops),
                w.pool,
                f"{w.in_flight}/{w.concurrency}",
                str(w.succeeded),
                str(w.failed),
                _seen(frame, w),
            )
        parts.append(workers)
    elif frame.error is None:
        parts.append(Text("no live op workers", style="dim"))
    if hint:
        parts.append(Text(hint, style="dim"))
    return Group(*parts)


def frame_dict(frame: Frame) -> dict[str, Any]:
    """The frame as a JSON-friendly dict."""
    err = frame.error
    return {
        "address": frame.address,
        "time": frame.at.isoformat(),
        "queues": [dict(q.__dict__) for q in frame.queues],
        "workers": [w.to_dict() for w in frame.workers],
        "error": None
        if err is None
        else {"type": type(err).__name__, "reason": err.reason, "message": err.message},
    }


# ---------------------------------------------------------------- keys


class Quit(Protocol):
    def quit_within(self, seconds: float) -> bool: ...


class Keys:
    """Reads ``q`` from a terminal without Enter while the view runs: the
    terminal is in cbreak mode (no echo, no line editing; Ctrl-C still
    interrupts) until the ``with`` ends. Not a terminal (or no termios):
    it only waits."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self._fd: int | None = None
        self._saved: Any = None

    def __enter__(self) -> Keys:
        try:
            import termios
            import tty

            if self.stream.isatty():
                fd = self.stream.fileno()
                self._saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)
                self._fd = fd
        except (ImportError, OSError, ValueError):
            self._fd = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._fd = None

    def quit_within(self, seconds: float) -> bool:
        """Waits ``seconds``; True as soon as ``q`` is pressed."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._fd is None:
                time.sleep(left)
                return False
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                typed = os.read(self._fd, 64)
                if not typed or b"q" in typed.lower():
                    return True  # q, or the terminal went away
        return False


# ---------------------------------------------------------------- the loop


def run(
    client: Client,
    address: str,
    *,
    interval: float,
    once: bool,
    as_json: bool,
    console: Any,
    keys: Quit | None = None,
) -> None:
    """Runs the view until ``q``; raises the error of a failed ``--once``
    and KeyboardInterrupt on Ctrl-C (the caller's normal end)."""
    import json

    def emit(frame: Frame) -> None:
        if as_json:
            console.file.write(json.dumps(frame_dict(frame)) + "\n")
            console.file.flush()
        else:
            console.print(render(frame))

    if once:
        frame = fetch(client, address)
        if frame.error is not None:
            raise frame.error
        emit(frame)
        return
    from rich.live import Live

    with Keys() if keys is None else _Given(keys) as k:
        if as_json or not console.is_terminal:
            while True:  # batch mode: frames one after the other
                emit(fetch(client, address))
                if k.quit_within(interval):
                    return
        hint = f"q: quit · every {interval:g} s"
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                live.update(render(fetch(client, address), hint), refresh=True)
                if k.quit_within(interval):
                    return


class _Given:
    """A key source given by the caller (tests), as a context manager."""

    def __init__(self, keys: Quit) -> None:
        self.keys = keys

    def __enter__(self) -> Quit:
        return self.keys

    def __exit__(self, *exc: object) -> None:
        pass

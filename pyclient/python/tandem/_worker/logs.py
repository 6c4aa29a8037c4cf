"""The worker's logs: JSON lines on stderr, one object per record, with the
step's ``job_id``, ``attempt``, ``step``, ``op``, ``trace_id`` and ``span_id``
when it logs about one, and what went wrong under ``error`` (the
orchestrator and compute log JSON lines with the same keys)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["JsonFormatter", "configure", "StepLogger", "LOGGER", "step_fields"]

#: The worker machinery's own logger; an op's ``ctx.logger`` is ``tandem.op.<name>``.
LOGGER = logging.getLogger("tandem.worker")

# Attributes every LogRecord has; anything else was passed as ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def step_fields(job_id: str, attempt: int, step: int, op: str, traceparent: str) -> dict[str, Any]:
    """The fields of every log line about one step: which step, and the
    trace id and span id of its span (the W3C ``traceparent`` it runs in)."""
    from tandem._tracing import ids_of

    return {"job_id": job_id, "attempt": attempt, "step": step, "op": op, **ids_of(traceparent)}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "msg", "logger", ...extra}`` per line; a logged
    exception adds ``error`` (``"Type: message"``, unless the call gave one)
    and ``traceback``."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            exc = record.exc_info[1]
            if exc is not None:
                out.setdefault("error", f"{type(exc).__name__}: {exc}")
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str | int = "info", **static: Any) -> None:
    """Makes the root logger write JSON lines to stderr at ``level`` (the
    worker owns its process, so user code's loggers log the same way)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


class StepLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose records carry a step's fields (merged with the call's
    own ``extra``)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs

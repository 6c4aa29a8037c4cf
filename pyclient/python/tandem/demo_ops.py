"""The demo's own op, written in Python: ``python -m tandem.demo`` serves it
with ``tandem worker tandem.demo_ops:worker`` and runs it after the Rust
``text.stats`` op in one pipeline. It is also the smallest complete example
of a worker module::

    tandem worker tandem.demo_ops:worker --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import json
from typing import Annotated

import tandem

worker = tandem.Worker("demo")


@worker.op("demo.summary", version="1", content_type="text/plain")
def summary(
    data: bytes,
    *,
    top: Annotated[int, tandem.Range(1, 10), "how many frequent words to name"] = 3,
    ctx: tandem.StepContext,
) -> str:
    """A one-line summary of a tandem.text_stats.v1 document (the output of
    text.stats)."""
    try:
        stats = json.loads(data)
        words, lines = int(stats["words"]), int(stats["lines"])
        terms = [(str(t["term"]), int(t["count"])) for t in stats.get("top_terms", [])]
    except (ValueError, KeyError, TypeError) as err:
        # Wrong input stays wrong: no retry.
        raise tandem.PermanentError(f"not a text.stats document: {err}") from None
    ctx.progress(0.5, "summarising")
    common = ", ".join(f"{term} ×{count}" for term, count in terms[:top])
    return f"{words} words on {lines} lines" + (f"; most used: {common}" if common else "")

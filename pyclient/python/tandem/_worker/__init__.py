"""Op workers: user code as a first-class op provider (``tandem worker
MODULE:OBJECT``). Cut by job:

* :mod:`.api` — :class:`Worker`, :class:`StepContext`, loading ``MODULE:OBJECT``
* :mod:`.schema` — param schema from type hints; parsing a step's strings
* :mod:`.outcome` — what a function returned or raised → output or error reason
* :mod:`.runtime` — the event loop: NATS, heartbeats, steps, cancel, drain
* :mod:`.runner` — where a function runs: event loop, threads or processes
* :mod:`.child` — the process pool's child process
* :mod:`.logs` — JSON-line logs
"""

from tandem._worker.api import OpDef, StepContext, Worker, load
from tandem._worker.runtime import WorkerConfig, run
from tandem._worker.schema import MaxLen, Param, Range

__all__ = [
    "Worker",
    "StepContext",
    "OpDef",
    "Range",
    "MaxLen",
    "Param",
    "WorkerConfig",
    "load",
    "run",
]

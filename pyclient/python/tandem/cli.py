"""The ``tandem`` command-line tool.

Exit codes (also in ``tandem --help``):

====  ==========================================================
0     success
1     a job did not succeed (FAILED, DEAD or CANCELLED), or some
      jobs of ``tandem map`` failed
2     bad command-line arguments
3     the request was rejected (invalid job, unknown op/queue/job,
      state conflict, missing or refused credentials)
4     the service is unavailable, overloaded, or a wait timed out
5     any other error
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from tandem._client import Client, JobHandle
from tandem._core import AUDIT_MAX_LIMIT, MAP_WINDOW, job_outcome
from tandem._errors import (
    Cancelled,
    Conflict,
    InvalidJob,
    JobFailed,
    NotFound,
    Overloaded,
    PermissionDenied,
    TandemError,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from tandem._requests import DEFAULT_ADDRESS
from tandem._security import SecurityError
from tandem._types import AuditEntry, AuditPage, Job, JobState, Step

__all__ = [
    "main",
    "EXIT_OK",
    "EXIT_JOB_FAILED",
    "EXIT_USAGE",
    "EXIT_REJECTED",
    "EXIT_UNAVAILABLE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_UNAVAILABLE = 4
EXIT_ERROR = 5
EXIT_INTERRUPTED = 130

EPILOG = """\
exit codes:
  0    success
  1    a job did not succeed (FAILED, DEAD, CANCELLED), or some map jobs failed
  2    bad command-line arguments
  3    request rejected (invalid job, unknown op/queue/job, state conflict,
       no valid token, or the token lacks the scope)
  4    service unavailable or overloaded, or a wait timed out
  5    any other error
  130  interrupted

environment:
  TANDEM_ADDRESS          orchestrator address (default 127.0.0.1:50051)
  TANDEM_COMPUTE_ADDRESS  compute address, used by `tandem ops` only when the
                          orchestrator does not serve ListOps itself
  TANDEM_TOKEN            bearer token (as --token; preferred: not visible in ps)
  TANDEM_CA               CA bundle of the server certificate (as --ca; turns TLS on)
  TANDEM_CERT, TANDEM_KEY client certificate and key for mTLS (as --cert, --key)
  TANDEM_TLS=1            TLS with the system's CA roots (as --tls)
  TANDEM_NATS_*, TANDEM_WORKER_*  `tandem worker` (see `tandem worker --help`)
"""


class UsageError(Exception):
    """A command-line mistake found after parsing (exit code 2)."""


def exit_code_for(err: BaseException) -> int:
    """The documented exit code for an exception."""
    if isinstance(err, JobFailed):
        return EXIT_JOB_FAILED
    if isinstance(err, Cancelled) and "job_id" in err.metadata:
        return EXIT_JOB_FAILED
    if isinstance(err, (InvalidJob, NotFound, Conflict, Unauthenticated, PermissionDenied)):
        return EXIT_REJECTED
    if isinstance(err, (Unavailable, Overloaded, Timeout)):
        return EXIT_UNAVAILABLE
    if isinstance(err, (UsageError, SecurityError)):
        return EXIT_USAGE
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_ERROR


# ---------------------------------------------------------------- step arguments


class _OpAction(argparse.Action):
    """``--op NAME`` appends a step; ``-p KEY=VALUE`` sets a param on the
    last step given before it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        steps = list(getattr(ns, "steps", None) or [])
        steps.append({"op": str(values), "params": {}})
        ns.steps = steps


class _ParamAction(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        text = str(values)
        if "=" not in text:
            parser.error(f"{option_string} expects KEY=VALUE, got {text!r}")
        key, value = text.split("=", 1)
        steps = list(getattr(ns, "steps", None) or [])
        if not steps:
            parser.error(f"{option_string} {text}: give --op before its params")
        steps[-1] = {"op": steps[-1]["op"], "params": {**steps[-1]["params"], key: value}}
        ns.steps = steps


def _add_steps(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline")
    g.add_argument(
        "--op",
        action=_OpAction,
        metavar="OP",
        help="an op; repeat for a pipeline (each --op runs on the previous output)",
    )
    g.add_argument(
        "-p",
        "--param",
        action=_ParamAction,
        metavar="KEY=VALUE",
        help="a parameter of the --op before it; repeatable",
    )
    g.add_argument(
        "--steps",
        dest="steps_json",
        metavar="JSON",
        help='the pipeline as JSON: [{"op": "...", "params": {...}}, ...]',
    )


def _steps(ns: argparse.Namespace) -> list[Step]:
    if ns.steps_json:
        if getattr(ns, "steps", None):
            raise UsageError("give either --op or --steps, not both")
        try:
            raw = json.loads(ns.steps_json)
        except json.JSONDecodeError as err:
            raise UsageError(f"--steps is not valid JSON: {err}") from None
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list):
            raise UsageError("--steps must be a JSON list of {op, params}")
        out = []
        for item in raw:
            if not isinstance(item, dict) or "op" not in item:
                raise UsageError('--steps items need an "op"')
            out.append(Step(str(item["op"]), item.get("params") or {}))
        return out
    steps = getattr(ns, "steps", None)
    if not steps:
        raise UsageError("no op given: use --op OP (repeat for a pipeline) or --steps JSON")
    return [Step(s["op"], s["params"]) for s in steps]


def _add_input(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input (default: standard input when it is not a terminal)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("-f", "--file", metavar="FILE", help="read the payload from FILE ('-' = stdin)")
    x.add_argument("-d", "--data", metavar="TEXT", help="the payload as text (UTF-8)")


def _payload(ns: argparse.Namespace) -> bytes:
    if ns.data is not None:
        return str(ns.data).encode()
    if ns.file is not None:
        if ns.file == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(ns.file).read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read {ns.file}: {err.strerror}") from None
    if not sys.stdin.isatty():
        return sys.stdin.buffer.read()
    return b""


# ---------------------------------------------------------------- output


class Out:
    """Prints human or JSON output."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _console() -> Any:
    """A rich console; wide when stdout is not a terminal (pipes, logs)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _result_fields(data: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = {"result_base64": base64.b64encode(data).decode()}
    try:
        fields["result_text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if len(data) <= 64:
        fields["result_hex"] = data.hex()
    return fields


def _print_result(out: Out, data: bytes, content_type: str, output: str | None) -> None:
    """Writes result bytes: to --output, else readable text as is, else hex
    for short binary (digests), else a note to use --output."""
    if output:
        if output == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            Path(output).write_bytes(data)
            if not out.json:
                print(f"wrote {len(data)} bytes to {output}", file=sys.stderr)
        return
    text: str | None = None
    if content_type.startswith(("text/", "application/json")):
        text = data.decode("utf-8", errors="replace")
    else:
        try:
            decoded = data.decode("utf-8")
            if decoded.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in decoded):
                text = decoded
        except UnicodeDecodeError:
            text = None
    if text is not None and len(data) > 0:
        out.line(text.rstrip("\n"))
    elif len(data) <= 4096:
        out.line(data.hex())
    else:
        raise UsageError(f"the result is {len(data)} bytes of binary: use --output FILE")


def _job_line(job: Job) -> str:
    parts = [job.id, job.state.name, f"attempt {job.attempt}/{job.max_attempts}", job.queue or "-"]
    if job.progress is not None and job.state is JobState.RUNNING:
        parts.append(f"progress: {job.progress}")
    if job.last_error is not None and job.state in (
        JobState.FAILED,
        JobState.DEAD,
        JobState.RETRYING,
    ):
        parts.append(str(job.last_error))
    return "  ".join(parts)


def _job_dict(job: Job, *, with_result: bool = False) -> dict[str, Any]:
    d = job.to_dict()
    if with_result and job.result is not None:
        d.update(_result_fields(job.result))
    return d


# ---------------------------------------------------------------- commands


def security_options(ns: argparse.Namespace) -> dict[str, Any]:
    """The Client keyword arguments of the global --tls --ca --cert --key
    --token --insecure (None where not given: the client reads $TANDEM_*)."""
    opt = vars(ns)
    return {
        "tls": True if opt.get("tls") else None,
        "ca": opt.get("ca"),
        "cert": opt.get("cert"),
        "key": opt.get("key"),
        "token": opt.get("token"),
        "insecure": bool(opt.get("insecure")),
    }


def _client(ns: argparse.Namespace) -> Client:
    return Client(ns.address, timeout=ns.timeout, **security_options(ns))


def cmd_submit(ns: argparse.Namespace, out: Out) -> int:
    if ns.output and not ns.wait:
        raise UsageError("--output needs --wait")
    steps = _steps(ns)
    payload = _payload(ns)
    labels = dict(_kv(ns.label or [], "--label"))
    with _client(ns) as client:
        handle = client.submit(
            steps,
            payload,
            queue=ns.queue,
            idempotency_key=ns.idempotency_key,
            max_attempts=ns.max_attempts,
            timeout=ns.job_timeout,
            labels=labels,
        )
        if not ns.wait:
            if out.json:
                out.emit({**_job_dict(handle.job), "deduplicated": handle.deduplicated})
            else:
                out.line(handle.id)
            return EXIT_OK
        return _wait_and_print(handle, ns, out)


def _wait_and_print(handle: JobHandle, ns: argparse.Namespace, out: Out) -> int:
    job = handle.wait(timeout=ns.wait_timeout)
    if out.json:
        out.emit(
            {**_job_dict(job, with_result=ns.output is None), "deduplicated": handle.deduplicated}
        )
        if job.state is JobState.SUCCEEDED and ns.output:
            _print_result(out, job.result or b"", job.result_content_type, ns.output)
        return EXIT_OK if job.state is JobState.SUCCEEDED else EXIT_JOB_FAILED
    data = job_outcome(job)  # raises JobFailed / Cancelled
    _print_result(out, data, job.result_content_type, ns.output)
    return EXIT_OK


def cmd_get(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        job = client.get(ns.job_id, include_result=ns.result or bool(ns.output))
    if ns.result or ns.output:
        if job.state is not JobState.SUCCEEDED:
            if out.json:
                out.emit(_job_dict(job))
                return EXIT_JOB_FAILED
            if job.done:
                job_outcome(job)  # raises JobFailed or Cancelled
            raise UsageError(f"job {job.id} is {job.state.name}: no result yet")
        if out.json:
            out.emit(_job_dict(job, with_result=ns.output is None))
            if ns.output:
                _print_result(out, job.result or b"", job.result_content_type, ns.output)
        else:
            _print_result(out, job.result or b"", job.result_content_type, ns.output)
        return EXIT_OK
    if out.json:
        out.emit(_job_dict(job))
    else:
        out.line(_job_line(job))
        if job.last_error is not None:
            out.line(f"  last error: {job.last_error}")
    return EXIT_OK


def cmd_watch(ns: argparse.Namespace, out: Out) -> int:
    if not ns.job_ids and not ns.queue:
        raise UsageError("give job ids or --queue")
    if ns.job_ids and ns.queue:
        raise UsageError("give job ids or --queue, not both")
    worst = EXIT_OK
    deadline = None if ns.wait_timeout is None else time.monotonic() + ns.wait_timeout
    with _client(ns) as client:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                for job in client.watch(ns.job_ids or None, queue=ns.queue, timeout=left):
                    if out.json:
                        out.emit(_job_dict(job))
                    else:
                        out.line(f"{time.strftime('%H:%M:%S')}  {_job_line(job)}")
                    if ns.job_ids and job.done and job.state is not JobState.SUCCEEDED:
                        worst = EXIT_JOB_FAILED
                return worst
            except TandemError as err:
                # A queue watch ends at a break (events in between are lost);
                # a person following it wants it to go on, told of the gap.
                if ns.job_ids or isinstance(err, Timeout) or not err.retryable:
                    raise
                print(
                    f"tandem: watch of queue {ns.queue} broke ({err}); events since may be "
                    "missing; watching again",
                    file=sys.stderr,
                    flush=True,
                )


def cmd_cancel(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        job = client.cancel(ns.job_id)
    if out.json:
        out.emit(_job_dict(job))
    else:
        out.line(_job_line(job))
    return EXIT_OK


def _ops_table(ops: Any, limits: Any, out: Out) -> None:
    if out.json:
        out.emit(
            {
                "ops": [
                    {
                        "name": o.name,
                        "description": o.description,
                        "debug": o.debug,
                        "output_content_type": o.output_content_type,
                        "output_encoding": o.output_encoding,
                        "provider": o.provider or "compute",
                        "live_workers": o.live_workers,
                        "version": o.version,
                        "params": [p.__dict__ for p in o.params],
                    }
                    for o in ops
                ],
                "limits": limits.__dict__ if limits else None,
            }
        )
        return
    from rich.table import Table

    table = Table(title="ops", title_justify="left")
    table.add_column("op", style="bold")
    table.add_column("provider")
    table.add_column("params")
    table.add_column("output")
    table.add_column("description")
    for o in ops:
        params = []
        for p in o.params:
            desc = f"{p.name}:{p.type}"
            if p.type == "int":
                desc += f"[{p.min}..{p.max}]"
            elif p.type == "enum" and p.choices:
                desc += "{" + "|".join(p.choices) + "}"
            if p.default:
                desc += f"={p.default}"
            elif p.required:
                desc += " (required)"
            params.append(desc)
        name = o.name + (" (debug)" if o.debug else "")
        if o.provider == "worker":
            live = f"{o.live_workers} live" if o.live_workers else "[red]no live worker[/red]"
            provider = f"worker ({live})" + (f"\nv{o.version}" if o.version else "")
        else:
            provider = o.provider or "compute"
        table.add_row(
            name, provider, "\n".join(params) or "-", o.output_content_type, o.description
        )
    console = _console()
    console.print(table)
    if limits:
        console.print(
            f"limits: request {limits.max_request_bytes} B, output {limits.max_output_bytes} B, "
            f"{limits.max_steps} steps, batch {limits.max_batch_items}, "
            f"image {limits.max_image_pixels} px / {limits.max_image_dimension} px, "
            f"{limits.workers} workers, wait queue {limits.queue_depth}"
        )


def cmd_ops(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        ops = client.ops()
    _ops_table(ops.ops, ops.limits, out)
    return EXIT_OK


def cmd_queues(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        queues = client.queues()
    if out.json:
        out.emit({"queues": [q.__dict__ for q in queues]})
        return EXIT_OK
    from rich.table import Table

    table = Table(title="queues", title_justify="left")
    for col in (
        "queue",
        "depth",
        "running",
        "workers",
        "dead",
        "paused",
        "attempts",
        "timeout",
        "max depth",
        "jobs/s",
    ):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for q in queues:
        table.add_row(
            q.name,
            str(q.depth),
            str(q.in_flight),
            f"{q.workers} ({q.min_workers}-{q.max_workers})",
            str(q.dead_letters),
            "yes" if q.paused else "no",
            str(q.max_attempts),
            f"{q.job_timeout:g}s" if q.job_timeout else "-",
            str(q.max_depth or "-"),
            f"{q.completed_per_second:.1f}",
        )
    _console().print(table)
    return EXIT_OK


def cmd_workers(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        workers = client.workers()
    if out.json:
        out.emit({"workers": [w.to_dict() for w in workers]})
        return EXIT_OK
    if not workers:
        out.line("no live workers (start one with `tandem worker MODULE:OBJECT`)")
        return EXIT_OK
    from rich.table import Table

    table = Table(title="workers", title_justify="left")
    for col in ("worker", "ops", "pool", "running", "succeeded", "failed", "host/pid", "seen"):
        table.add_column(
            col, justify="right" if col in ("running", "succeeded", "failed") else "left"
        )
    now = time.time()
    for w in workers:
        seen = f"{now - w.last_heartbeat.timestamp():.1f}s ago" if w.last_heartbeat else "-"
        table.add_row(
            w.id + (" (draining)" if w.draining else ""),
            "\n".join(o.name for o in w.ops),
            w.pool,
            f"{w.in_flight}/{w.concurrency}",
            str(w.succeeded),
            str(w.failed),
            f"{w.host}/{w.pid}",
            seen,
        )
    _console().print(table)
    return EXIT_OK


def _when(t: Any) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def cmd_jobs(ns: argparse.Namespace, out: Out) -> int:
    labels = ns.label or []
    if len(labels) > 1:
        raise UsageError("--label: jobs are found by one label (KEY or KEY=VALUE)")
    if ns.limit < 1:
        raise UsageError("--limit must be at least 1")
    with _client(ns) as client:
        found = client.jobs(
            ns.queue or None,
            state=ns.state,
            label=labels[0] if labels else None,
            limit=ns.limit,
            scan=ns.scan,
        )
    if out.json:
        out.emit(
            {
                "jobs": [_job_dict(j) for j in found.jobs],
                "scanned": found.scanned,
                "truncated": found.truncated,
            }
        )
        return EXIT_OK
    note = f"looked at the newest {found.scanned} records"
    if found.truncated:
        note += " (older ones exist: --scan looks further)"
    if not found.jobs:
        out.line(f"no jobs found; {note}")
        return EXIT_OK
    from rich.table import Table

    table = Table(title="jobs (newest first)", title_justify="left")
    for col in ("job", "state", "queue", "ops", "attempt", "created", "labels", "last error"):
        table.add_column(col, justify="right" if col == "attempt" else "left")
    for j in found.jobs:
        error = ""
        if j.last_error is not None and j.state is not JobState.SUCCEEDED:
            error = str(j.last_error)
            error = error if len(error) <= 80 else error[:79] + "…"
        table.add_row(
            j.id,
            j.state.name,
            j.queue,
            " → ".join(st.op for st in j.steps),
            f"{j.attempt}/{j.max_attempts}",
            _when(j.created_at),
            " ".join(f"{k}={v}" for k, v in sorted(j.labels.items())),
            error,
        )
    console = _console()
    console.print(table)
    console.print(f"{len(found.jobs)} job{'s' if len(found.jobs) != 1 else ''}; {note}")
    return EXIT_OK


def cmd_top(ns: argparse.Namespace, out: Out) -> int:
    from tandem import _top
    from tandem._retry import NO_RETRY

    if not 0.2 <= ns.interval <= 3600:
        raise UsageError("--interval must be 0.2 to 3600 seconds")
    # No retries and a short deadline: the next refresh is the retry, and a
    # hung call must not freeze the view.
    timeout = min(ns.timeout, max(2.0, ns.interval))
    with Client(ns.address, timeout=timeout, retry=NO_RETRY, **security_options(ns)) as c:
        try:
            _top.run(
                c,
                ns.address,
                interval=ns.interval,
                once=ns.once,
                as_json=out.json,
                console=_console(),
            )
        except KeyboardInterrupt:
            if ns.once:
                raise
    return EXIT_OK  # q or Ctrl-C: how a live view ends


def _audit_row(e: AuditEntry) -> list[str]:
    jobs = ",".join(e.job_ids)
    if e.job_count > len(e.job_ids):
        jobs += f" (+{e.job_count - len(e.job_ids)})"
    outcome = e.code + (f" {e.reason}" if e.reason else "")
    return [
        str(e.seq),
        _when(e.time),
        e.actor,
        e.action,
        e.queue or "-",
        jobs or "-",
        outcome,
        e.peer or "-",
        e.detail,
    ]


_AUDIT_COLUMNS = ("seq", "time", "actor", "action", "queue", "jobs", "outcome", "peer", "detail")


def cmd_audit(ns: argparse.Namespace, out: Out) -> int:
    if ns.after_seq < 0:
        raise UsageError(f"--after-seq must be 0 or more, not {ns.after_seq}")
    if not 1 <= ns.limit <= AUDIT_MAX_LIMIT:
        raise UsageError(f"--limit must be 1 to {AUDIT_MAX_LIMIT}, not {ns.limit}")
    if not 0.2 <= ns.interval <= 3600:
        raise UsageError("--interval must be 0.2 to 3600 seconds")
    filters = {"actor": ns.actor, "action": ns.action, "queue": ns.queue}
    with _client(ns) as client:
        page = client.audit(after_seq=ns.after_seq, limit=ns.limit, **filters)
        if not ns.follow:
            if out.json:
                for e in page.entries:
                    out.emit(e.to_dict())
                return EXIT_OK
            if not page.entries:
                out.line(f"no audit entries after seq {ns.after_seq}")
                return EXIT_OK
            from rich.table import Table

            table = Table(title="audit", title_justify="left")
            for col in _AUDIT_COLUMNS:
                table.add_column(col, justify="right" if col == "seq" else "left")
            for e in page.entries:
                table.add_row(*_audit_row(e))
            console = _console()
            console.print(table)
            more = len(page.entries) == ns.limit
            console.print(
                f"{len(page.entries)} entr{'ies' if len(page.entries) != 1 else 'y'}"
                + (f"; more: --after-seq {page.last_seq}" if more else ""),
                highlight=False,
            )
            return EXIT_OK
        # --follow: every entry as it comes, polling with after_seq (the
        # server's last_seq, so filtered-out entries are not looked at again).
        after = ns.after_seq
        while True:
            for e in page.entries:
                if out.json:
                    out.emit(e.to_dict())
                else:
                    out.line("  ".join(_audit_row(e)).rstrip())
            after = max(after, page.last_seq, *(e.seq for e in page.entries))
            if len(page.entries) < ns.limit:
                time.sleep(ns.interval)
            page = _audit_poll(client, after, ns, filters)


def _audit_poll(
    client: Client, after: int, ns: argparse.Namespace, filters: dict[str, Any]
) -> AuditPage:
    """The next page of a --follow; a retryable failure (the orchestrator
    restarting, a rate limit) is told on stderr and polled through."""
    while True:
        try:
            return client.audit(after_seq=after, limit=ns.limit, **filters)
        except TandemError as err:
            if not err.retryable:
                raise
            print(f"tandem: audit: {err}; polling again", file=sys.stderr)
            time.sleep(ns.interval)


def cmd_worker(ns: argparse.Namespace, out: Out) -> int:
    from tandem._worker import WorkerConfig, load, run

    try:
        worker = load(ns.target)
        config = WorkerConfig(
            nats_url=ns.nats_url,
            nats_user=ns.nats_user,
            nats_password=""
            if ns.nats_password_file
            else os.environ.get("TANDEM_NATS_PASSWORD", ""),
            nats_password_file=ns.nats_password_file,
            nats_creds=ns.nats_creds,
            nats_ca=ns.nats_ca,
            nats_cert=ns.nats_cert,
            nats_key=ns.nats_key,
            concurrency=ns.concurrency,
            pool=ns.pool,
            backlog=ns.backlog,
            heartbeat_interval=ns.heartbeat_interval,
            cancel_grace=ns.cancel_grace,
            drain_timeout=ns.drain_timeout,
            worker_id=ns.id,
            log_level=ns.log_level,
        )
        config.check()
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    try:
        return run(worker, config)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None


def cmd_pause_resume(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        q = client.pause_queue(ns.queue) if ns.command == "pause" else client.resume_queue(ns.queue)
    if out.json:
        out.emit(q.__dict__)
    else:
        out.line(f"queue {q.name}: {'paused' if q.paused else 'running'}, depth {q.depth}")
    return EXIT_OK


def cmd_dlq(ns: argparse.Namespace, out: Out) -> int:
    with _client(ns) as client:
        if ns.dlq_cmd == "list":
            dl = client.dead_letters(ns.queue, limit=ns.limit)
            if out.json:
                out.emit(
                    {"queue": dl.queue, "total": dl.total, "jobs": [_job_dict(j) for j in dl.jobs]}
                )
            else:
                out.line(
                    f"{dl.total} dead letter{'s' if dl.total != 1 else ''} in queue {dl.queue}"
                )
                for j in dl.jobs:
                    out.line(_job_line(j))
            return EXIT_OK
        if not ns.job_ids and not ns.all:
            raise UsageError(f"dlq {ns.dlq_cmd}: give job ids or --all")
        if ns.job_ids and ns.all:
            raise UsageError(f"dlq {ns.dlq_cmd}: give job ids or --all, not both")
        ids = None if ns.all else list(ns.job_ids)
        if ns.dlq_cmd == "retry":
            retried = client.retry_dead_letters(ns.queue, ids)
            if out.json:
                out.emit({"retried_job_ids": retried})
            else:
                out.line(f"retried {len(retried)} job{'s' if len(retried) != 1 else ''}")
                for i in retried:
                    out.line(i)
            return EXIT_OK
        purged = client.purge_dead_letters(ns.queue, ids)
        if out.json:
            out.emit({"purged": purged})
        else:
            out.line(f"purged {purged} dead letter{'s' if purged != 1 else ''}")
        return EXIT_OK


def cmd_local(ns: argparse.Namespace, out: Out) -> int:
    from tandem import local

    if ns.list:
        ops = local.ops(debug_ops=ns.debug_ops)
        _ops_table(ops.ops, ops.limits, out)
        return EXIT_OK
    steps = _steps(ns)
    payload = _payload(ns)
    data = local.run(steps, payload, debug_ops=ns.debug_ops)
    if out.json and not ns.output:
        out.emit(_result_fields(data))
    else:
        _print_result(out, data, "", ns.output)
    return EXIT_OK


_EXT_BY_TYPE = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "application/json": ".json",
    "text/plain": ".txt",
}


def _map_inputs(ns: argparse.Namespace) -> list[Path]:
    files: list[Path] = []
    for name in ns.paths:
        p = Path(name)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob(ns.glob) if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"no such file or folder: {name}")
    if not files:
        raise UsageError("no input files")
    return files


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def cmd_map(ns: argparse.Namespace, out: Out) -> int:
    steps = _steps(ns)
    files = _map_inputs(ns)
    if ns.output_dir:
        Path(ns.output_dir).mkdir(parents=True, exist_ok=True)
    with _client(ns) as client:
        summary = run_map(
            ns.address,
            ns.timeout,
            steps,
            files,
            queue=ns.queue,
            window=ns.window,
            output_dir=ns.output_dir,
            progress=not out.json,
            wait_timeout=ns.wait_timeout,
            client=client,
        )
    if out.json:
        out.emit(summary)
    else:
        print_map_summary(summary)
    return EXIT_OK if summary["failed"] == 0 else EXIT_JOB_FAILED


def run_map(
    address: str | None,
    timeout: float,
    steps: list[Step],
    files: list[Path],
    *,
    queue: str = "",
    window: int = MAP_WINDOW,
    output_dir: str | None = None,
    progress: bool = True,
    wait_timeout: float | None = None,
    on_result: Callable[[Path, Job | TandemError], None] | None = None,
    client: Client | None = None,
) -> dict[str, Any]:
    """Runs one pipeline over files through the service (:meth:`Client.map`)
    with a progress bar; returns a summary dict (count, succeeded, failed,
    seconds, jobs/s, MB/s, latency p50/p99 in ms, failures). Used by
    ``tandem map``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    own = client is None
    cl = client or Client(address, timeout=timeout)
    latencies: list[float] = []
    failures: list[dict[str, str]] = []
    succeeded = 0
    in_bytes = sum(f.stat().st_size for f in files)
    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]map"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    )
    task = bar.add_task("map", total=len(files), status="")

    def settled(index: int, outcome: Job | TandemError) -> None:
        nonlocal succeeded
        f = files[index]
        if isinstance(outcome, TandemError):
            failures.append({"input": str(f), "error": str(outcome)})
        elif outcome.state is JobState.SUCCEEDED:
            succeeded += 1
            if outcome.created_at and outcome.finished_at:
                latencies.append((outcome.finished_at - outcome.created_at).total_seconds() * 1000)
            if output_dir:
                ext = _EXT_BY_TYPE.get(outcome.result_content_type, ".out")
                (Path(output_dir) / (f.name + ext)).write_bytes(outcome.result or b"")
        else:
            try:
                job_outcome(outcome)
            except TandemError as err:
                error = err.error if isinstance(err, JobFailed) else err
                failures.append({"input": str(f), "error": f"{outcome.state.name}: {error}"})
        if on_result:
            on_result(f, outcome)
        bar.update(task, advance=1, status=f"{len(failures)} failed" if failures else "")

    try:
        with bar:
            for _ in cl.map(
                steps,
                files,
                queue=queue,
                window=max(1, window),
                timeout=wait_timeout,
                return_exceptions=True,
                on_result=settled,
            ):
                pass
    finally:
        if own:
            cl.close()
    seconds = time.monotonic() - started
    return {
        "count": len(files),
        "succeeded": succeeded,
        "failed": len(failures),
        "seconds": round(seconds, 3),
        "jobs_per_second": round(len(files) / seconds, 1) if seconds > 0 else 0.0,
        "mb_per_second": round(in_bytes / 1e6 / seconds, 2) if seconds > 0 else 0.0,
        "latency_ms_p50": round(_percentile(latencies, 50), 2),
        "latency_ms_p99": round(_percentile(latencies, 99), 2),
        "failures": failures,
    }


def print_map_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="summary", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("jobs", str(summary["count"]))
    table.add_row("succeeded", str(summary["succeeded"]))
    table.add_row("failed", str(summary["failed"]))
    table.add_row("wall time", f"{summary['seconds']:.2f} s")
    table.add_row(
        "throughput", f"{summary['jobs_per_second']} jobs/s, {summary['mb_per_second']} MB/s"
    )
    table.add_row(
        "latency p50 / p99", f"{summary['latency_ms_p50']} ms / {summary['latency_ms_p99']} ms"
    )
    console = _console()
    console.print(table)
    for f in summary["failures"][:20]:
        console.print(f"[red]failed[/red] {f['input']}: {f['error']}", highlight=False)
    if len(summary["failures"]) > 20:
        console.print(f"... and {len(summary['failures']) - 20} more")


def _kv(items: Sequence[str], flag: str) -> Iterator[tuple[str, str]]:
    for item in items:
        if "=" not in item:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        yield k, v


# ---------------------------------------------------------------- parser

WORKER_HELP = """\
Serve the ops of a tandem.Worker (OBJECT, default `worker`, in the importable
module MODULE; the current folder is importable) until SIGTERM or SIGINT,
which drain it: no new steps, running ones finish (up to --drain-timeout),
the rest go back to the orchestrator uncounted; exit 0.

`async def` ops run on the worker's event loop; plain functions in a pool of
processes (--pool process: CPU-bound code cannot stall the heartbeats) or
threads (--pool thread: blocking I/O). Logs are JSON lines on stderr.
"""


def _add_worker(sub: Any) -> None:
    from tandem._worker.runtime import DEFAULT_NATS_URL

    p = sub.add_parser(
        "worker",
        help="serve Python ops: tandem worker MODULE:OBJECT",
        description=WORKER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="MODULE:OBJECT", help="e.g. myops:worker")
    # Defaults from the environment are strings: argparse converts them
    # with `type`, so a bad value is a usage error naming the option.
    env = os.environ.get
    p.add_argument(
        "--nats-url",
        default=env("TANDEM_NATS_URL") or DEFAULT_NATS_URL,
        metavar="URL",
        help=f"NATS server(s), comma-separated (env TANDEM_NATS_URL; default {DEFAULT_NATS_URL})",
    )
    p.add_argument(
        "--nats-user",
        default=env("TANDEM_NATS_USER", ""),
        metavar="USER",
        help="NATS user (env TANDEM_NATS_USER)",
    )
    p.add_argument(
        "--nats-password-file",
        default=env("TANDEM_NATS_PASSWORD_FILE", ""),
        metavar="FILE",
        help="file holding the password of --nats-user, read at every connect (env "
        "TANDEM_NATS_PASSWORD_FILE; or the password itself in env TANDEM_NATS_PASSWORD; "
        "never on the command line, where ps shows it)",
    )
    p.add_argument(
        "--nats-creds",
        default=env("TANDEM_NATS_CREDS", ""),
        metavar="FILE",
        help="NATS JWT credentials file, .creds (env TANDEM_NATS_CREDS)",
    )
    p.add_argument(
        "--nats-ca",
        default=env("TANDEM_NATS_CA", ""),
        metavar="FILE",
        help="TLS to NATS: PEM CA bundle of the server's certificate (env TANDEM_NATS_CA)",
    )
    p.add_argument(
        "--nats-cert",
        default=env("TANDEM_NATS_CERT", ""),
        metavar="FILE",
        help="TLS to NATS: PEM client certificate, with --nats-key (env TANDEM_NATS_CERT)",
    )
    p.add_argument(
        "--nats-key",
        default=env("TANDEM_NATS_KEY", ""),
        metavar="FILE",
        help="TLS to NATS: PEM key of --nats-cert (env TANDEM_NATS_KEY)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=env("TANDEM_WORKER_CONCURRENCY") or None,
        metavar="N",
        help="steps at once (env TANDEM_WORKER_CONCURRENCY; default: number of cores for "
        "the process pool, 16 for threads, 100 when every op is async)",
    )
    p.add_argument(
        "--pool",
        choices=("process", "thread"),
        default=env("TANDEM_WORKER_POOL") or "process",
        help="where plain (sync) functions run (env TANDEM_WORKER_POOL; default process)",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=env("TANDEM_WORKER_BACKLOG") or None,
        metavar="N",
        help="steps accepted beyond --concurrency that wait for a slot; more are refused "
        "OVERLOADED and offered elsewhere (env TANDEM_WORKER_BACKLOG; default half of "
        "--concurrency, at least 1)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=env("TANDEM_WORKER_HEARTBEAT_INTERVAL") or "1.0",
        metavar="SECONDS",
        help="how often it announces itself and each running step; the orchestrator "
        "retries a step after 5 silent intervals (env TANDEM_WORKER_HEARTBEAT_INTERVAL; "
        "default 1)",
    )
    p.add_argument(
        "--cancel-grace",
        type=float,
        default=env("TANDEM_WORKER_CANCEL_GRACE") or "5.0",
        metavar="SECONDS",
        help="after a cancel or timeout, how long a step may take to notice ctx.cancelled "
        "before it is stopped hard (env TANDEM_WORKER_CANCEL_GRACE; default 5)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=env("TANDEM_WORKER_DRAIN_TIMEOUT") or "30.0",
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running steps may finish (env "
        "TANDEM_WORKER_DRAIN_TIMEOUT; default 30)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        type=str.lower,
        default=env("TANDEM_WORKER_LOG_LEVEL") or "info",
        help="log level of the JSON lines on stderr (env TANDEM_WORKER_LOG_LEVEL; default info)",
    )
    p.add_argument(
        "--id",
        default=env("TANDEM_WORKER_ID", ""),
        help="worker id, 1 to 64 of A-Z a-z 0-9 _ - (env TANDEM_WORKER_ID; default "
        "NAME-HOST-PID-RANDOM)",
    )
    p.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"orchestrator address (env TANDEM_ADDRESS; default {DEFAULT_ADDRESS})",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="deadline of each call (default 30)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable JSON output",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    sec = common.add_argument_group("security (each also from its environment variable)")
    sec.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        metavar="TOKEN",
        help="bearer token sent on every call (env TANDEM_TOKEN, which keeps it out of ps)",
    )
    sec.add_argument(
        "--ca",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="PEM CA bundle of the server's certificate; turns TLS on (env TANDEM_CA)",
    )
    sec.add_argument(
        "--cert",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="PEM client certificate for mTLS, with --key (env TANDEM_CERT)",
    )
    sec.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="PEM private key of --cert (env TANDEM_KEY)",
    )
    sec.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help="TLS with the system's CA roots (env TANDEM_TLS=1; implied by --ca and --cert)",
    )
    sec.add_argument(
        "--insecure",
        action="store_true",
        default=argparse.SUPPRESS,
        help="allow sending the token over plaintext to a non-loopback address",
    )

    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Submit and inspect Tandem jobs, or run transforms locally.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version="tandem 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[common],
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p

    def add_wait_timeout(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--wait-timeout",
            type=float,
            metavar="SECONDS",
            help="give up waiting after this long (default: wait forever)",
        )

    p = add("submit", "submit a job (a pipeline of ops over one payload)")
    _add_steps(p)
    _add_input(p)
    p.add_argument("-q", "--queue", default="", help="queue (default: the server's 'default')")
    p.add_argument(
        "-k",
        "--idempotency-key",
        metavar="KEY",
        help="idempotency key (default: a generated one; --key is the TLS client key)",
    )
    p.add_argument("--max-attempts", type=int, help="override the queue's max attempts")
    p.add_argument("--job-timeout", type=float, metavar="SECONDS", help="per-attempt job timeout")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="a label; repeatable")
    p.add_argument("-w", "--wait", action="store_true", help="wait for the result and print it")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="with --wait: write the result to FILE ('-' = stdout)",
    )
    add_wait_timeout(p)
    p.set_defaults(func=cmd_submit)

    p = add("get", "show a job")
    p.add_argument("job_id")
    p.add_argument("-r", "--result", action="store_true", help="print the result instead")
    p.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE")
    p.set_defaults(func=cmd_get)

    p = add("watch", "follow jobs' state changes (ends when all are terminal) or a queue's")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    p.add_argument("-q", "--queue", help="watch every job of this queue")
    add_wait_timeout(p)
    p.set_defaults(func=cmd_watch)

    p = add("cancel", "cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = add("ops", "list the ops (built-in and served by workers), with their params")
    p.set_defaults(func=cmd_ops)

    p = add("queues", "list queues with their live figures")
    p.set_defaults(func=cmd_queues)

    p = add("workers", "list the live op workers (`tandem worker`) with their ops and load")
    p.set_defaults(func=cmd_workers)

    p = add("jobs", "find recent jobs by queue, state and label (newest first)")
    p.add_argument("-q", "--queue", default="", help="only this queue (default: every queue)")
    p.add_argument(
        "--state",
        type=str.lower,
        choices=[s.name.lower() for s in JobState if s is not JobState.UNSPECIFIED],
        help="only jobs in this state",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY[=VALUE]",
        help="only jobs carrying this label (KEY alone: any value)",
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50, max 500)")
    p.add_argument(
        "--scan",
        type=int,
        default=0,
        metavar="N",
        help="look at the newest N records (default: the server's 5000, max 50000)",
    )
    p.set_defaults(func=cmd_jobs)

    p = add("top", "a live view of queues, rates and op workers (q or Ctrl-C quits)")
    p.add_argument(
        "-n",
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 2)",
    )
    p.add_argument(
        "--once", action="store_true", help="print one frame and exit (for scripts and tests)"
    )
    p.set_defaults(func=cmd_top)

    p = add("audit", "the audit trail: who changed what, oldest first (needs admin everywhere)")
    p.add_argument(
        "--after-seq",
        type=int,
        default=0,
        metavar="N",
        help="entries after sequence number N (default 0: from the oldest kept)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help=f"at most N entries per call (default 100, max {AUDIT_MAX_LIMIT})",
    )
    p.add_argument("--actor", help="only this actor (token:<id>, cli:<user>@<host>, ...)")
    p.add_argument("--action", help="only this action (SubmitJob, CancelJob, token.create, ...)")
    p.add_argument("-q", "--queue", help="only entries of this queue")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new entries as they come (polls; Ctrl-C stops)",
    )
    p.add_argument(
        "-n",
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="with --follow: seconds between polls (default 2)",
    )
    p.set_defaults(func=cmd_audit)

    _add_worker(sub)

    for name, text in (
        ("pause", "stop a queue's workers from pulling (submits still queue)"),
        ("resume", "let a paused queue's workers pull again"),
    ):
        p = add(name, text)
        p.add_argument("queue")
        p.set_defaults(func=cmd_pause_resume)

    p = add("dlq", "dead-letter queue: list, retry or purge")
    dsub = p.add_subparsers(dest="dlq_cmd", metavar="ACTION", required=True)
    for name, text in (
        ("list", "list dead jobs"),
        ("retry", "re-enqueue dead jobs"),
        ("purge", "delete dead jobs for good"),
    ):
        dp = dsub.add_parser(name, help=text, description=text, parents=[common])
        dp.add_argument("-q", "--queue", default="default", help="queue (default: default)")
        if name == "list":
            dp.add_argument("--limit", type=int, default=100, help="at most this many (max 1000)")
        else:
            dp.add_argument("job_ids", nargs="*", metavar="JOB_ID")
            dp.add_argument("--all", action="store_true", help="every dead job of the queue")
    p.set_defaults(func=cmd_dlq)

    p = add("local", "run a pipeline in this process (tandem._native), no service needed")
    _add_steps(p)
    _add_input(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the result to FILE")
    p.add_argument("--list", action="store_true", help="list the native ops instead")
    p.add_argument("--debug-ops", action="store_true", help="allow the test-only debug.* ops")
    p.set_defaults(func=cmd_local)

    p = add("map", "run one pipeline over a folder of files, with progress and a summary")
    _add_steps(p)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursed)")
    p.add_argument("--glob", default="*", help="file pattern inside folders (default '*')")
    p.add_argument("-q", "--queue", default="", help="queue")
    p.add_argument("--output-dir", metavar="DIR", help="write each result to DIR/<name>.<ext>")
    p.add_argument(
        "--window",
        type=int,
        default=MAP_WINDOW,
        help=f"jobs in flight at once (default {MAP_WINDOW})",
    )
    add_wait_timeout(p)
    p.set_defaults(func=cmd_map)
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``tandem`` command."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns the exit code (never raises for errors)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    for name, default in (
        ("address", None),
        ("timeout", 30.0),
        ("json", False),
        ("debug", False),
        ("token", None),
        ("ca", None),
        ("cert", None),
        ("key", None),
        ("tls", False),
        ("insecure", False),
    ):
        if not hasattr(ns, name):
            setattr(ns, name, default)
    ns.address = ns.address or os.environ.get("TANDEM_ADDRESS") or DEFAULT_ADDRESS
    out = Out(ns.json)
    try:
        code: int = ns.func(ns, out)
        return code
    except KeyboardInterrupt:
        if ns.debug:
            raise
        print("tandem: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (TandemError, UsageError, SecurityError) as err:
        if ns.debug:
            import traceback

            traceback.print_exc()
        code = exit_code_for(err)
        if out.json and isinstance(err, TandemError):
            payload: dict[str, Any] = {
                "error": {
                    "type": type(err).__name__,
                    "reason": err.reason,
                    "message": err.message,
                    "metadata": err.metadata,
                }
            }
            if isinstance(err, JobFailed):
                payload["error"]["job"] = err.job.to_dict()
            print(json.dumps(payload), file=sys.stderr)
        elif isinstance(err, Unavailable) and not err.reason:
            print(f"tandem: error: cannot reach {ns.address}: {err.message}", file=sys.stderr)
        else:
            print(f"tandem: error: {err}", file=sys.stderr)
        return code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as err:  # noqa: BLE001 - one line unless --debug
        if ns.debug:
            raise
        print(f"tandem: error: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    main()

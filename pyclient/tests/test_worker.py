"""tandem.Worker without NATS: schemas from type hints, param parsing, the
error mapping, the step context, loading, and the three runners (the
process pool with real child processes)."""

from __future__ import annotations

import asyncio
import enum
import os
import time
from typing import Annotated, Literal

import pytest

import tandem
from tandem import cli
from tandem._worker import runtime
from tandem._worker.api import StepContext, StepInfo, load
from tandem._worker.outcome import MAX_MESSAGE, Failure, call_sync, from_exception, to_output
from tandem._worker.runner import AsyncRunner, LocalSignals, ProcessRunner, ThreadRunner
from tandem._worker.schema import INT64_MAX, INT64_MIN, ParamError
from tandem.v1 import compute_pb2

# ---------------------------------------------------------------- schema from hints


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def specs(worker: tandem.Worker, name: str) -> dict[str, compute_pb2.ParamSpec]:
    op = worker.get(name)
    assert op is not None
    return {p.name: p for p in op.to_proto().params}


def test_schema_from_type_hints() -> None:
    w = tandem.Worker("t")

    @w.op("acme.ocr", version="2", content_type="text/plain")
    def ocr(
        data: bytes,
        *,
        lang: Literal["eng", "deu"] = "eng",
        dpi: Annotated[int, tandem.Range(72, 1200), "dots per inch"] = 300,
        deskew: bool = True,
        title: Annotated[str, tandem.MaxLen(64)] = "",
        pages: int,
        colour: Colour = Colour.RED,
        note: str | None = None,
        ctx: tandem.StepContext,
    ) -> str:
        """Reads the text of a scanned page.

        More words that are not the description."""
        return ""

    op = w.get("acme.ocr")
    assert op is not None and not op.is_async and op.signature.ctx_arg == "ctx"
    proto = op.to_proto()
    assert proto.description == "Reads the text of a scanned page."
    assert (proto.version, proto.output_content_type, proto.provider) == (
        "2",
        "text/plain",
        "worker",
    )
    p = specs(w, "acme.ocr")
    assert list(p) == ["lang", "dpi", "deskew", "title", "pages", "colour", "note"]
    assert p["lang"].type == compute_pb2.PARAM_TYPE_ENUM and list(p["lang"].choices) == [
        "eng",
        "deu",
    ]
    assert p["lang"].default_value == "eng" and not p["lang"].required
    assert (p["dpi"].type, p["dpi"].min, p["dpi"].max) == (compute_pb2.PARAM_TYPE_INT, 72, 1200)
    assert p["dpi"].default_value == "300" and p["dpi"].description == "dots per inch"
    assert p["deskew"].type == compute_pb2.PARAM_TYPE_BOOL and p["deskew"].default_value == "true"
    assert p["title"].type == compute_pb2.PARAM_TYPE_STRING and p["title"].max == 64
    assert p["pages"].required and (p["pages"].min, p["pages"].max) == (INT64_MIN, INT64_MAX)
    assert list(p["colour"].choices) == ["red", "blue"] and p["colour"].default_value == "red"
    assert not p["note"].required and p["note"].max == 4096 and p["note"].default_value == ""


def test_explicit_overrides() -> None:
    w = tandem.Worker("t")

    @w.op(
        "acme.resize",
        description="Resizes.",
        params={
            "width": tandem.Param(min=1, max=64, description="pixels"),
            "max_side": tandem.Param(name="max-side"),
            "fit": tandem.Param(type="enum", choices=["contain", "cover"], default="cover"),
        },
    )
    def resize(data: bytes, width: int = 8, max_side: int = 0, fit: str = "") -> bytes:
        return data

    p = specs(w, "acme.resize")
    assert (p["width"].min, p["width"].max, p["width"].description) == (1, 64, "pixels")
    assert "max-side" in p and "max_side" not in p
    assert list(p["fit"].choices) == ["contain", "cover"] and p["fit"].default_value == "cover"
    op = w.get("acme.resize")
    assert op is not None
    assert op.kwargs({"max-side": "5"}) == {"width": 8, "max_side": 5, "fit": "cover"}


def test_async_ops_and_unannotated_params() -> None:
    w = tandem.Worker("t")

    @w.op("acme.a")
    async def a(data, level=3, name="x", loud=False):  # type: ignore[no-untyped-def]
        return data

    op = w.get("acme.a")
    assert op is not None and op.is_async
    p = specs(w, "acme.a")
    assert p["level"].type == compute_pb2.PARAM_TYPE_INT
    assert p["name"].type == compute_pb2.PARAM_TYPE_STRING
    assert p["loud"].type == compute_pb2.PARAM_TYPE_BOOL


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "non-empty"),
        ("acme..ocr", "empty dot-separated token"),
        (".acme", "empty dot-separated token"),
        ("acme ocr", "may only contain"),
        ("acme.*", "may only contain"),
        ("a" * 129, "longer than 128"),
    ],
)
def test_bad_op_names_are_refused_at_registration(name: str, problem: str) -> None:
    w = tandem.Worker("t")
    with pytest.raises(ValueError, match=problem):
        w.add(lambda data: data, name)


def test_bad_signatures_are_refused_with_the_op_named() -> None:
    w = tandem.Worker("t")

    def cases() -> list[tuple[object, str]]:
        def no_input() -> bytes:
            return b""

        def floaty(data: bytes, *, ratio: float = 0.5) -> bytes:
            return data

        def star(data: bytes, **params: str) -> bytes:
            return data

        def range_on_str(data: bytes, *, s: Annotated[str, tandem.Range(1, 2)] = "") -> bytes:
            return data

        def bad_default(data: bytes, *, n: Annotated[int, tandem.Range(1, 9)] = 10) -> bytes:
            return data

        def odd_type(data: bytes, *, when: list[int] | None = None) -> bytes:
            return data

        return [
            (no_input, "first argument must take the input"),
            (floaty, "is a float"),
            (star, "cannot be params"),
            (range_on_str, "tandem.Range on param 's'"),
            (bad_default, "the default does not fit"),
            (odd_type, "use int, bool, str"),
        ]

    for fn, problem in cases():
        with pytest.raises((TypeError, ValueError), match=problem) as info:
            w.add(fn, "acme.bad")  # type: ignore[arg-type]
        assert "acme.bad" in str(info.value)
    w.add(lambda data: data, "acme.once")
    with pytest.raises(ValueError, match="registered twice"):
        w.add(lambda data: data, "acme.once")


def test_descriptions_become_one_bounded_line() -> None:
    w = tandem.Worker("t")
    op = w.add(lambda data: data, "acme.d", description="two\nlines\tand " + "x" * 2000)
    assert "\n" not in op.description and len(op.description.encode()) <= 1024
    assert op.description.startswith("two lines and x")


def test_the_process_pool_needs_importable_functions() -> None:
    w = tandem.Worker("t")
    w.add(lambda data: data, "acme.lambda")
    with pytest.raises(ValueError, match="--pool thread"):
        w.check_picklable()


# ---------------------------------------------------------------- parsing


@pytest.fixture
def parsing() -> tandem.Worker:
    w = tandem.Worker("t")

    @w.op("p.all")
    def all_types(
        data: bytes,
        *,
        n: Annotated[int, tandem.Range(-5, 5)] = 0,
        big: int = 0,
        on: bool = False,
        mode: Literal["a", "b"] = "a",
        colour: Colour = Colour.BLUE,
        s: Annotated[str, tandem.MaxLen(3)] = "",
        need: int,
    ) -> bytes:
        return data

    return w


def kwargs(w: tandem.Worker, **raw: str) -> dict[str, object]:
    op = w.get("p.all")
    assert op is not None
    return op.kwargs(raw)


def test_params_parse_by_the_schema(parsing: tandem.Worker) -> None:
    got = kwargs(
        parsing,
        n="-5",
        big=str(INT64_MAX),
        on="true",
        mode="b",
        colour="red",
        s="héé"[:2],
        need="+7",
    )
    assert got == {
        "n": -5,
        "big": INT64_MAX,
        "on": True,
        "mode": "b",
        "colour": Colour.RED,
        "s": "hé",
        "need": 7,
    }
    assert kwargs(parsing, need="1") == {
        "n": 0,
        "big": 0,
        "on": False,
        "mode": "a",
        "colour": Colour.BLUE,
        "s": "",
        "need": 1,
    }


@pytest.mark.parametrize(
    ("raw", "reason", "param", "text"),
    [
        ({}, "PARAM_INVALID", "need", "param 'need' is required"),
        ({"need": "1", "zzz": "1", "aaa": "1"}, "PARAM_INVALID", "aaa", "unknown param 'aaa'"),
        ({"need": "x"}, "PARAM_INVALID", "need", "param 'need' = 'x' is not an integer"),
        (
            {"need": "1", "n": "6"},
            "PARAM_OUT_OF_RANGE",
            "n",
            "param 'n' = 6 is out of range [-5, 5]",
        ),
        ({"need": "1", "n": " 1"}, "PARAM_INVALID", "n", "is not an integer"),
        ({"need": "1", "n": "1_0"}, "PARAM_INVALID", "n", "is not an integer"),
        ({"need": "1", "n": "1e3"}, "PARAM_INVALID", "n", "is not an integer"),
        ({"need": "1", "big": str(INT64_MAX + 1)}, "PARAM_INVALID", "big", "is not an integer"),
        ({"need": "1", "on": "True"}, "PARAM_INVALID", "on", "is not true or false"),
        ({"need": "1", "mode": "c"}, "PARAM_INVALID", "mode", "is not one of ['a', 'b']"),
        ({"need": "1", "s": "éé"}, "PARAM_OUT_OF_RANGE", "s", "is 4 bytes, longer than 3"),
    ],
)
def test_bad_params_are_refused_with_the_orchestrators_reasons(
    parsing: tandem.Worker, raw: dict[str, str], reason: str, param: str, text: str
) -> None:
    with pytest.raises(ParamError) as info:
        kwargs(parsing, **raw)
    assert info.value.reason == reason and info.value.metadata["param"] == param
    assert text in info.value.message


def test_out_of_range_names_the_limit(parsing: tandem.Worker) -> None:
    with pytest.raises(ParamError) as info:
        kwargs(parsing, need="1", n="9")
    assert info.value.metadata == {"param": "n", "limit": "[-5, 5]", "actual": "9"}


# ---------------------------------------------------------------- error mapping


def test_error_mapping() -> None:
    f = from_exception(tandem.PermanentError("bad page", metadata={"page": "3"}))
    assert f == Failure("OP_FAILED", "PermanentError: bad page", {"page": "3"})
    assert from_exception(tandem.RetryableError("db down")) == Failure(
        "OP_ERROR", "RetryableError: db down"
    )
    assert from_exception(ValueError("nope")) == Failure("OP_ERROR", "ValueError: nope")
    assert from_exception(KeyError("k")).message == "KeyError: 'k'"
    assert from_exception(RuntimeError()).message == "RuntimeError"
    long = from_exception(ValueError("é" * 5000))
    assert len(long.message.encode()) <= MAX_MESSAGE and long.message.startswith("ValueError: é")
    many = from_exception(
        tandem.PermanentError("x", metadata={f"k{i}": "v" * 500 for i in range(40)})
    )
    assert len(many.metadata) == 16 and all(len(v) <= 128 for v in many.metadata.values())


def test_permanent_and_retryable_are_tandem_errors() -> None:
    assert isinstance(tandem.PermanentError("x"), tandem.TandemError)
    assert not tandem.PermanentError("x").retryable
    assert tandem.RetryableError("x").retryable


def test_outputs() -> None:
    assert to_output(b"a") == b"a" and to_output(bytearray(b"b")) == b"b"
    assert to_output(memoryview(b"c")) == b"c" and to_output("é") == "é".encode()
    none = to_output(None)
    assert isinstance(none, Failure) and none.reason == "OP_ERROR"
    assert "returned NoneType" in none.message


def test_error_codes_come_from_the_catalogue() -> None:
    codes = {
        r: runtime.error_proto(Failure(r, "m")).code
        for r in (
            "OP_FAILED",
            "OP_ERROR",
            "PARAM_INVALID",
            "PARAM_OUT_OF_RANGE",
            "OVERLOADED",
            "SHUTTING_DOWN",
            "CANCELLED",
            "TIMEOUT",
        )
    }
    assert codes == {
        "OP_FAILED": 3,
        "OP_ERROR": 2,
        "PARAM_INVALID": 3,
        "PARAM_OUT_OF_RANGE": 3,
        "OVERLOADED": 8,
        "SHUTTING_DOWN": 14,
        "CANCELLED": 1,
        "TIMEOUT": 4,
    }


def test_call_sync_maps_what_the_function_does() -> None:
    import logging

    log = logging.getLogger("test")
    assert call_sync(lambda d: d + b"!", b"x", {}, log) == b"x!"
    assert call_sync(lambda d: 1 / 0, b"x", {}, log) == Failure(
        "OP_ERROR", "ZeroDivisionError: division by zero"
    )


# ---------------------------------------------------------------- context, loading, ids


def test_step_context() -> None:
    sig = LocalSignals()
    ctx = StepContext(StepInfo("job1", 2, 1, "acme.x", time.time() + 60), sig)
    assert (ctx.job_id, ctx.attempt, ctx.step, ctx.op) == ("job1", 2, 1, "acme.x")
    assert not ctx.cancelled and not ctx.is_cancelled()
    left = ctx.time_left()
    assert left is not None and 0 < left <= 60
    ctx.progress(1.7, "a\nb" + "é" * 300)
    latest = sig.latest()
    assert latest is not None and latest[0] == 1.0
    assert "\n" not in latest[1] and len(latest[1].encode()) <= 256
    ctx.progress(-1)
    assert sig.latest() == (0.0, "")
    with pytest.raises(ValueError):
        ctx.progress(float("nan"))
    sig.cancel()
    assert ctx.cancelled


def test_load() -> None:
    assert load("worker_ops:worker").name == "unit"
    assert load("worker_ops").name == "unit"  # OBJECT defaults to `worker`
    for spec, problem in [
        ("no_such_module_xyz:worker", "cannot import"),
        ("worker_ops:nothing", "has no 'nothing'"),
        ("worker_ops:upper", "not a tandem.Worker"),
        (":worker", "expected MODULE:OBJECT"),
    ]:
        with pytest.raises(ValueError, match=problem):
            load(spec)


def test_urls_are_logged_without_credentials() -> None:
    assert (
        runtime.redact("nats://u:secret@h:4222,nats://h2:4222")
        == "nats://***@h:4222,nats://h2:4222"
    )
    assert runtime.redact("tls://token@h") == "tls://***@h"


def test_ids_and_config() -> None:
    wid = runtime.make_id("a name/with:odd chars" * 5)
    assert runtime._ID_RE.fullmatch(wid) and wid.endswith(
        f"-{os.getpid()}-" + wid.rsplit("-", 1)[1]
    )
    with pytest.raises(ValueError, match="worker id"):
        runtime.WorkerConfig(worker_id="has.dot").check()
    with pytest.raises(ValueError, match="pool"):
        runtime.WorkerConfig(pool="fork").check()  # type: ignore[arg-type]
    rt = runtime.Runtime(load("worker_ops:worker"), runtime.WorkerConfig(pool="thread"))
    assert (rt.pool, rt.concurrency, rt.backlog) == ("thread", 16, 8)


def test_cli_worker_options_and_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["worker"].format_help()  # type: ignore[union-attr]
    for var in (
        "TANDEM_NATS_URL",
        "TANDEM_NATS_USER",
        "TANDEM_NATS_PASSWORD",
        "TANDEM_NATS_CREDS",
        "TANDEM_WORKER_CONCURRENCY",
        "TANDEM_WORKER_POOL",
        "TANDEM_WORKER_HEARTBEAT_INTERVAL",
        "TANDEM_WORKER_CANCEL_GRACE",
        "TANDEM_WORKER_DRAIN_TIMEOUT",
        "TANDEM_WORKER_LOG_LEVEL",
        "TANDEM_WORKER_ID",
    ):
        assert var in help_text
    monkeypatch.setenv("TANDEM_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("TANDEM_WORKER_POOL", "thread")
    monkeypatch.setenv("TANDEM_NATS_URL", "nats://n:1")
    ns = cli.build_parser().parse_args(["worker", "m:w", "--heartbeat-interval", "0.5"])
    assert (ns.concurrency, ns.pool, ns.nats_url, ns.heartbeat_interval) == (
        3,
        "thread",
        "nats://n:1",
        0.5,
    )
    assert ns.cancel_grace == 5.0 and ns.drain_timeout == 30.0


def test_cli_worker_bad_target_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["worker", "worker_ops:nothing"]) == cli.EXIT_USAGE
    assert "has no 'nothing'" in capsys.readouterr().err


# ---------------------------------------------------------------- runners


def info(op: str) -> StepInfo:
    return StepInfo("job", 1, 0, op)


def test_runners_in_process() -> None:
    w = load("worker_ops:worker")

    async def main() -> None:
        upper = w.get("unit.upper")
        assert upper is not None
        t = ThreadRunner()
        r = await t.begin(upper, b"ab", {"times": 2}, info("unit.upper"))
        assert await r.outcome == b"ABAB"
        boom = w.get("unit.boom")
        assert boom is not None
        r = await t.begin(boom, b"", {}, info("unit.boom"))
        assert await r.outcome == Failure("OP_ERROR", "ValueError: bad things")

        aw = tandem.Worker("a")

        @aw.op("a.wait")
        async def wait(data: bytes, *, ctx: tandem.StepContext) -> bytes:
            ctx.progress(0.25, "waiting")
            await asyncio.sleep(3600)
            return data

        op = aw.get("a.wait")
        assert op is not None
        r = await AsyncRunner().begin(op, b"", {}, info("a.wait"))
        await asyncio.sleep(0.01)
        assert r.signals.latest() == (0.25, "waiting")
        r.hard_stop()
        with pytest.raises(asyncio.CancelledError):
            await r.outcome

    asyncio.run(main())


@pytest.mark.timeout(120)
def test_process_runner_cancels_kills_and_replaces() -> None:
    w = load("worker_ops:worker")

    async def main() -> None:
        pool = ProcessRunner(1, ["worker_ops"], "warning", {})
        await pool.start()
        try:
            [first] = pool.pids()
            upper, prog, stub, ex = (
                w.get(n) for n in ("unit.upper", "unit.progress", "unit.stubborn", "unit.exit")
            )
            assert upper and prog and stub and ex
            r = await pool.begin(upper, b"x", {"times": 3}, info("unit.upper"))
            assert await r.outcome == b"XXX" and r.pid == first
            # Cooperative: progress and the cancel flag cross the process boundary.
            r = await pool.begin(prog, b"", {}, info("unit.progress"))
            while r.signals.latest() is None:
                await asyncio.sleep(0.01)
            assert r.signals.latest() == (0.5, f"pid {first}")
            r.signals.cancel()
            assert await r.outcome == b"saw the cancel"
            # Hard: a busy loop that ignores the flag is killed and replaced.
            r = await pool.begin(stub, b"", {}, info("unit.stubborn"))
            while r.signals.latest() is None:
                await asyncio.sleep(0.01)
            r.hard_stop()
            out = await r.outcome
            assert isinstance(out, Failure) and "killed by signal 9" in out.message
            r = await pool.begin(upper, b"y", {}, info("unit.upper"))  # waits for the new child
            assert await r.outcome == b"Y" and r.pid != first
            # A child that dies by itself is reported and replaced too.
            r = await pool.begin(ex, b"", {}, info("unit.exit"))
            out = await r.outcome
            assert isinstance(out, Failure) and "exited (3)" in out.message
            r = await pool.begin(upper, b"z", {}, info("unit.upper"))
            assert await r.outcome == b"Z"
        finally:
            await pool.close()
        assert pool.pids() == []

    asyncio.run(main())

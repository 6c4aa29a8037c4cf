"""`tandem top` (frames against the stub server, the live loop, keys from a
real pseudo-terminal) and `tandem jobs` / Client.jobs."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from typing import Any

import pytest
from rich.console import Console

import tandem
from fake_server import FakeServer
from tandem import _top, cli
from tandem.v1 import jobs_pb2
from test_cli import _worker_info


def _queues() -> list[jobs_pb2.QueueInfo]:
    return [
        jobs_pb2.QueueInfo(
            name="images",
            depth=12,
            in_flight=3,
            workers=4,
            min_workers=1,
            max_workers=8,
            completed_per_second=7.25,
        ),
        jobs_pb2.QueueInfo(
            name="slow",
            depth=0,
            in_flight=0,
            workers=1,
            min_workers=1,
            max_workers=1,
            dead_letters=5,
            paused=True,
        ),
    ]


def text_of(renderable: Any, width: int = 140) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def row(text: str, first: str) -> list[str]:
    """The cells of the table row that starts with ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{text}")


def test_a_frame_shows_queues_rates_and_workers(fake: FakeServer) -> None:
    fake.service.queues = _queues()
    fake.service.workers = [_worker_info()]
    with tandem.Client(fake.address) as client:
        frame = _top.fetch(client, fake.address)
    assert frame.error is None
    text = text_of(_top.render(frame, "q: quit"))
    assert fake.address in text and frame.at.strftime("%H:%M:%S") in text
    assert "queues 2  depth 12  running 3  completed 7.2/s  dead letters 5  op workers 1" in text
    assert row(text, "images") == ["images", "12", "3", "4 (1-8)", "7.2", "0", "no"]
    assert row(text, "slow") == ["slow", "0", "0", "1 (1-1)", "0.0", "5", "paused"]
    cells = row(text, "acme-host-1-abc")
    assert cells[1:6] == ["acme.ocr", "process", "1/4", "7", "2"]
    assert re.fullmatch(r"\d+\.\ds ago", cells[6])
    assert text.rstrip().endswith("q: quit")


def test_a_failed_refresh_shows_the_error_and_what_it_got(fake: FakeServer) -> None:
    fake.service.queues = _queues()

    class Half:
        def queues(self) -> list[tandem.QueueInfo]:
            return [tandem.QueueInfo.from_proto(q) for q in _queues()]

        def workers(self) -> list[tandem.WorkerInfo]:
            raise tandem.Unavailable("orchestrator draining", reason="SHUTTING_DOWN")

    frame = _top.fetch(Half(), "orch:1")  # type: ignore[arg-type]
    assert isinstance(frame.error, tandem.Unavailable) and len(frame.queues) == 2
    text = text_of(_top.render(frame))
    assert "refresh failed" in text and "orchestrator draining" in text
    assert row(text, "images")[1] == "12"


def test_top_once_prints_one_frame(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    fake.service.queues = _queues()
    assert cli.run(["top", "--once", "--address", fake.address]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.count("tandem top") == 1 and "images" in out and "no live op workers" in out
    assert cli.run(["top", "--once", "--json", "--address", fake.address]) == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["address"] == fake.address and doc["error"] is None
    assert [(q["name"], q["paused"], q["dead_letters"]) for q in doc["queues"]] == [
        ("images", False, 0),
        ("slow", True, 5),
    ]


def test_top_once_unreachable_is_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["top", "--once", "--address", "127.0.0.1:1"]) == cli.EXIT_UNAVAILABLE
    assert "cannot reach 127.0.0.1:1" in capsys.readouterr().err


def test_top_bad_interval_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["top", "-n", "0", "--address", "127.0.0.1:1"]) == cli.EXIT_USAGE


class QuitAfter:
    def __init__(self, n: int) -> None:
        self.n = n
        self.waits: list[float] = []

    def quit_within(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return len(self.waits) >= self.n


def test_the_live_view_redraws_until_q(fake: FakeServer) -> None:
    fake.service.queues = _queues()
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, height=40)
    keys = QuitAfter(3)
    with tandem.Client(fake.address) as client:
        _top.run(client, "a:1", interval=0.5, once=False, as_json=False, console=console, keys=keys)
    assert keys.waits == [0.5, 0.5, 0.5]
    assert fake.service.traces_of("ListQueues") == ["", "", ""]
    out = screen.getvalue()
    assert "\x1b[?1049h" in out and "\x1b[?1049l" in out  # the alternate screen, left again
    assert out.count("tandem top") == 3 and "q: quit · every 0.5 s" in out


def test_batch_mode_prints_frame_after_frame(fake: FakeServer) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120)  # not a terminal
    with tandem.Client(fake.address) as client:
        _top.run(
            client,
            "a:1",
            interval=0.1,
            once=False,
            as_json=True,
            console=console,
            keys=QuitAfter(2),
        )
    frames = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [f["queues"][0]["name"] for f in frames] == ["default", "default"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs a pty")
def test_keys_read_q_from_a_terminal_without_enter() -> None:
    import pty
    import termios

    master, slave = pty.openpty()
    stream = os.fdopen(slave, "r")
    try:
        before = termios.tcgetattr(slave)
        with _top.Keys(stream) as keys:
            assert not termios.tcgetattr(slave)[3] & termios.ICANON  # cbreak
            os.write(master, b"x")
            assert not keys.quit_within(0.2)
            os.write(master, b"q")
            assert keys.quit_within(5)
        assert termios.tcgetattr(slave) == before
        with _top.Keys(io.StringIO()) as not_a_tty:  # only waits
            assert not not_a_tty.quit_within(0.01)
    finally:
        stream.close()
        os.close(master)


# ---------------------------------------------------------------- tandem jobs


def _some_jobs(fake: FakeServer) -> list[str]:
    with tandem.Client(fake.address) as client:
        return [
            client.submit("hash.sha256", b"a", queue="images", labels={"user": "ann"}).id,
            client.submit("hash.sha256", b"b", queue="images", labels={"user": "bob"}).id,
            client.submit(["compress.zstd", "hash.sha256"], b"c", queue="text").id,
        ]


def test_client_jobs_filters(fake: FakeServer) -> None:
    a, b, c = _some_jobs(fake)
    with tandem.Client(fake.address) as client:
        assert [j.id for j in client.jobs().jobs] == [c, b, a]
        assert [j.id for j in client.jobs("images", label="user=ann").jobs] == [a]
        assert [j.id for j in client.jobs(label="user").jobs] == [b, a]
        found = client.jobs(state="succeeded", limit=1)
        assert [j.id for j in found.jobs] == [c] and found.scanned == 3 and not found.truncated
        assert client.jobs(state=tandem.JobState.DEAD).jobs == []
        with pytest.raises(ValueError, match="unknown job state 'done'"):
            client.jobs(state="done")
    req = fake.service.list_requests[2]
    assert (req.label_key, req.label_value, req.queue) == ("user", "", "")
    assert fake.service.list_requests[3].state == jobs_pb2.JOB_STATE_SUCCEEDED


def test_jobs_command(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = _some_jobs(fake)
    assert cli.run(["jobs", "--address", fake.address]) == cli.EXIT_OK
    out = capsys.readouterr().out
    cells = row(out, c)
    assert cells[1:5] == ["SUCCEEDED", "text", "compress.zstd → hash.sha256", "1/5"]
    assert row(out, a)[6] == "user=ann"
    assert "3 jobs; looked at the newest 3 records" in out
    args = ["jobs", "-q", "images", "--state", "SUCCEEDED", "--label", "user=bob", "--json"]
    assert cli.run([*args, "--address", fake.address]) == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in doc["jobs"]] == [b] and doc["scanned"] == 3
    assert cli.run(["jobs", "--address", fake.address, "--state", "dead"]) == cli.EXIT_OK
    assert "no jobs found" in capsys.readouterr().out


def test_jobs_takes_one_label(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["jobs", "--label", "a=1", "--label", "b=2", "--address", "127.0.0.1:1"]
    assert cli.run(args) == cli.EXIT_USAGE
    assert "one label" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.run(["jobs", "--state", "done"])
    assert info.value.code == cli.EXIT_USAGE

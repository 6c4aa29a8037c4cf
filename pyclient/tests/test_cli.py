"""The CLI: argument parsing, output, exit codes (against the stub server)."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from pathlib import Path

import pytest

from fake_server import FakeServer, failed_outcome
from tandem import cli
from tandem._types import Step


def test_ops_and_params_build_a_pipeline() -> None:
    ns = cli.build_parser().parse_args(
        [
            "submit",
            "--op",
            "decompress.gzip",
            "--op",
            "image.thumbnail",
            "-p",
            "max_width=64",
            "-p",
            "format=png",
            "--op",
            "hash.blake3",
            "--data",
            "x",
        ]
    )
    assert cli._steps(ns) == [
        Step("decompress.gzip"),
        Step("image.thumbnail", max_width="64", format="png"),
        Step("hash.blake3"),
    ]


def test_steps_json() -> None:
    ns = cli.build_parser().parse_args(
        ["local", "--steps", '[{"op": "compress.zstd", "params": {"level": 3}}]', "-d", "x"]
    )
    assert cli._steps(ns) == [Step("compress.zstd", level="3")]


def test_param_before_op_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["submit", "-p", "level=3", "--op", "compress.zstd"])
    assert info.value.code == cli.EXIT_USAGE


def test_global_flags_after_the_command() -> None:
    ns = cli.build_parser().parse_args(["ops", "--json", "--address", "h:1"])
    assert ns.json and ns.address == "h:1"


def test_no_op_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["submit", "--data", "x", "--address", "127.0.0.1:1"]) == cli.EXIT_USAGE
    assert "no op given" in capsys.readouterr().err


def test_submit_wait_prints_hex_digest(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    f = tmp_path / "in.txt"
    f.write_bytes(b"hello")
    code = cli.run(
        ["--address", fake.address, "submit", "--op", "hash.sha256", "--file", str(f), "--wait"]
    )
    assert code == cli.EXIT_OK
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"hello").hexdigest()


def test_submit_json_and_output_file(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "digest.bin"
    code = cli.run(
        [
            "submit",
            "--address",
            fake.address,
            "--json",
            "--op",
            "hash.sha256",
            "-d",
            "hello",
            "--wait",
            "-o",
            str(out),
        ]
    )
    assert code == cli.EXIT_OK
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] == "SUCCEEDED"
    assert out.read_bytes() == hashlib.sha256(b"hello").digest()


def test_submit_no_wait_prints_id(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["submit", "--address", fake.address, "--op", "hash.sha256", "-d", "x"]) == 0
    assert capsys.readouterr().out.strip().startswith("job-")


def test_failed_job_is_exit_1_with_one_line(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.service.outcome = failed_outcome("INPUT_CORRUPT")
    code = cli.run(["submit", "--address", fake.address, "--op", "image.info", "-d", "x", "--wait"])
    assert code == cli.EXIT_JOB_FAILED
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FAILED" in err and "INPUT_CORRUPT" in err
    assert "Traceback" not in err


def test_unavailable_is_exit_4(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["get", "x", "--address", "127.0.0.1:1", "--timeout", "1"])
    assert code == cli.EXIT_UNAVAILABLE
    assert capsys.readouterr().err.startswith("tandem: error:")


def test_not_found_is_exit_3_and_json_error(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.run(["get", "nope", "--address", fake.address, "--json"])
    assert code == cli.EXIT_REJECTED
    doc = json.loads(capsys.readouterr().err)
    assert doc["error"]["reason"] == "JOB_NOT_FOUND" and doc["error"]["type"] == "NotFound"


def test_env_address(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_ADDRESS", fake.address)
    assert cli.run(["queues", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queues"][0]["name"] == "default"


def test_ops_table(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["ops", "--address", fake.address]) == 0
    out = capsys.readouterr().out
    assert "compress.zstd" in out and "level:int[1..22]=3" in out


def test_dlq_commands(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    from tandem.v1 import jobs_pb2

    fake.service.outcome = failed_outcome("COMPUTE_UNAVAILABLE", 14, jobs_pb2.JOB_STATE_DEAD)
    assert cli.run(["submit", "--address", fake.address, "--op", "hash.sha256", "-d", "x"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert cli.run(["dlq", "list", "--address", fake.address]) == 0
    out = capsys.readouterr().out
    assert "1 dead letter in queue default" in out and job_id in out
    assert cli.run(["dlq", "retry", "--address", fake.address]) == cli.EXIT_USAGE
    assert cli.run(["dlq", "retry", "--all", "--address", fake.address, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"retried_job_ids": [job_id]}


def test_map_folder_summary(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i in range(7):
        (tmp_path / f"f{i}.txt").write_bytes(str(i).encode())
    outdir = tmp_path / "out"
    code = cli.run(
        [
            "map",
            "--address",
            fake.address,
            "--json",
            "--op",
            "hash.sha256",
            str(tmp_path),
            "--glob",
            "*.txt",
            "--output-dir",
            str(outdir),
            "--window",
            "3",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 7 and summary["succeeded"] == 7 and summary["failed"] == 0
    assert (outdir / "f3.txt.out").read_bytes() == hashlib.sha256(b"3").digest()


def test_exit_codes_are_documented() -> None:
    for code in (0, 1, 2, 3, 4, 5, 130):
        assert f"  {code} " in cli.EPILOG


def test_map_where_every_submit_is_rejected(
    fake: FakeServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tandem.v1 import errors_pb2

    fake.service.item_script = lambda n, r: errors_pb2.Error(
        code=3, reason=errors_pb2.UNKNOWN_OP, message="unknown op"
    )
    for i in range(3):
        (tmp_path / f"f{i}").write_bytes(b"x")
    code = cli.run(["map", "--address", fake.address, "--json", "--op", "nope", str(tmp_path)])
    assert code == cli.EXIT_JOB_FAILED
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == 3 and summary["succeeded"] == 0


def test_queue_watch_goes_on_after_a_break_with_a_warning(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import grpc

    from fake_server import status_error
    from tandem.v1 import jobs_pb2

    fake.service.queue_events = [jobs_pb2.Job(id="j1", state=jobs_pb2.JOB_STATE_RUNNING)]
    fake.service.queue_end = status_error(
        grpc.StatusCode.ABORTED, "BROKER_UNAVAILABLE", "the connection to NATS was lost"
    )
    code = cli.run(
        ["watch", "--address", fake.address, "--queue", "default", "--wait-timeout", "0.5"]
    )
    assert code == cli.EXIT_UNAVAILABLE  # the --wait-timeout, not the break
    captured = capsys.readouterr()
    assert captured.out.count("j1  RUNNING") >= 2
    assert "events since may be missing; watching again" in captured.err
    assert "timed out" in captured.err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.run(["--debug", "get", "x", "--address", "127.0.0.1:1", "--timeout", "1"])
    assert code == cli.EXIT_UNAVAILABLE
    assert "Traceback" in capsys.readouterr().err


def test_ops_table_shows_the_provider(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["ops", "--address", fake.address]) == 0
    out = capsys.readouterr().out
    ocr = next(line for line in out.splitlines() if "acme.ocr" in line)
    zstd = next(line for line in out.splitlines() if "compress.zstd" in line)
    assert "worker (2 live)" in ocr and "compute" in zstd
    assert cli.run(["ops", "--address", fake.address, "--json"]) == 0
    ops = {o["name"]: o for o in json.loads(capsys.readouterr().out)["ops"]}
    assert ops["acme.ocr"]["provider"] == "worker" and ops["acme.ocr"]["live_workers"] == 2
    assert ops["compress.zstd"]["provider"] == "compute"


def _worker_info() -> Any:
    from google.protobuf import duration_pb2, timestamp_pb2

    from tandem.v1 import compute_pb2, worker_pb2

    seen = timestamp_pb2.Timestamp()
    seen.GetCurrentTime()
    return worker_pb2.WorkerInfo(
        id="acme-host-1-abc",
        ops=[compute_pb2.OpSpec(name="acme.ocr", provider="worker")],
        concurrency=4,
        in_flight=1,
        pool="process",
        host="host",
        pid=1,
        version="0.1.0",
        started_at=seen,
        last_heartbeat=seen,
        heartbeat_interval=duration_pb2.Duration(seconds=1),
        succeeded=7,
        failed=2,
    )


def test_workers_command(fake: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["workers", "--address", fake.address]) == 0
    assert "no live workers" in capsys.readouterr().out
    fake.service.workers = [_worker_info()]
    assert cli.run(["workers", "--address", fake.address]) == 0
    out = capsys.readouterr().out
    assert "acme-host-1-abc" in out and "acme.ocr" in out and "1/4" in out
    assert cli.run(["workers", "--address", fake.address, "--json"]) == 0
    [w] = json.loads(capsys.readouterr().out)["workers"]
    assert w["ops"] == ["acme.ocr"] and w["succeeded"] == 7 and w["heartbeat_interval"] == 1.0


def test_client_workers_and_job_progress(fake: FakeServer) -> None:
    import tandem
    from tandem._types import Job
    from tandem.v1 import jobs_pb2

    fake.service.workers = [_worker_info()]
    with tandem.Client(fake.address) as client:
        [w] = client.workers()
    assert isinstance(w, tandem.WorkerInfo)
    assert (w.id, w.pool, w.concurrency, w.in_flight, w.failed) == (
        "acme-host-1-abc",
        "process",
        4,
        1,
        2,
    )
    assert w.ops[0].name == "acme.ocr" and w.ops[0].provider == "worker"
    assert w.heartbeat_interval == 1.0 and w.last_heartbeat is not None and not w.draining
    msg = jobs_pb2.Job(id="j", state=jobs_pb2.JOB_STATE_RUNNING)
    msg.progress.step, msg.progress.fraction, msg.progress.message = 1, 0.5, "page 3/6"
    job = Job.from_proto(msg)
    assert job.progress == tandem.Progress(1, 0.5, "page 3/6", None)
    assert "progress: step 1 50% page 3/6" in cli._job_line(job)
    assert job.to_dict()["progress"]["message"] == "page 3/6"
    assert Job.from_proto(jobs_pb2.Job(id="k")).progress is None

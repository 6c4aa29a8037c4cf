"""End to end: pipelines, a 50 MiB payload, the CLI, the async client."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import tandem
from harness import Stack


def test_pipeline_compress_decompress_hash(client: tandem.Client) -> None:
    data = os.urandom(200_000) + b"a" * 300_000
    steps = [
        tandem.Step("compress.zstd", level=3),
        tandem.Step("decompress.zstd"),
        tandem.Step("hash.sha256"),
    ]
    assert client.submit(steps, data).result(timeout=60) == hashlib.sha256(data).digest()


def test_pipeline_gzip_from_python(client: tandem.Client) -> None:
    data = b"tandem pipeline " * 10_000
    out = client.submit(["decompress.gzip", "hash.sha256"], gzip.compress(data)).result(timeout=60)
    assert out == hashlib.sha256(data).digest()


def test_50_mib_payload(client: tandem.Client) -> None:
    data = os.urandom(1 << 20) * 50
    handle = client.submit("hash.sha256", data)
    assert handle.job.payload_size == len(data)
    assert handle.result(timeout=120) == hashlib.sha256(data).digest()


def test_50_mib_result(client: tandem.Client) -> None:
    data = os.urandom(1 << 20) * 50
    steps = [tandem.Step("compress.zstd", level=1), tandem.Step("decompress.zstd")]
    job = client.submit(steps, data).wait(timeout=120)
    assert job.state is tandem.JobState.SUCCEEDED, job.last_error
    assert job.result_size == len(data)
    assert job.result == data


def test_submit_many_and_map(client: tandem.Client) -> None:
    inputs = [f"item {i}".encode() for i in range(300)]
    results = list(client.map("hash.sha256", inputs, batch_size=64, window=128, timeout=120))
    assert results == [hashlib.sha256(x).digest() for x in inputs]


def test_async_client(stack: Stack) -> None:
    async def main() -> None:
        async with tandem.AsyncClient(stack.address) as client:
            handles = [await client.submit("hash.sha256", bytes([i]) * 100) for i in range(20)]
            results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
            assert results == [hashlib.sha256(bytes([i]) * 100).digest() for i in range(20)]

    asyncio.run(main())


def test_cli_submit_wait(stack: Stack, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "in.bin")
    with open(path, "wb") as f:
        f.write(b"cli bytes")
    env = {**os.environ, "TANDEM_ADDRESS": stack.address}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem.cli",
            "submit",
            "--op",
            "hash.sha256",
            "--file",
            path,
            "--wait",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == hashlib.sha256(b"cli bytes").hexdigest()
    bad = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "submit", "--op", "no.such.op", "--data", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 3, bad.stderr
    assert "UNKNOWN_OP" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_ops(stack: Stack) -> None:
    env = {
        **os.environ,
        "TANDEM_ADDRESS": stack.address,
        "TANDEM_COMPUTE_ADDRESS": stack.compute_address,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "ops", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "hash.sha256" in proc.stdout


def _cli(stack: Stack, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TANDEM_ADDRESS": stack.address, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        input=None if input is None else input.decode(),
    )


def test_cli_map_folder(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(40):
        (folder / f"f{i:02d}.txt").write_bytes(f"file {i}\n".encode() * 50)
    (folder / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    out = tmp_path / "out"
    proc = _cli(stack, "map", "--op", "text.stats", str(folder), "--output-dir", str(out), "--json")
    assert proc.returncode == 1, proc.stderr  # one input fails
    summary = json.loads(proc.stdout)
    assert summary["count"] == 41 and summary["succeeded"] == 40 and summary["failed"] == 1
    assert "INPUT_CORRUPT" in summary["failures"][0]["error"]
    assert summary["latency_ms_p50"] > 0
    stats = json.loads((out / "f07.txt.json").read_bytes())
    assert stats["lines"] == 50
    human = _cli(stack, "map", "--op", "hash.sha256", str(folder), "--glob", "f0*.txt")
    assert human.returncode == 0, human.stderr
    assert "throughput" in human.stdout and "p50" in human.stdout


def test_cli_local_and_stdin(stack: Stack) -> None:
    proc = _cli(stack, "local", "--op", "hash.sha256", input=b"stdin bytes")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == hashlib.sha256(b"stdin bytes").hexdigest()
    bad = _cli(stack, "local", "--op", "compress.zstd", "-p", "level=99", "-d", "x")
    assert bad.returncode == 3 and "PARAM_OUT_OF_RANGE" in bad.stderr


def test_cli_dlq_list_retry_purge(stack: Stack, client: tandem.Client) -> None:
    from harness import debug_fail_params

    steps = [tandem.Step("debug.fail", debug_fail_params(client, "UNAVAILABLE"))]
    h = client.submit(steps, b"cli dlq", queue="fast")
    assert h.wait(timeout=60).state is tandem.JobState.DEAD
    listed = _cli(stack, "dlq", "list", "-q", "fast", "--json")
    assert listed.returncode == 0, listed.stderr
    assert h.id in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    purged = _cli(stack, "dlq", "purge", "-q", "fast", h.id)
    assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
    again = _cli(stack, "get", h.id, "--json")
    assert again.returncode in (0, 3)


def test_cli_watch_and_cancel(stack: Stack, client: tandem.Client) -> None:
    from harness import eventually, sleep_params

    h = client.submit([tandem.Step("debug.sleep", sleep_params(client, 5000))], b"", queue="fast")
    eventually(lambda: client.get(h.id).state is tandem.JobState.RUNNING, 20, "job to run")
    cancel = _cli(stack, "cancel", h.id)
    assert cancel.returncode == 0, cancel.stderr
    watch = _cli(stack, "watch", h.id, "--json")
    assert watch.returncode == 1  # the job did not succeed
    assert json.loads(watch.stdout.splitlines()[-1])["state"] == "CANCELLED"


def test_cli_pause_resume_and_async_health(stack: Stack) -> None:
    paused = _cli(stack, "pause", "single", "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] is True
    resumed = _cli(stack, "resume", "single")
    assert resumed.returncode == 0 and "running" in resumed.stdout

    async def health() -> bool:
        async with tandem.AsyncClient(stack.address) as client:
            return await client.health()

    assert asyncio.run(health())
    with stack.client() as c:
        assert c.health()


def test_installed_console_script() -> None:
    script = Path(sys.executable).parent / "tandem"
    assert script.exists(), "the `tandem` console script is not installed (pip install ./pyclient)"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("tandem ")

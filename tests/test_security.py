"""Tandem with security on, end to end through real processes: compute with
mTLS and a bearer token, the orchestrator with TLS, tokens (made and revoked
with ``tandem-orchestrator token``) and encryption at rest, the Python client
and CLI with a CA and a token. The finer cases (every malformed header, the
scope matrix, certificate rotation under load, the exposure refusal) are in
the Go and Rust suites; this proves the three parts agree."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tandem
from harness import Stack, eventually, make_stack, orchestrator_bin
from tandem._health import check_address

pytestmark = pytest.mark.skipif(
    os.environ.get("TANDEM_TARGET") == "compose", reason="starts its own secure stack"
)


@dataclass
class Secure:
    stack: Stack
    certs: Path
    admin: str  # a token with every scope on every queue

    def token(self, *args: str) -> str:
        out = subprocess.run(
            [orchestrator_bin(), "token", "create", "--nats-url", self.stack.nats_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def revoke(self, token_id: str) -> None:
        out = subprocess.run(
            [orchestrator_bin(), "token", "revoke", "--nats-url", self.stack.nats_url, token_id],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr

    def client(self, token: str | None) -> tandem.Client:
        return self.stack.client(ca=str(self.certs / "ca.pem"), token=token)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    tmp = tmp_path_factory.mktemp("secure")
    certs = tmp / "certs"
    made = subprocess.run(
        [orchestrator_bin(), "dev-certs", "--out", str(certs), "--hosts", "localhost,127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    (certs / "compute-token").write_text(uuid.uuid4().hex + "\n")
    keys = tmp / "keys"
    keys.write_text("k1:" + base64.b64encode(os.urandom(32)).decode() + "\n")
    keys.chmod(0o600)
    c = str(certs)
    ready = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(),
        (certs / "client-key.pem").read_bytes(),
        (certs / "client.pem").read_bytes(),
    )
    stack = make_stack(
        tmp,
        name="secure",
        ready_credentials=ready,
        compute_args=(
            "--tls-cert",
            f"{c}/server.pem",
            "--tls-key",
            f"{c}/server-key.pem",
            "--tls-client-ca",
            f"{c}/ca.pem",
            "--token-file",
            f"{c}/compute-token",
        ),  # fmt: skip
        orchestrator_args=(
            "--tls-cert",
            f"{c}/server.pem",
            "--tls-key",
            f"{c}/server-key.pem",
            "--auth",
            "--compute-ca",
            f"{c}/ca.pem",
            "--compute-cert",
            f"{c}/client.pem",
            "--compute-key",
            f"{c}/client-key.pem",
            "--compute-token-file",
            f"{c}/compute-token",
            "--encryption-key-file",
            str(keys),
        ),  # fmt: skip
    )
    try:
        stack.start()
        s = Secure(stack, certs, "")
        s.admin = s.token("--id", "admin", "--all-queues", "--scope", "submit,read,cancel,admin")
        yield s
    finally:
        stack.stop()


def test_a_job_runs_over_tls_with_a_token(secure: Secure) -> None:
    c = secure.client(secure.admin)
    payload = b"over tls " + uuid.uuid4().bytes
    job = c.submit("hash.sha256", payload).wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED, job
    assert job.result == hashlib.sha256(payload).digest()


def test_callers_without_the_right_token_are_refused(secure: Secure) -> None:
    with pytest.raises(tandem.Unauthenticated):
        secure.client(None).submit("hash.sha256", b"x")
    with pytest.raises(tandem.Unauthenticated):
        secure.client("tdm_nobody_" + "A" * 43).submit("hash.sha256", b"x")
    reader = secure.token("--id", "reader", "--all-queues", "--read-only")
    with pytest.raises(tandem.PermissionDenied) as denied:
        secure.client(reader).submit("hash.sha256", b"x")
    assert denied.value.metadata.get("scope") == "submit"
    # A job in a queue the caller cannot read does not exist for it.
    job = secure.client(secure.admin).submit("hash.sha256", b"hidden")
    other = secure.token("--id", "other", "--queue", "elsewhere", "--scope", "submit,read")
    with pytest.raises(tandem.NotFound):
        secure.client(other).get(job.id)


def test_plaintext_against_the_tls_port_fails_cleanly(secure: Secure) -> None:
    address = secure.stack.address
    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE, err.value
    ca = (secure.certs / "ca.pem").read_bytes()
    assert check_address(address, timeout=5, credentials=grpc.ssl_channel_credentials(ca))


def test_a_revoked_token_stops_working_within_seconds(secure: Secure) -> None:
    token = secure.token("--id", "short-lived", "--all-queues", "--scope", "submit,read")
    c = secure.client(token)
    c.submit("hash.sha256", b"before")
    secure.revoke("short-lived")
    start = time.monotonic()

    def refused() -> bool:
        try:
            c.submit("hash.sha256", b"after")
        except tandem.Unauthenticated:
            return True
        return False

    eventually(refused, 10, "the revoked token to be refused")
    print(f"revocation took effect after {time.monotonic() - start:.2f} s")


def test_admin_actions_are_in_the_audit_trail(secure: Secure) -> None:
    c = secure.client(secure.admin)
    c.pause_queue("default")
    c.resume_queue("default")
    job = c.submit("hash.sha256", b"to cancel " + uuid.uuid4().bytes)
    try:
        c.cancel(job.id)
    except tandem.Conflict:
        pass  # it finished first; the cancel is audited either way
    env = {
        **os.environ,
        "TANDEM_CA": str(secure.certs / "ca.pem"),
        "TANDEM_TOKEN": secure.admin,
    }
    cmd = [sys.executable, "-m", "tandem.cli", "--address", secure.stack.address]
    cmd += ["audit", "--json", "--limit", "1000"]

    def entries() -> list[dict[str, object]]:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def audited() -> bool:
        es = entries()
        actions = {(e["actor"], e["action"]) for e in es}
        return {
            ("token:admin", "PauseQueue"),
            ("token:admin", "ResumeQueue"),
            ("token:admin", "CancelJob"),
        } <= actions and any(e["action"] == "token.create" for e in es)

    eventually(audited, 30, "the admin actions to be audited with the caller's identity")


def test_payloads_and_results_are_not_stored_in_plaintext(secure: Secure) -> None:
    c = secure.client(secure.admin)
    marker = b"MARKER-" + uuid.uuid4().hex.encode()
    job = c.submit("text.stats", marker * 50).wait(timeout=60)
    assert job.state is tandem.JobState.SUCCEEDED, job
    echoed = c.submit("compress.zstd", marker * 50).wait(timeout=60)
    assert echoed.state is tandem.JobState.SUCCEEDED, echoed
    store = secure.stack.tmp / "nats"
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files, "the NATS store holds files"
    hits = [p for p in files if marker in p.read_bytes()]
    assert not hits, f"the plaintext payload is on disk in {hits}"

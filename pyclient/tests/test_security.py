"""TLS, mTLS and bearer tokens of the client and the CLI, against a real gRPC
server in this process that serves TLS with certificates made here (a
JobService that records what each call carried), and the mapping of the
access reasons (UNAUTHENTICATED, TOKEN_EXPIRED, PERMISSION_DENIED,
RATE_LIMITED) to exceptions."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

import certs as certs_mod
import tandem
from fake_server import status_error
from tandem import cli
from tandem._security import SecurityError, is_loopback, resolve
from tandem.v1 import jobs_pb2, jobs_pb2_grpc

TOKEN = "tdm_demo_" + "A" * 43
DONE = jobs_pb2.JOB_STATE_SUCCEEDED


class Recorder(jobs_pb2_grpc.JobServiceServicer):
    """Answers GetJob, WatchJobs and ListAudit; records each call's method,
    metadata and the client certificate's common name (mTLS)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        #: Statuses GetJob fails with, first to last, before it answers.
        self.get_failures: list[grpc.Status] = []
        #: ListAudit: the entries it holds; fails with this once exhausted.
        self.audit: list[jobs_pb2.AuditEntry] = []
        self.audit_end: grpc.Status | None = None

    def _record(self, method: str, ctx: grpc.ServicerContext, request: Any) -> None:
        auth = ctx.auth_context()
        cn = [v.decode() for v in auth.get("x509_common_name", [])]
        with self.lock:
            self.calls.append(
                {
                    "method": method,
                    "metadata": dict(ctx.invocation_metadata()),
                    "client_cn": cn,
                    "request": request,
                }
            )

    def of(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["method"] == method]

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("GetJob", context, request)
        with self.lock:
            failure = self.get_failures.pop(0) if self.get_failures else None
        if failure is not None:
            context.abort_with_status(failure)
        job = jobs_pb2.Job(id=request.job_id, state=DONE, result_size=2, max_attempts=1)
        if request.include_result:
            job.result = b"ok"
        return jobs_pb2.GetJobResponse(job=job)

    def WatchJobs(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._record("WatchJobs", context, request)
        for job_id in request.job_ids:
            # Without the result bytes: a wait then asks GetJob for them.
            yield jobs_pb2.WatchJobsResponse(
                job=jobs_pb2.Job(id=job_id, state=DONE, result_size=2, max_attempts=1)
            )

    def ListAudit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record("ListAudit", context, request)
        with self.lock:
            entries = [e for e in self.audit if e.seq > request.after_seq][: request.limit or 100]
        if not entries and self.audit_end is not None:
            context.abort_with_status(self.audit_end)
        last = entries[-1].seq if entries else request.after_seq
        return jobs_pb2.ListAuditResponse(entries=entries, last_seq=last)


class Server:
    """A real grpc server on 127.0.0.1: TLS (``mtls``: client certificates
    required) or plaintext."""

    def __init__(self, c: certs_mod.Certs | None, *, mtls: bool = False) -> None:
        self.recorder = Recorder()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.recorder, self.server)
        if c is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [(c.server.key, c.server.cert)],
                root_certificates=c.ca if mtls else None,
                require_client_auth=mtls,
            )
            port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> certs_mod.Certs:
    return certs_mod.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: certs_mod.Certs) -> Iterator[Server]:
    s = Server(pki)
    yield s
    s.stop()


@pytest.fixture
def mtls_server(pki: certs_mod.Certs) -> Iterator[Server]:
    s = Server(pki, mtls=True)
    yield s
    s.stop()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    s = Server(None)
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _no_tandem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TANDEM_TOKEN", "TANDEM_CA", "TANDEM_CERT", "TANDEM_KEY", "TANDEM_TLS"):
        monkeypatch.delenv(name, raising=False)


def quick(address: str, **kw: Any) -> tandem.Client:
    return tandem.Client(address, timeout=5, retry=tandem.NO_RETRY, **kw)


# ---------------------------------------------------------------- TLS and mTLS


def test_tls_with_ca_and_the_token_on_every_call(tls_server: Server, pki: certs_mod.Certs) -> None:
    with quick(tls_server.address, ca=pki.path("ca.pem"), token=TOKEN) as c:
        assert c.security.tls
        assert c.get("j1").state is tandem.JobState.SUCCEEDED
        assert [j.id for j in c.watch(["j2"], timeout=10)] == ["j2"]
        # wait: a stream (WatchJobs) and a GetJob for the result bytes.
        assert c.handle("j3").result(timeout=10) == b"ok"
    rec = tls_server.recorder
    methods = [call["method"] for call in rec.calls]
    assert methods.count("WatchJobs") == 2 and methods.count("GetJob") >= 3
    for call in rec.calls:
        assert call["metadata"].get("authorization") == f"Bearer {TOKEN}", call["method"]


def test_tls_refuses_a_server_signed_by_another_ca(
    tls_server: Server, pki: certs_mod.Certs
) -> None:
    with quick(tls_server.address, ca=pki.path("other-ca.pem")) as c:
        with pytest.raises(tandem.Unavailable):
            c.get("j1")
    assert tls_server.recorder.calls == []


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_server: Server) -> None:
    with quick(tls_server.address) as c:
        assert not c.security.tls
        with pytest.raises(tandem.Unavailable):
            c.get("j1")


def test_mtls_needs_the_client_certificate(mtls_server: Server, pki: certs_mod.Certs) -> None:
    with quick(mtls_server.address, ca=pki.path("ca.pem")) as c:
        with pytest.raises(tandem.Unavailable):
            c.get("j1")
    assert mtls_server.recorder.calls == []
    with quick(
        mtls_server.address,
        ca=pki.path("ca.pem"),
        cert=pki.path("client.pem"),
        key=pki.path("client-key.pem"),
    ) as c:
        assert c.get("j1").id == "j1"
    [call] = mtls_server.recorder.calls
    assert call["client_cn"] == ["tandem-test-client"]
    assert "authorization" not in call["metadata"]


def test_environment_supplies_tls_and_token(
    mtls_server: Server, pki: certs_mod.Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_CA", pki.path("ca.pem"))
    monkeypatch.setenv("TANDEM_CERT", pki.path("client.pem"))
    monkeypatch.setenv("TANDEM_KEY", pki.path("client-key.pem"))
    monkeypatch.setenv("TANDEM_TOKEN", TOKEN + "\n")  # as `$(cat file)` may leave it
    with quick(mtls_server.address) as c:
        assert c.get("j1").id == "j1"
    [call] = mtls_server.recorder.calls
    assert call["metadata"]["authorization"] == f"Bearer {TOKEN}"
    assert call["client_cn"] == ["tandem-test-client"]


def test_tandem_tls_turns_tls_on_and_arguments_win_over_env(
    plain_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_TLS", "1")
    with quick(plain_server.address) as c:
        assert c.security.tls and c.security.root_certificates is None
        with pytest.raises(tandem.Unavailable):  # a TLS handshake with a plaintext server
            c.get("j1")
    with quick(plain_server.address, tls=False) as c:
        assert c.get("j1").id == "j1"
    monkeypatch.setenv("TANDEM_TLS", "maybe")
    with pytest.raises(SecurityError, match="TANDEM_TLS='maybe'"):
        quick(plain_server.address)


def test_async_client_tls_token_and_streams(tls_server: Server, pki: certs_mod.Certs) -> None:
    async def main() -> list[str]:
        async with tandem.AsyncClient(
            tls_server.address, ca=pki.path("ca.pem"), token=TOKEN, timeout=5
        ) as c:
            job = await c.get("a1")
            seen = [j.id async for j in c.watch(["a2"], timeout=10)]
            result = await (await c.handle("a3")).result(timeout=10)
            assert result == b"ok"
            return [job.id, *seen]

    assert asyncio.run(main()) == ["a1", "a2"]
    calls = tls_server.recorder.calls
    assert {c["method"] for c in calls} == {"GetJob", "WatchJobs"}
    assert all(c["metadata"]["authorization"] == f"Bearer {TOKEN}" for c in calls)


# ---------------------------------------------------------------- the token in plaintext


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3:50051",
        "orchestrator:50051",
        "dns:///tandem.example.com:443",
        "127.0.0.1:50051,10.0.0.2:50051",
        "[2001:db8::1]:50051",
    ],
)
def test_token_in_plaintext_off_loopback_is_refused(address: str) -> None:
    with pytest.raises(SecurityError) as err:
        tandem.Client(address, token=TOKEN)
    text = str(err.value)
    assert "plaintext" in text and "insecure=True" in text and address in text
    assert TOKEN not in text
    # insecure=True is the explicit way round; TLS is the other.
    tandem.Client(address, token=TOKEN, insecure=True).close()
    tandem.Client(address, token=TOKEN, tls=True).close()
    tandem.Client(address).close()  # no token: nothing to protect


def test_token_in_plaintext_to_loopback_is_sent(plain_server: Server) -> None:
    with quick(plain_server.address, token=TOKEN) as c:
        c.get("j1")
    [call] = plain_server.recorder.calls
    assert call["metadata"]["authorization"] == f"Bearer {TOKEN}"


def test_loopback_addresses() -> None:
    for a in ("127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.1:1,127.0.0.2:2", "unix:/x"):
        assert is_loopback(a), a
    for a in ("10.0.0.1:1", "dns:///localhost.evil.com:1", "0.0.0.0:1", "[::]:1", "host:1"):
        assert not is_loopback(a), a


def test_ops_fallback_to_compute_follows_the_same_rule() -> None:
    c = tandem.Client("127.0.0.1:1", token=TOKEN, compute_address="10.9.9.9:50052")
    try:
        with pytest.raises(SecurityError, match="10.9.9.9:50052"):
            c._side_channel("10.9.9.9:50052")
    finally:
        c.close()


# ---------------------------------------------------------------- bad settings


def test_bad_paths_name_the_argument(pki: certs_mod.Certs, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(SecurityError, match=r"argument ca \(CLI --ca, env TANDEM_CA\).*nope\.pem"):
        tandem.Client("127.0.0.1:1", ca=missing)
    with pytest.raises(SecurityError, match=r"argument cert \(CLI --cert, env TANDEM_CERT\)"):
        tandem.Client("127.0.0.1:1", cert=missing, key=pki.path("client-key.pem"))
    with pytest.raises(SecurityError, match=r"argument key \(CLI --key, env TANDEM_KEY\)"):
        tandem.Client("127.0.0.1:1", cert=pki.path("client.pem"), key=missing)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(SecurityError, match=r"argument ca .*not PEM"):
        tandem.Client("127.0.0.1:1", ca=str(not_pem))
    with pytest.raises(SecurityError, match="cert is given without key"):
        tandem.Client("127.0.0.1:1", cert=pki.path("client.pem"))
    with pytest.raises(SecurityError, match="key is given without cert"):
        tandem.Client("127.0.0.1:1", key=pki.path("client-key.pem"))
    with pytest.raises(SecurityError, match="tls=False contradicts ca"):
        tandem.Client("127.0.0.1:1", tls=False, ca=pki.path("ca.pem"))
    assert issubclass(SecurityError, ValueError)


def test_bad_env_path_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_CA", "/no/such/ca.pem")
    with pytest.raises(
        SecurityError, match=r"argument ca \(CLI --ca, env TANDEM_CA\).*/no/such/ca\.pem"
    ):
        tandem.Client("127.0.0.1:1")


@pytest.mark.parametrize(
    ("token", "problem"),
    [("", "empty"), ("has space", "printable ASCII"), ("Bearer abc", "without 'Bearer '")],
)
def test_bad_tokens(token: str, problem: str) -> None:
    with pytest.raises(SecurityError, match=problem):
        resolve("127.0.0.1:1", token=token)


def test_repr_never_shows_the_token() -> None:
    sec = resolve("127.0.0.1:1", token=TOKEN)
    assert TOKEN not in repr(sec) and "token=set" in repr(sec)


# ---------------------------------------------------------------- access errors


@pytest.mark.parametrize(
    ("code", "reason", "cls", "retryable"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", tandem.Unauthenticated, False),
        (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", tandem.TokenExpired, False),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", tandem.PermissionDenied, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", tandem.RateLimited, True),
    ],
)
def test_access_reasons_map_to_their_classes(
    plain_server: Server,
    code: grpc.StatusCode,
    reason: str,
    cls: type[tandem.TandemError],
    retryable: bool,
) -> None:
    md = {"scope": "read", "queue": "q1"} if reason == "PERMISSION_DENIED" else {}
    plain_server.recorder.get_failures.append(status_error(code, reason, "no", md))
    with quick(plain_server.address) as c:
        with pytest.raises(cls) as err:
            c.get("j1")
    assert type(err.value) is cls
    assert err.value.reason == reason and err.value.code is code
    assert err.value.retryable is retryable
    assert err.value.metadata == md
    assert cli.exit_code_for(err.value) == (
        cli.EXIT_UNAVAILABLE if retryable else cli.EXIT_REJECTED
    )


def test_a_bare_status_maps_by_its_code(plain_server: Server) -> None:
    for code, cls in (
        (grpc.StatusCode.UNAUTHENTICATED, tandem.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, tandem.PermissionDenied),
    ):
        plain_server.recorder.get_failures.append(status_error(code, "", "proxy said no"))
        with quick(plain_server.address) as c:
            with pytest.raises(cls) as err:
                c.get("j1")
        assert err.value.reason == "" and not err.value.retryable


def test_rate_limited_is_retried_with_backoff_and_permission_denied_is_not(
    plain_server: Server,
) -> None:
    rec = plain_server.recorder
    rec.get_failures = [
        status_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", {}, 0.05)
        for _ in range(2)
    ]
    policy = tandem.RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    with tandem.Client(plain_server.address, timeout=5, retry=policy) as c:
        assert c.get("j1").id == "j1"
        assert len(rec.of("GetJob")) == 3
        rec.get_failures = [
            status_error(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "no read")
        ]
        with pytest.raises(tandem.PermissionDenied):
            c.get("j2")
        assert len(rec.of("GetJob")) == 4
        # A wait goes on through rate limiting until its own deadline, past the
        # policy's max_attempts: the GetJob of the result bytes fails 6 times.
        handle = c.handle("j3")
        before = len(rec.of("GetJob"))
        rec.get_failures = [
            status_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow", {}, 0.05)
            for _ in range(6)
        ]
        assert handle.result(timeout=30) == b"ok"
        assert len(rec.of("GetJob")) - before == 7 and not rec.get_failures
    err = tandem.RateLimited("x", retry_after=0.2, reason="RATE_LIMITED")
    assert isinstance(err, tandem.Overloaded)
    assert policy.backoff(err, 1) >= 0.2  # the server's hint is a floor


# ---------------------------------------------------------------- the CLI


def test_cli_global_security_flags(
    tls_server: Server, pki: certs_mod.Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--address", tls_server.address, "--ca", pki.path("ca.pem"), "--token", TOKEN]
    assert cli.run([*argv, "get", "j1", "--json"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["id"] == "j1"
    # After the subcommand too (every subcommand that talks to a service has them).
    assert cli.run(["get", "j2", "--json", *argv]) == cli.EXIT_OK
    capsys.readouterr()
    calls = tls_server.recorder.of("GetJob")
    assert [c["metadata"]["authorization"] for c in calls] == [f"Bearer {TOKEN}"] * 2
    ns = cli.build_parser().parse_args(["queues", "--tls", "--cert", "c", "--key", "k"])
    assert cli.security_options(ns) == {
        "tls": True,
        "ca": None,
        "cert": "c",
        "key": "k",
        "token": None,
        "insecure": False,
    }


def test_cli_security_mistakes_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.run(["--ca", str(tmp_path / "none.pem"), "queues"])
    assert code == cli.EXIT_USAGE
    assert "argument ca" in capsys.readouterr().err
    code = cli.run(["--address", "10.2.3.4:50051", "--token", TOKEN, "queues"])
    assert code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "plaintext" in err and "--insecure" in err and TOKEN not in err


def _entry(seq: int, action: str = "SubmitJob") -> jobs_pb2.AuditEntry:
    return jobs_pb2.AuditEntry(
        seq=seq,
        time=timestamp_pb2.Timestamp(seconds=1_800_000_000 + seq),
        actor="token:demo",
        action=action,
        queue="default",
        job_ids=[f"job{seq}"],
        job_count=1,
        code="OK",
        peer="127.0.0.1:5555",
    )


def test_cli_audit_flags() -> None:
    ns = cli.build_parser().parse_args(
        [
            "audit",
            "--after-seq",
            "5",
            "--limit",
            "10",
            "--actor",
            "token:a",
            "--action",
            "SubmitJob",
            "-q",
            "q1",
            "--follow",
            "--json",
            "-n",
            "0.5",
        ]
    )
    assert (ns.after_seq, ns.limit, ns.actor, ns.action, ns.queue) == (
        5,
        10,
        "token:a",
        "SubmitJob",
        "q1",
    )
    assert ns.follow and ns.json and ns.interval == 0.5 and ns.func is cli.cmd_audit
    ns = cli.build_parser().parse_args(["audit"])
    assert (ns.after_seq, ns.limit, ns.actor, ns.follow) == (0, 100, None, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "0"], "--limit must be 1 to 1000"),
        (["--limit", "1001"], "--limit must be 1 to 1000"),
        (["--after-seq", "-1"], "--after-seq must be 0 or more"),
        (["--follow", "-n", "0"], "--interval"),
    ],
)
def test_cli_audit_bad_flags(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.run(["audit", "--address", "127.0.0.1:1", *args]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_audit_table_and_json(
    tls_server: Server, pki: certs_mod.Certs, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = tls_server.recorder
    rec.audit = [_entry(1), _entry(2, "CancelJob"), _entry(3)]
    base = ["--address", tls_server.address, "--ca", pki.path("ca.pem"), "--token", TOKEN]
    assert cli.run([*base, "audit", "--json", "--action", "CancelJob", "-q", "default"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3]  # (the test server does not filter)
    assert lines[0]["actor"] == "token:demo" and lines[0]["time"].startswith("2027-01-15")
    req = rec.of("ListAudit")[-1]["request"]
    assert (req.action, req.queue, req.actor, req.limit) == ("CancelJob", "default", "", 100)
    assert cli.run([*base, "audit", "--after-seq", "1", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "CancelJob" in out and "job2" in out and "more: --after-seq 2" in out
    assert all(c["metadata"]["authorization"] == f"Bearer {TOKEN}" for c in rec.calls)


def test_cli_audit_follow_polls_with_after_seq(
    plain_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = plain_server.recorder
    rec.audit = [_entry(1), _entry(2), _entry(3)]
    # Once every entry was read, the server refuses: that ends the follow.
    rec.audit_end = status_error(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "no")
    code = cli.run(
        ["--address", plain_server.address, "audit", "--follow", "--limit", "2", "-n", "0.2"]
    )
    assert code == cli.EXIT_REJECTED
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["1", "2", "3"]
    assert [c["request"].after_seq for c in rec.of("ListAudit")] == [0, 2, 3]


# ---------------------------------------------------------------- the demo's --secure


def test_demo_secure_prints_how_to_use_the_ca_and_token(tmp_path: Path) -> None:
    from tandem.demo import LocalStack, secure_usage

    stack = LocalStack(
        "tandem-compute",
        "tandem-orchestrator",
        tmp_path,
        address="127.0.0.1:50051",
        nats_address="127.0.0.1:4222",
        secure=True,
        token=TOKEN,
    )
    text = secure_usage(stack)
    ca = str(tmp_path / "certs" / "ca.pem")
    assert f"export TANDEM_CA={ca}" in text
    assert f"export TANDEM_TOKEN={TOKEN}" in text
    assert (
        f"grpcurl -cacert {ca} -H 'authorization: Bearer {TOKEN}' 127.0.0.1:50051 "
        "tandem.v1.JobService/ListQueues" in text
    )
    # The stack's own clients carry the CA and the token.
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_bytes(certs_mod.make(tmp_path / "pki").ca)
    with stack.client() as c:
        assert c.security.tls and c.security.token == TOKEN
    import subprocess
    import sys

    shown = subprocess.run(
        [sys.executable, "-m", "tandem.demo", "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "--secure" in shown.stdout


def test_demo_secure_reports_a_failing_dev_certs(tmp_path: Path) -> None:
    from tandem._stack import StackError
    from tandem.demo import LocalStack

    stack = LocalStack("tandem-compute", "/bin/false", tmp_path, secure=True)
    with pytest.raises(StackError, match=r"dev-certs failed \(exit 1\)"):
        stack.start()
    assert stack.processes == []

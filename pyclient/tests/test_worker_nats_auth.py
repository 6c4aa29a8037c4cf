"""`tandem worker`'s NATS credentials and TLS against a real nats-server
that requires both (users with passwords, TLS with a certificate made here):
the worker connects, subscribes and announces itself; a connection without
credentials is refused, so the check means something. Bad settings are
refused before connecting, naming the option."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import certs as certs_mod
from tandem import cli
from tandem._stack import Process, free_port, tcp_ready
from tandem._worker import runtime
from tandem.v1 import worker_pb2

ROOT = Path(__file__).resolve().parents[2]


def _nats_server() -> str | None:
    for c in (
        os.environ.get("TANDEM_NATS_SERVER_BIN"),
        str(ROOT / "bin" / "nats-server"),
        shutil.which("nats-server"),
    ):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


NATS = _nats_server()
needs_nats = pytest.mark.skipif(NATS is None, reason="nats-server not built (make bin/nats-server)")

WORKER_PASSWORD = "worker-pw-1f0c9a"
WATCHER_PASSWORD = "watcher-pw-77d2e1"


@pytest.fixture
def secured_nats(tmp_path: Path) -> Any:
    """A nats-server with TLS and two users; yields (url, certs)."""
    pki = certs_mod.make(tmp_path / "pki")
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"""
listen: 127.0.0.1:{port}
tls {{
  cert_file: "{pki.path("server.pem")}"
  key_file: "{pki.path("server-key.pem")}"
}}
authorization {{
  users = [
    {{user: worker, password: "{WORKER_PASSWORD}"}}
    {{user: watcher, password: "{WATCHER_PASSWORD}"}}
  ]
}}
"""
    )
    assert NATS is not None
    p = Process(
        "nats-server",
        [NATS, "-c", str(conf)],
        log_path=tmp_path / "nats.log",
        ready=tcp_ready(port),
        ready_timeout=30,
    )
    p.start()
    try:
        yield f"nats://127.0.0.1:{port}", pki
    finally:
        p.stop(timeout=10)


@needs_nats
def test_worker_connects_with_password_file_and_tls(secured_nats: Any, tmp_path: Path) -> None:
    """`tandem worker --nats-user --nats-password-file --nats-ca`, a real
    process: it announces itself on the heartbeat subject, which a second
    authenticated connection hears."""
    url, pki = secured_nats
    pw_file = tmp_path / "worker.password"
    pw_file.write_text(WORKER_PASSWORD + "\n")
    watcher_cfg = runtime.WorkerConfig(
        nats_user="watcher", nats_password=WATCHER_PASSWORD, nats_ca=pki.path("ca.pem")
    )
    here = Path(__file__).parent
    env = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(here), os.environ.get("PYTHONPATH", "")) if p
        ),
        "TANDEM_NATS_PASSWORD": "",
    }
    argv = [
        sys.executable,
        "-m",
        "tandem.cli",
        "worker",
        "worker_ops:worker",
        "--nats-url",
        url,
        "--nats-user",
        "worker",
        "--nats-password-file",
        str(pw_file),
        "--nats-ca",
        pki.path("ca.pem"),
        "--pool",
        "thread",
        "--id",
        "auth-test-worker",
    ]

    async def main() -> worker_pb2.WorkerInfo:
        import nats

        # Without credentials the server refuses (so the worker's own
        # connection below is authenticated, not merely allowed).
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(
                url,
                tls=watcher_cfg.tls_context(),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=5,
            )
        watcher = await nats.connect(url, allow_reconnect=False, **watcher_cfg.nats_auth())
        try:
            sub = await watcher.subscribe(runtime.HEARTBEAT_SUBJECT)
            await watcher.flush()
            worker = Process("tandem-worker", argv, log_path=tmp_path / "worker.log", env=env)
            worker.start(wait=False)
            try:
                info = worker_pb2.WorkerInfo()
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    msg = await sub.next_msg(timeout=60)
                    info.ParseFromString(msg.data)
                    if info.id == "auth-test-worker":
                        return info
                raise AssertionError("no heartbeat from the worker:\n" + worker.log_tail(40))
            finally:
                worker.stop(timeout=30)
        finally:
            await watcher.close()

    info = asyncio.run(main())
    assert info.ops, "the worker announced its ops"


def test_nats_auth_arguments(tmp_path: Path) -> None:
    pki = certs_mod.make(tmp_path / "pki")
    creds = tmp_path / "w.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n")
    opts = runtime.WorkerConfig(nats_creds=str(creds)).nats_auth()
    assert opts == {"user_credentials": str(creds)}
    pw = tmp_path / "pw"
    pw.write_text("s3cret\nignored second line\n")
    opts = runtime.WorkerConfig(
        nats_user="w",
        nats_password_file=str(pw),
        nats_ca=pki.path("ca.pem"),
        nats_cert=pki.path("client.pem"),
        nats_key=pki.path("client-key.pem"),
    ).nats_auth()
    assert (opts["user"], opts["password"]) == ("w", "s3cret")
    assert opts["tls"].verify_mode.name == "CERT_REQUIRED"
    assert "s3cret" not in repr(runtime.WorkerConfig(nats_user="w", nats_password="s3cret"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nats_user": "w"}, "--nats-user 'w' needs --nats-password-file"),
        ({"nats_password": "p"}, "needs --nats-user"),
        ({"nats_user": "w", "nats_password_file": "/no/such"}, "--nats-password-file '/no/such'"),
        ({"nats_creds": "/no/such.creds"}, "--nats-creds '/no/such.creds': no such file"),
        ({"nats_ca": "/no/ca.pem"}, "--nats-ca '/no/ca.pem': no such file"),
        ({"nats_cert": "/x"}, "--nats-cert and --nats-key go together"),
        (
            {"nats_user": "w", "nats_password": "p", "nats_password_file": "/x"},
            "give the NATS password once",
        ),
    ],
)
def test_bad_nats_settings_name_the_option(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        runtime.WorkerConfig(**fields).check()  # type: ignore[arg-type]


def test_nats_ca_that_is_not_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="--nats-ca .*not a PEM CA bundle"):
        runtime.WorkerConfig(nats_ca=str(bad)).check()


def test_cli_worker_nats_flags_and_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    parser = cli.build_parser()
    worker_help = parser._subparsers._group_actions[0].choices["worker"].format_help()  # type: ignore[union-attr]
    for flag in ("--nats-creds", "--nats-user", "--nats-password-file", "--nats-ca"):
        assert flag in worker_help
    assert "--nats-password " not in worker_help, "a password on the command line shows in ps"
    ns = parser.parse_args(
        [
            "worker",
            "m:w",
            "--nats-user",
            "u",
            "--nats-password-file",
            "/p",
            "--nats-ca",
            "/ca",
            "--nats-creds",
            "/c",
        ]
    )
    assert (ns.nats_user, ns.nats_password_file, ns.nats_ca, ns.nats_creds) == (
        "u",
        "/p",
        "/ca",
        "/c",
    )
    # The password from the environment; a missing file is exit 2 naming the flag.
    monkeypatch.setenv("TANDEM_NATS_USER", "u")
    monkeypatch.setenv("TANDEM_NATS_PASSWORD", "from-env")
    monkeypatch.setenv("TANDEM_NATS_CA", str(tmp_path / "missing-ca.pem"))
    assert cli.run(["worker", "worker_ops:worker"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--nats-ca" in err and "missing-ca.pem" in err and "from-env" not in err

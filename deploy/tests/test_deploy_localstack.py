"""The compose configuration against the real binaries, without Docker:
each stack of docker-compose.yml runs as local processes with the exact
environment its services get there (only addresses, mount points and store
folders are mapped, see localstack.py), and must come up healthy by the same
checks the compose health checks make. Skipped until `make build` has built
the binaries (make test runs the builds first)."""

from __future__ import annotations

import grpc
import pytest

import _support as s
from localstack import LocalStack

pytestmark = pytest.mark.skipif(
    s.service_binary("TANDEM_COMPUTE_") is None
    or s.service_binary("TANDEM_ORCH_") is None
    or s.nats_server_binary() is None,
    reason="binaries not built (make build)",
)


def list_ops_raw(address: str, credentials: grpc.ChannelCredentials | None = None) -> bytes:
    """ComputeService.ListOps with an empty request, answer left encoded."""
    ch = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with ch:
        call = ch.unary_unary("/tandem.v1.ComputeService/ListOps")
        return bytes(call(b"", timeout=5))


@pytest.mark.parametrize("stack, debug_ops", [("default", False), ("test", True)])
def test_stack_comes_up_healthy_with_the_compose_environment(stack: str, debug_ops: bool) -> None:
    with LocalStack(stack) as local:
        env = local.tests_env()
        compute = local.names[1]
        # The default stack's compute requires the client certificate its
        # health probe (and the orchestrator) presents; the test twin is plaintext.
        creds = local.probe_credentials(compute)
        assert (creds is None) == (stack == "test")
        ops = list_ops_raw(env["TANDEM_COMPUTE_ADDRESS"], creds)
        assert b"hash.sha256" in ops
        assert (b"debug.fail" in ops) == debug_ops, (
            f"{stack}: debug ops {'off' if debug_ops else 'on'}"
        )
        assert env["TANDEM_TARGET"] == "compose"
        assert env["TANDEM_ADDRESS"].startswith("127.0.0.1:")
        assert env["TANDEM_NATS_URL"].startswith("nats://127.0.0.1:")


def test_default_stack_refuses_plaintext_and_callers_without_a_token() -> None:
    """TLS and auth are really on with the compose settings: compute refuses
    a plaintext caller and one without a client certificate; the
    orchestrator answers health over TLS but JobService only with a token,
    which `tandem-orchestrator token create` makes with the orchestrator
    container's own environment (as deploy/README.md tells users to)."""
    import os
    import subprocess

    import tandem

    with LocalStack("default") as local:
        env = local.tests_env()
        ca = (local.certs / "ca.pem").read_bytes()
        compute = f"127.0.0.1:{local.ports['compute'][50052]}"
        for creds in (None, grpc.ssl_channel_credentials(ca)):
            with pytest.raises(grpc.RpcError):
                list_ops_raw(compute, creds)
        address = f"127.0.0.1:{local.ports['orchestrator'][50051]}"
        with tandem.Client(address, ca=str(local.certs / "ca.pem"), timeout=10) as c:
            assert c.health()
            with pytest.raises(tandem.Unauthenticated):
                c.queues()
        orch_env = {k: v for k, v in local.service_env("orchestrator").items()}
        binary = s.service_binary("TANDEM_ORCH_")
        assert binary is not None
        made = subprocess.run(
            [
                str(binary),
                "token",
                "create",
                "--id",
                "deploy-check",
                "--all-queues",
                "--scope",
                "read",
            ],
            env={**{k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}, **orch_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        with tandem.Client(address, ca=str(local.certs / "ca.pem"), token=token, timeout=10) as c:
            assert "default" in [q.name for q in c.queues()]
        assert env["TANDEM_TARGET"] == "compose"


def test_harness_compose_mode_against_the_compose_test_stack() -> None:
    """The suite's smoke tests in compose mode, with the environment the
    compose `tests` service sets, against the test stack (run the whole suite
    this way with: python deploy/tests/localstack.py -- pytest tests)."""
    pytest.importorskip("tandem._native", reason="the tandem package is not installed (make build)")
    import os
    import subprocess
    import sys

    smoke = s.ROOT / "tests" / "test_walking_skeleton.py"
    assert smoke.is_file()
    with LocalStack("test") as local:
        env = {**os.environ, **local.tests_env(), "PYTEST_ADDOPTS": "-p no:cacheprovider"}
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", str(smoke)],
            cwd=s.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:] + local.logs()
        assert " passed" in out.stdout

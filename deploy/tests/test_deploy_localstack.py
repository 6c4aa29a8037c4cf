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


def list_ops_raw(address: str) -> bytes:
    """ComputeService.ListOps with an empty request, answer left encoded."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary("/tandem.v1.ComputeService/ListOps")
        return bytes(call(b"", timeout=5))


@pytest.mark.parametrize("stack, debug_ops", [("default", False), ("test", True)])
def test_stack_comes_up_healthy_with_the_compose_environment(stack: str, debug_ops: bool) -> None:
    with LocalStack(stack) as local:
        env = local.tests_env()
        ops = list_ops_raw(env["TANDEM_COMPUTE_ADDRESS"])
        assert b"hash.sha256" in ops
        assert (b"debug.fail" in ops) == debug_ops, (
            f"{stack}: debug ops {'off' if debug_ops else 'on'}"
        )
        assert env["TANDEM_TARGET"] == "compose"
        assert env["TANDEM_ADDRESS"].startswith("127.0.0.1:")
        assert env["TANDEM_NATS_URL"].startswith("nats://127.0.0.1:")


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

"""Environment variables: the compose file sets only variables the services
read (a misspelt name is silently ignored by a service), and every variable
they read is either set by the compose file or documented in deploy/README.md.

What the services read comes from docs/ARCHITECTURE.md's tables, the
services' sources, and, when the binaries are built (make build), their --help.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from typing import Any

import pytest

import _support as s

BINARY = {"TANDEM_COMPUTE_": "tandem-compute", "TANDEM_ORCH_": "tandem-orchestrator"}


@cache
def help_vars(prefix: str) -> frozenset[str] | None:
    binary = s.service_binary(prefix)
    if binary is None:
        return None
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=20)
    found = frozenset(re.findall(prefix + r"[A-Z0-9_]+", out.stdout + out.stderr))
    return found or None


@cache
def read_vars(prefix: str) -> frozenset[str]:
    """Every variable the binary with this prefix reads."""
    names = set(s.architecture_env_vars().get(BINARY[prefix], set()))
    names |= s.source_env_vars(prefix)
    names |= help_vars(prefix) or set()
    return frozenset(n for n in names if n.startswith(prefix))


def test_architecture_lists_both_services() -> None:
    tables = s.architecture_env_vars()
    for binary in BINARY.values():
        assert tables.get(binary), f"no env table for {binary} in docs/ARCHITECTURE.md"


@pytest.mark.parametrize("service", sorted(s.SERVICE_ENV_PREFIX))
def test_compose_sets_only_variables_the_service_reads(
    svcs: dict[str, dict[str, Any]], service: str
) -> None:
    prefix = s.SERVICE_ENV_PREFIX[service]
    env = s.env_of(svcs[service])
    known = read_vars(prefix)
    # Both sides empty would make the loop below pass vacuously.
    assert env, f"{service}: docker-compose.yml sets no variables"
    assert known, f"{BINARY[prefix]}: no variables found in ARCHITECTURE.md, sources or --help"
    for name in env:
        assert name.startswith(prefix), f"{service}: {name} is not a {BINARY[prefix]} variable"
        assert name in known, f"{service}: {BINARY[prefix]} does not read {name} (misspelt?)"


@pytest.mark.parametrize("service", sorted(s.SERVICE_ENV_PREFIX))
def test_every_variable_is_set_or_documented(
    svcs: dict[str, dict[str, Any]], readme: str, service: str
) -> None:
    prefix = s.SERVICE_ENV_PREFIX[service]
    env = s.env_of(svcs[service])
    missing = [n for n in sorted(read_vars(prefix)) if n not in env and f"`{n}`" not in readme]
    assert not missing, (
        f"{service}: neither set in docker-compose.yml nor in deploy/README.md: {missing}"
    )


def test_readme_documents_every_service_variable(readme: str) -> None:
    for prefix in BINARY:
        assert read_vars(prefix), f"no variables found for {BINARY[prefix]}"
        for name in sorted(read_vars(prefix)):
            assert f"`{name}`" in readme, f"deploy/README.md does not mention {name}"


@pytest.mark.parametrize("prefix", sorted(BINARY))
def test_help_agrees_with_the_sources(prefix: str) -> None:
    """When the binary is built, its --help names every variable the sources read."""
    shown = help_vars(prefix)
    if shown is None:
        pytest.skip(f"{BINARY[prefix]} not built (make build)")
    assert s.source_env_vars(prefix) <= shown


def test_tests_service_sets_the_harness_variables(
    svcs: dict[str, dict[str, Any]], readme: str
) -> None:
    """The harness's compose mode reads these; tests/ must use the same names."""
    env = s.env_of(svcs["tests"])
    wanted = {"TANDEM_TARGET", "TANDEM_ADDRESS", "TANDEM_COMPUTE_ADDRESS", "TANDEM_NATS_URL"}
    assert wanted <= set(env)
    sources = "\n".join(p.read_text() for p in (s.ROOT / "tests").rglob("*.py"))
    unread = sorted(n for n in wanted if n not in sources)
    assert not unread, f"tests/ does not read {unread}"
    for name in wanted:
        assert f"`{name}`" in readme

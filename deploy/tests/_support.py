"""Helpers for the static checks of docker-compose.yml and deploy/*.Dockerfile.

Nothing here needs a Docker engine: the compose file is interpolated and
validated the way Compose does it before talking to an engine, Dockerfiles
are parsed into instructions, and .dockerignore is matched with Docker's rules.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
DEPLOY_README = DEPLOY / "README.md"

# The services' own environment variables, by service, as the compose file
# names them. The prefix tells which binary reads a variable.
SERVICE_ENV_PREFIX = {
    "compute": "TANDEM_COMPUTE_",
    "compute-test": "TANDEM_COMPUTE_",
    "orchestrator": "TANDEM_ORCH_",
    "orchestrator-test": "TANDEM_ORCH_",
    "orchestrator-cluster": "TANDEM_ORCH_",
}
ORCHESTRATORS = ("orchestrator", "orchestrator-test", "orchestrator-cluster")
COMPUTES = ("compute", "compute-test")


# ------------------------------------------------------------------ compose

_VAR = re.compile(
    r"""\$(?:
        (?P<escaped>\$) |
        \{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\} |
        (?P<named>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable interpolation (the subset the spec defines)."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        if op is None:
            return value or ""
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if unset else str(value)
        if op.endswith("?"):
            if unset:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        return "" if unset else arg  # "+"

    return _VAR.sub(sub, text)


def variables(text: str) -> list[tuple[str, str | None, str]]:
    """Every ${VAR...} reference: (name, operator, argument)."""
    out = []
    for m in _VAR.finditer(text):
        if m.group("escaped"):
            continue
        out.append((m.group("braced") or m.group("named"), m.group("op"), m.group("arg") or ""))
    return out


def _interpolate_values(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_values(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _interpolate_values(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose reads it: YAML first (anchors merged),
    then variables interpolated in string values (default: none set)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    result = _interpolate_values(data, env or {})
    assert isinstance(result, dict)
    return result


def services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def profiles_of(service: Mapping[str, Any]) -> set[str]:
    return set(service.get("profiles") or [])


def find(pattern: str, text: str, flags: int = 0) -> str:
    """Group 1 of the first match of pattern in text; fails the test if none."""
    m = re.search(pattern, text, flags)
    assert m, f"no match for {pattern!r}"
    return m.group(1)


def duration_seconds(value: str) -> float:
    """Compose/Go duration ('1m30s', '45s', '500ms') in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def host_port_of(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------ docs and sources


def architecture_env_vars() -> dict[str, set[str]]:
    """The env column of ARCHITECTURE.md's flag tables, by binary: the table
    that follows a line holding only `tandem-compute` / `tandem-orchestrator`."""
    out: dict[str, set[str]] = {}
    current: str | None = None
    in_table = False
    for line in ARCHITECTURE.read_text().splitlines():
        m = re.match(r"^`(tandem-[a-z]+)`$", line.strip())
        if m:
            current, in_table = m.group(1), False
            out.setdefault(current, set())
        elif current and line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 2:
                out[current].update(re.findall(r"`(TANDEM_[A-Z0-9_]+)`", cells[1]))
        elif current and in_table and line.strip():
            current = None
    return out


def source_env_vars(prefix: str) -> set[str]:
    """TANDEM_* names the services' sources read (string literals)."""
    if prefix == "TANDEM_ORCH_":
        files = list((ROOT / "orchestrator-go" / "internal" / "config").glob("*.go"))
        files += list((ROOT / "orchestrator-go" / "cmd").glob("**/*.go"))
    else:
        files = list((ROOT / "compute-rs" / "crates" / "tandem-compute" / "src").glob("**/*.rs"))
    names: set[str] = set()
    for f in files:
        if f.name.endswith("_test.go"):
            continue
        names.update(re.findall(r'"(' + prefix + r'[A-Z0-9_]+)"', f.read_text()))
    return names


def service_binary(prefix: str) -> Path | None:
    """The built binary, where the Makefile puts it, if it was built."""
    if prefix == "TANDEM_ORCH_":
        cands = [
            os.environ.get("TANDEM_ORCHESTRATOR_BIN"),
            str(ROOT / "bin" / "tandem-orchestrator"),
        ]
    else:
        cands = [
            os.environ.get("TANDEM_COMPUTE_BIN"),
            str(ROOT / "compute-rs" / "target" / "release" / "tandem-compute"),
        ]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def nats_server_binary() -> Path | None:
    for c in (
        os.environ.get("TANDEM_NATS_SERVER_BIN"),
        str(ROOT / "bin" / "nats-server"),
        shutil.which("nats-server"),
    ):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


# ------------------------------------------------------------------ Dockerfiles


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str  # continuation lines joined, comments dropped

    @property
    def flags(self) -> dict[str, str]:
        out = {}
        for tok in self.args.split():
            if not tok.startswith("--"):
                break
            k, _, v = tok[2:].partition("=")
            out[k] = v
        return out

    @property
    def operands(self) -> list[str]:
        """Arguments after the --flags (JSON form not used for COPY here)."""
        toks = self.args.split()
        while toks and toks[0].startswith("--"):
            toks.pop(0)
        return toks


@dataclass
class Stage:
    index: int
    base: str
    name: str | None
    instructions: list[Instruction]


def parse_dockerfile(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        logical.append((start, buf))
        buf = ""
    for line, text in logical:
        keyword, _, args = text.partition(" ")
        ins = Instruction(line, keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            ops = ins.operands
            name = ops[2] if len(ops) >= 3 and ops[1].lower() == "as" else None
            stages.append(Stage(len(stages), ops[0], name, []))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


# ------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1 : j].replace("!", "^", 1) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile("^" + out + "$")


class DockerIgnore:
    """Docker's .dockerignore rules: the last matching pattern wins, `!`
    re-includes, and a pattern matching a parent folder matches its files."""

    def __init__(self, path: Path):
        self.rules: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/")
            self.rules.append((negate, line, _pattern_regex(line)))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, _, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not negate
        return result

    def _may_reinclude_below(self, rel: str) -> bool:
        return any(
            neg and (text.startswith(rel + "/") or "*" in text)
            for neg, text, _ in self.rules
            if neg and text != rel
        )

    def included_files(self, rel: str) -> Iterator[str]:
        """The files under rel (a file or folder) that reach the build context."""
        p = ROOT / rel
        if p.is_file():
            if not self.excluded(rel):
                yield rel
            return
        for dirpath, dirnames, filenames in os.walk(p):
            d = Path(dirpath).relative_to(ROOT).as_posix()
            keep = []
            for name in dirnames:
                sub = f"{d}/{name}"
                if self.excluded(sub) and not self._may_reinclude_below(sub):
                    continue  # pruned: nothing below can reach the context
                keep.append(name)
            dirnames[:] = keep
            for name in filenames:
                r = f"{d}/{name}"
                if not self.excluded(r):
                    yield r

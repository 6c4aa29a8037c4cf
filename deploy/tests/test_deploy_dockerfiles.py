"""deploy/*.Dockerfile: hadolint, plus checks of our own that need the
repository (what a COPY names exists and reaches the build context, every
crate is in the dependency layer, toolchain versions satisfy the sources)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import _support as s

IDS = [p.name for p in s.DOCKERFILES]
HADOLINT_CONFIG = s.DEPLOY / "hadolint.yaml"


def test_the_three_dockerfiles_exist() -> None:
    assert IDS == ["compute.Dockerfile", "orchestrator.Dockerfile", "tests.Dockerfile"]


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", s.DOCKERFILES, ids=IDS)
def test_hadolint(dockerfile: Path) -> None:
    exe = _hadolint()
    assert exe, "hadolint not installed: pip install -r tools/requirements-dev.txt"
    out = subprocess.run(
        [exe, "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------ our own rules


@pytest.mark.parametrize("dockerfile", s.DOCKERFILES, ids=IDS)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    for st in s.parse_dockerfile(dockerfile):
        ref = st.base
        assert "$" not in ref, f"{dockerfile.name}: FROM {ref}: no build-arg images"
        name, _, tag = ref.partition(":")
        assert tag and tag != "latest", f"{dockerfile.name}: FROM {ref} is not pinned"
        assert re.match(r"^\d+(\.\d+)*", tag), (
            f"{dockerfile.name}: FROM {ref}: tag names no version"
        )
        assert "/" not in name or name.startswith("docker.io/"), (
            f"{dockerfile.name}: {ref}: official images only"
        )


@pytest.mark.parametrize("dockerfile", s.DOCKERFILES, ids=IDS)
def test_runtime_stage_runs_as_non_root(dockerfile: Path) -> None:
    final = s.parse_dockerfile(dockerfile)[-1]
    users = [i.args for i in final.instructions if i.keyword == "USER"]
    assert users, f"{dockerfile.name}: the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"{dockerfile.name}: runs as root"
    later = [
        i
        for i in final.instructions
        if i.keyword in ("RUN",)
        and i.line > max(j.line for j in final.instructions if j.keyword == "USER")
    ]
    assert not later, f"{dockerfile.name}: RUN after USER runs unprivileged by surprise"
    entry = [i for i in final.instructions if i.keyword in ("ENTRYPOINT", "CMD")]
    assert entry and entry[-1].args.startswith("["), (
        f"{dockerfile.name}: exec-form ENTRYPOINT/CMD (signals reach the process)"
    )


@pytest.mark.parametrize("dockerfile", s.DOCKERFILES, ids=IDS)
def test_no_remote_add_no_secrets_apt_lists_cleaned(dockerfile: Path) -> None:
    for st in s.parse_dockerfile(dockerfile):
        for i in st.instructions:
            if i.keyword == "ADD":
                pytest.fail(
                    f"{dockerfile.name}:{i.line}: use COPY (ADD fetches URLs and unpacks archives)"
                )
            if i.keyword in ("ENV", "ARG"):
                assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)", i.args, re.I), (
                    f"{dockerfile.name}:{i.line}: secrets must not be baked into images"
                )
            if i.keyword == "RUN" and "apt-get install" in i.args:
                assert "apt-get update" in i.args, (
                    f"{dockerfile.name}:{i.line}: update in the same layer"
                )
                assert "--no-install-recommends" in i.args
                assert "rm -rf /var/lib/apt/lists/*" in i.args, (
                    f"{dockerfile.name}:{i.line}: apt lists left"
                )


def _copies(dockerfile: Path) -> list[tuple[int, list[str], str]]:
    """(line, sources, destination) of each COPY from the build context."""
    out = []
    for st in s.parse_dockerfile(dockerfile):
        for i in st.instructions:
            if i.keyword == "COPY" and "from" not in i.flags:
                ops = i.operands
                out.append((i.line, ops[:-1], ops[-1]))
    return out


@pytest.mark.parametrize("dockerfile", s.DOCKERFILES, ids=IDS)
def test_copied_paths_exist_and_reach_the_context(dockerfile: Path) -> None:
    ignore = s.DockerIgnore(s.ROOT / ".dockerignore")
    for line, sources, _ in _copies(dockerfile):
        for src in sources:
            rel = src.rstrip("/")
            assert (s.ROOT / rel).exists(), f"{dockerfile.name}:{line}: {src} does not exist"
            assert next(ignore.included_files(rel), None), (
                f"{dockerfile.name}:{line}: .dockerignore drops {src}"
            )


def test_dockerignore_keeps_build_outputs_and_local_state_out() -> None:
    ignore = s.DockerIgnore(s.ROOT / ".dockerignore")
    for rel in (
        "compute-rs/target/release/tandem-compute",
        ".venv/bin/python",
        ".git/HEAD",
        "bin/nats-server",
        "tools/node_modules/x",
        ".make/venv",
        "pyclient/python/tandem/__pycache__/x.pyc",
        "pyclient/python/tandem/_native.abi3.so",
    ):
        assert ignore.excluded(rel), f".dockerignore sends {rel}"


def _index(dockerfile: Path, pattern: str) -> int:
    lines = dockerfile.read_text().splitlines()
    hits = [n for n, line in enumerate(lines) if re.search(pattern, line)]
    assert hits, f"{dockerfile.name}: no line matches {pattern!r}"
    return hits[0]


@pytest.mark.parametrize(
    "dockerfile, manifest, sources",
    [
        (
            "compute.Dockerfile",
            r"COPY compute-rs/Cargo.toml compute-rs/Cargo.lock",
            r"COPY compute-rs/ ",
        ),
        (
            "orchestrator.Dockerfile",
            r"COPY orchestrator-go/go.mod orchestrator-go/go.sum",
            r"COPY orchestrator-go/ ",
        ),
        (
            "tests.Dockerfile",
            r"COPY compute-rs/Cargo.toml compute-rs/Cargo.lock",
            r"COPY compute-rs/ ",
        ),
        ("tests.Dockerfile", r"COPY tools/requirements-dev.txt", r"COPY tests/ "),
    ],
)
def test_dependency_manifests_come_before_sources(
    dockerfile: str, manifest: str, sources: str
) -> None:
    path = s.DEPLOY / dockerfile
    assert _index(path, manifest) < _index(path, sources)


@pytest.mark.parametrize("dockerfile", ["compute.Dockerfile", "tests.Dockerfile"])
def test_every_crate_is_in_the_dependency_stage(dockerfile: str) -> None:
    """The deps stage copies each member's manifest; a crate left out breaks
    `cargo fetch --locked`."""
    text = (s.DEPLOY / dockerfile).read_text()
    root = tomllib.loads((s.ROOT / "compute-rs" / "Cargo.toml").read_text())
    assert root["workspace"]["members"] == ["crates/*"], "members changed: update the Dockerfiles"
    crates = sorted(p.parent.name for p in (s.ROOT / "compute-rs" / "crates").glob("*/Cargo.toml"))
    assert crates
    for c in crates:
        assert f"COPY compute-rs/crates/{c}/Cargo.toml crates/{c}/" in text, (
            f"{dockerfile}: crate {c}"
        )
    listed = re.findall(r"COPY compute-rs/crates/([^/]+)/Cargo.toml", text)
    assert sorted(listed) == crates, f"{dockerfile}: lists crates that do not exist"


def test_lock_file_has_only_registry_sources() -> None:
    """The build stage gets the deps stage's registry only (no git checkouts)."""
    lock = tomllib.loads((s.ROOT / "compute-rs" / "Cargo.lock").read_text())
    bad = [
        p["name"]
        for p in lock["package"]
        if p.get("source", "registry+").split("+")[0] != "registry"
    ]
    assert not bad, f"git or path sources in Cargo.lock need the Dockerfiles changed: {bad}"


def test_cargo_stubs_let_cargo_read_the_manifests(tmp_path: Path) -> None:
    """deploy/cargo-stubs.sh on the real manifests: `cargo fetch` (offline, from
    the local cache that make test-rust fills) must accept the stand-ins."""
    cargo = shutil.which("cargo")
    if not cargo:
        pytest.skip("cargo not installed")
    ws = tmp_path / "compute-rs"
    ws.mkdir()
    src = s.ROOT / "compute-rs"
    shutil.copy(src / "Cargo.toml", ws)
    shutil.copy(src / "Cargo.lock", ws)
    for m in src.glob("crates/*/Cargo.toml"):
        (ws / m.parent.relative_to(src)).mkdir(parents=True)
        shutil.copy(m, ws / m.relative_to(src))
    subprocess.run(["sh", str(s.DEPLOY / "cargo-stubs.sh")], cwd=ws, check=True, timeout=30)
    env = {**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target"), "CARGO_TERM_COLOR": "never"}
    out = subprocess.run(
        [cargo, "fetch", "--locked", "--offline"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0 and re.search(
        r"offline|no matching package|failed to download", out.stderr
    ):
        pytest.skip("crates not in the local cargo cache yet (run make test-rust first)")
    assert out.returncode == 0, out.stderr


def test_proto_path_matches_the_image_layout() -> None:
    """tandem-proto's build.rs reads ../../../proto from its crate; the images
    put the workspace at /src/compute-rs and the contracts at /src/proto."""
    build_rs = (s.ROOT / "compute-rs" / "crates" / "tandem-proto" / "build.rs").read_text()
    assert '"../../../proto"' in build_rs
    for name in ("compute.Dockerfile",):
        text = (s.DEPLOY / name).read_text()
        assert "COPY proto/ /src/proto/" in text and "COPY compute-rs/ /src/compute-rs/" in text
    text = (s.DEPLOY / "tests.Dockerfile").read_text()
    assert (
        "WORKDIR /src" in text
        and "COPY proto/ proto/" in text
        and "COPY compute-rs/ compute-rs/" in text
    )


def _image_version(dockerfile: str, image: str) -> tuple[int, ...]:
    for st in s.parse_dockerfile(s.DEPLOY / dockerfile):
        if st.base.startswith(image + ":"):
            tag = st.base.split(":", 1)[1]
            return tuple(int(x) for x in s.find(r"^(\d+(?:\.\d+)*)", tag).split("."))
    raise AssertionError(f"{dockerfile}: no {image} stage")


def test_toolchain_images_satisfy_the_sources() -> None:
    gomod = (s.ROOT / "orchestrator-go" / "go.mod").read_text()
    go_req = tuple(int(x) for x in s.find(r"^go (\d+(?:\.\d+)*)", gomod, re.M).split("."))
    for df in ("orchestrator.Dockerfile", "compute.Dockerfile"):
        assert _image_version(df, "golang") >= go_req, (
            f"{df}: golang image older than go.mod's go {go_req}"
        )
    ws = tomllib.loads((s.ROOT / "compute-rs" / "Cargo.toml").read_text())
    rust_req = tuple(int(x) for x in ws["workspace"]["package"]["rust-version"].split("."))
    for df in ("compute.Dockerfile", "tests.Dockerfile"):
        assert _image_version(df, "rust") >= rust_req, f"{df}: rust image older than rust-version"
    py = tomllib.loads((s.ROOT / "pyclient" / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    low = tuple(int(x) for x in s.find(r"^>=\s*(\d+\.\d+)", py).split("."))
    assert _image_version("tests.Dockerfile", "python") >= low
    # The developers' interpreter: the pins in tools/requirements-dev.txt are
    # resolved and tested on it.
    assert _image_version("tests.Dockerfile", "python")[:2] == sys.version_info[:2]


def test_probe_version_is_the_same_in_both_images() -> None:
    versions = {
        name: re.findall(r"GRPC_HEALTH_PROBE_VERSION=(v[\d.]+)", (s.DEPLOY / name).read_text())
        for name in ("compute.Dockerfile", "orchestrator.Dockerfile")
    }
    flat = {v for vs in versions.values() for v in vs}
    assert len(flat) == 1 and all(versions.values()), versions


def test_entrypoints_are_the_built_binaries() -> None:
    cargo = tomllib.loads(
        (s.ROOT / "compute-rs" / "crates" / "tandem-compute" / "Cargo.toml").read_text()
    )
    assert "tandem-compute" in [b["name"] for b in cargo.get("bin", [])]
    assert "-p tandem-compute" in (s.DEPLOY / "compute.Dockerfile").read_text()
    assert (s.ROOT / "orchestrator-go" / "cmd" / "tandem-orchestrator").is_dir()
    assert "./cmd/tandem-orchestrator" in (s.DEPLOY / "orchestrator.Dockerfile").read_text()

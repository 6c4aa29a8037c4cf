"""docker-compose.yml: valid against the Compose specification, and the
properties the stack relies on (health, ordering, pinning, exposure, scaling,
the cluster profile). Static: no Docker engine is involved."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import _support as s

SCHEMA = Path(__file__).with_name("compose-spec.json")

# Services that run once and exit (profile-only, never restarted).
ONE_SHOT = {"tests"}
# Set-up jobs that run once and exit before the stack starts (no profile:
# the always-on services wait for them with service_completed_successfully).
INIT_JOBS = {"certs"}
# NATS servers with users (deploy/nats/tandem.conf; test_deploy_security.py).
SECURED_NATS = {"nats"}
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}


# ------------------------------------------------------------------ validity


# Interpolated with no variables set (the defaults), and with every variable
# the file uses set to a plausible value.
OVERRIDES = {
    "TANDEM_IMAGE_TAG": "1.2.3",
    "TANDEM_NATS_HOST_PORT": "14222",
    "TANDEM_NATS_MONITOR_HOST_PORT": "18222",
    "TANDEM_ORCH_HOST_PORTS": "15051",
    "TANDEM_ORCH_CLUSTER_HOST_PORTS": "15061-15062",
    "TANDEM_ORCH_DRAIN_TIMEOUT": "10s",
    "TANDEM_ORCH_LOG_LEVEL": "debug",
    "TANDEM_COMPUTE_MAX_REQUEST_BYTES": "1048576",
    "TANDEM_COMPUTE_ENABLE_DEBUG_OPS": "true",
    "TANDEM_COMPUTE_LOG_LEVEL": "debug",
    "TANDEM_TESTS_ADDRESS": "orchestrator-cluster:50051",
    "TANDEM_TESTS_COMPUTE_ADDRESS": "compute:50052",
    "TANDEM_TESTS_NATS_URL": "nats://nats-1:4222",
}


@pytest.mark.parametrize("env", [{}, OVERRIDES], ids=["defaults", "overrides"])
def test_matches_compose_spec_schema(env: dict[str, str]) -> None:
    """The JSON schema of the Compose specification (compose-go v2.13.0)."""
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(s.load_compose(env)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize("env", [{}, OVERRIDES], ids=["defaults", "overrides"])
def test_parses_with_compose_spec_package(env: dict[str, str]) -> None:
    """A second, typed parser of the specification (Rust compose_spec crate):
    stricter on values (ports, durations, references) than the JSON schema."""
    compose_spec = pytest.importorskip("compose_spec")
    text = yaml.safe_dump(s.load_compose(env), sort_keys=False)
    project = compose_spec.PyOptions(apply_merge=True).from_yaml(text)
    project.validate()
    assert set(project.service_names()) == set(s.load_compose(env)["services"])


def test_every_variable_has_a_default_and_is_documented(readme: str) -> None:
    """`docker compose up` must work with an empty environment, and every knob
    must be in deploy/README.md."""
    text = s.COMPOSE_FILE.read_text()
    refs = s.variables(text)
    assert refs, "expected ${VAR:-default} settings in docker-compose.yml"
    for name, op, arg in refs:
        assert op == ":-" and arg, f"${{{name}}} needs a non-empty default: ${{{name}:-...}}"
        assert f"`{name}`" in readme, f"{name} is not documented in deploy/README.md"
    assert set(OVERRIDES) == {n for n, _, _ in refs}, "OVERRIDES should cover every variable"


def test_no_unknown_top_level_keys_and_a_project_name(compose: dict[str, Any]) -> None:
    assert compose.get("name") == "tandem"
    assert "version" not in compose, "the version key is obsolete in the Compose spec"


# ------------------------------------------------------------------ per service


def test_every_service_has_a_healthcheck(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        hc = svc.get("healthcheck")
        assert hc, f"{name}: no healthcheck"
        if hc.get("disable"):
            assert name in ONE_SHOT | INIT_JOBS, (
                f"{name}: only one-shot services may disable the healthcheck"
            )
            continue
        test = hc.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL"), (
            f"{name}: healthcheck test"
        )
        for key in ("interval", "timeout", "start_period"):
            assert key in hc, f"{name}: healthcheck {key}"
            s.duration_seconds(hc[key])
        assert s.duration_seconds(hc["timeout"]) < s.duration_seconds(hc["interval"]) + 1
        assert int(hc.get("retries", 0)) >= 3, f"{name}: healthcheck retries"


def test_depends_on_waits_for_health(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on must use the long form with a condition"
        for dep, spec in deps.items():
            assert dep in svcs, f"{name}: depends on unknown service {dep}"
            cond = spec.get("condition")
            assert cond in ("service_healthy", "service_completed_successfully"), (
                f"{name} -> {dep}: condition {cond!r}"
            )
            if cond == "service_healthy":
                hc = svcs[dep].get("healthcheck") or {}
                assert hc and not hc.get("disable"), (
                    f"{name} waits for {dep}'s health, which has none"
                )
            # A service that is always on must not need one that a profile switches off.
            if not s.profiles_of(svc):
                assert not s.profiles_of(svcs[dep]), (
                    f"{name} (no profile) depends on profiled {dep}"
                )
            else:
                assert not s.profiles_of(svcs[dep]) or s.profiles_of(svcs[dep]) & s.profiles_of(
                    svc
                ), f"{name} depends on {dep}, which is in none of its profiles"


def test_images_are_pinned(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        image = svc.get("image")
        assert image, f"{name}: every service names its image (built ones get a versioned tag)"
        ref, _, digest = image.partition("@")
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        assert tag or digest, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} uses latest"
        assert digest or re.search(r"\d", tag), f"{name}: tag of {image} names no version"
        if "build" not in svc:
            # Full version; Prometheus tags its images v3.16.0.
            assert re.match(r"^v?\d+\.\d+\.\d+", tag), (
                f"{name}: external image {image} needs a full version"
            )


def test_built_images_build_from_the_repository_root(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        if "build" not in svc:
            continue
        build = svc["build"]
        assert build["context"] == ".", f"{name}: the build context is the repository root"
        assert (s.ROOT / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} missing"


def test_ports_are_bound_to_loopback_only(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (
                    f"{name}: port {port} not bound to 127.0.0.1"
                )
                assert "published" in port, f"{name}: {port} publishes on a random host port"
            else:
                assert str(port).startswith("127.0.0.1:"), (
                    f"{name}: port {port} not bound to 127.0.0.1"
                )
                assert str(port).count(":") == 2, f"{name}: {port} publishes on a random host port"
        assert svc.get("network_mode") != "host", f"{name}: host networking exposes every port"


def test_restart_policies(svcs: dict[str, dict[str, Any]]) -> None:
    for name, svc in svcs.items():
        if name in ONE_SHOT | INIT_JOBS:
            assert svc.get("restart") == "no", f"{name}: a one-shot service is never restarted"
            if name in ONE_SHOT:
                assert s.profiles_of(svc), f"{name}: a one-shot service belongs in a profile"
            else:
                assert not s.profiles_of(svc), f"{name}: the stack needs its set-up job"
        else:
            assert svc.get("restart") in LONG_RUNNING_RESTART, f"{name}: restart policy"


def test_services_are_scalable(svcs: dict[str, dict[str, Any]]) -> None:
    """`--scale compute=3` and `--scale orchestrator=N` need no fixed names and
    no single fixed host port."""
    for name in (*s.COMPUTES, *s.ORCHESTRATORS):
        svc = svcs[name]
        assert "container_name" not in svc, f"{name}: container_name prevents scaling"
        for port in svc.get("ports") or []:
            published = str(port["published"])
            assert "-" in published, f"{name}: one fixed host port {published} prevents scaling"
    for name in s.COMPUTES:
        assert not svcs[name].get("ports"), (
            f"{name} needs no host port (reached over the compose network)"
        )


def test_orchestrator_stops_after_draining(svcs: dict[str, dict[str, Any]]) -> None:
    for name in s.ORCHESTRATORS:
        svc = svcs[name]
        drain = s.duration_seconds(s.env_of(svc)["TANDEM_ORCH_DRAIN_TIMEOUT"])
        grace = s.duration_seconds(svc["stop_grace_period"])
        assert grace >= drain + 10, (
            f"{name}: stop_grace_period {grace}s leaves no time after a {drain}s drain"
        )


def _mount(v: Any) -> tuple[str, str]:
    """(source, target) of a volume entry, short ("src:/dst[:ro]") or long form."""
    if isinstance(v, dict):
        return str(v.get("source", "")), str(v["target"])
    src, _, rest = str(v).partition(":")
    return src, rest.split(":")[0]


def test_config_files_exist(compose: dict[str, Any], svcs: dict[str, dict[str, Any]]) -> None:
    defined = compose.get("configs") or {}
    for cname, spec in defined.items():
        assert (s.ROOT / spec["file"]).is_file(), f"config {cname}: {spec['file']} missing"
    for name, svc in svcs.items():
        for c in svc.get("configs") or []:
            assert c["source"] in defined, f"{name}: config {c['source']} undefined"
        for v in svc.get("volumes") or []:
            src = _mount(v)[0]
            if isinstance(v, dict):
                assert v.get("type") == "volume", f"{name}: mount {v}: use a named volume"
            if src.startswith((".", "/")):
                pytest.fail(f"{name}: bind mount {v}: use a named volume or a config")
            assert src in (compose.get("volumes") or {}), f"{name}: volume {src} undefined"


# ------------------------------------------------------------------ wiring


# Which compute and NATS each orchestrator must use.
ORCHESTRATOR_WIRING = {
    "orchestrator": ("compute", ["nats"]),
    "orchestrator-test": ("compute-test", ["nats-test"]),
    "orchestrator-cluster": ("compute", ["nats-1", "nats-2", "nats-3"]),
}


def test_listen_ports_match_health_checks_and_clients(svcs: dict[str, dict[str, Any]]) -> None:
    compute_port = {}
    for name in s.COMPUTES:
        env = s.env_of(svcs[name])
        host, port = s.host_port_of(env["TANDEM_COMPUTE_LISTEN"])
        assert host == "0.0.0.0", f"{name} must listen on every interface inside its container"
        assert f"-addr=127.0.0.1:{port}" in svcs[name]["healthcheck"]["test"]
        assert str(port) in [str(p) for p in svcs[name].get("expose", [])]
        compute_port[name] = port

    assert set(ORCHESTRATOR_WIRING) == set(s.ORCHESTRATORS)
    for name, (compute, nats) in ORCHESTRATOR_WIRING.items():
        svc = svcs[name]
        env = s.env_of(svc)
        host, port = s.host_port_of(env["TANDEM_ORCH_LISTEN"])
        assert host == "0.0.0.0", f"{name} must listen on every interface inside its container"
        assert f"-addr=127.0.0.1:{port}" in svc["healthcheck"]["test"]
        assert all(p["target"] == port for p in svc.get("ports") or [])
        # Every compute replica through Docker's DNS, balanced round-robin.
        assert env["TANDEM_ORCH_COMPUTE"] == f"dns:///{compute}:{compute_port[compute]}", name
        assert compute in svc["depends_on"], f"{name} must wait for {compute}"
        assert env["TANDEM_ORCH_CONFIG"] in [c["target"] for c in svc["configs"]]
        assert "TANDEM_ORCH_NATS_URL" in env, (
            f"{name} must use the compose NATS, not an embedded one"
        )
        urls = env["TANDEM_ORCH_NATS_URL"].split(",")
        assert urls == [f"nats://{n}:4222" for n in nats], f"{name}: NATS URL"
        for n in nats:
            assert n in svc["depends_on"], f"{name} must wait for {n}"
            assert s.profiles_of(svcs[n]) <= s.profiles_of(svc) or not s.profiles_of(svcs[n])


def test_debug_ops_only_in_the_test_stack(svcs: dict[str, dict[str, Any]]) -> None:
    assert s.env_of(svcs["compute"])["TANDEM_COMPUTE_ENABLE_DEBUG_OPS"] == "false"
    assert s.env_of(svcs["compute-test"])["TANDEM_COMPUTE_ENABLE_DEBUG_OPS"] == "true"


def test_tests_service_points_the_harness_at_the_test_stack(
    svcs: dict[str, dict[str, Any]],
) -> None:
    t = svcs["tests"]
    assert s.profiles_of(t) == {"test"}
    env = s.env_of(t)
    assert env["TANDEM_TARGET"] == "compose"
    orch_port = s.host_port_of(s.env_of(svcs["orchestrator-test"])["TANDEM_ORCH_LISTEN"])[1]
    compute_port = s.host_port_of(s.env_of(svcs["compute-test"])["TANDEM_COMPUTE_LISTEN"])[1]
    assert env["TANDEM_ADDRESS"] == f"orchestrator-test:{orch_port}"
    assert env["TANDEM_COMPUTE_ADDRESS"] == f"compute-test:{compute_port}"
    assert env["TANDEM_NATS_URL"] == "nats://nats-test:4222"
    assert t["command"] == ["pytest", "tests"]
    assert t["build"]["dockerfile"] == "deploy/tests.Dockerfile"
    for dep in ("orchestrator-test", "compute-test", "nats-test"):
        assert t["depends_on"][dep]["condition"] == "service_healthy"
        assert s.profiles_of(svcs[dep]) == {"test"}, f"{dep}: part of the test profile only"


def test_nats_services_use_the_checked_configs(
    compose: dict[str, Any], svcs: dict[str, dict[str, Any]]
) -> None:
    files = {k: v["file"] for k, v in compose["configs"].items()}
    for name, svc in svcs.items():
        if not name.startswith("nats"):
            continue
        assert svc["image"].endswith("-alpine"), (
            f"{name}: the alpine image carries wget for the health check"
        )
        [cfg] = svc["configs"]
        if name in SECURED_NATS:
            # Through a shell that only moves the passwords from files into
            # the environment, then execs the server.
            assert svc["command"][:2] == ["/bin/sh", "-c"], name
            assert svc["command"][2].endswith(f"exec nats-server --config {cfg['target']}")
        else:
            assert svc["command"] == ["nats-server", "--config", cfg["target"]]
        conf = (s.ROOT / files[cfg["source"]]).read_text()
        store = s.find(r"store_dir:\s*(\S+)", conf)
        mounts = [_mount(v)[1] for v in svc.get("volumes") or [] if _mount(v)[0] != "certs"] + list(
            svc.get("tmpfs") or []
        )
        assert mounts == [store], (
            f"{name}: the store {store} must be a volume (or tmpfs for the test stack)"
        )
        if svc.get("tmpfs"):
            assert s.profiles_of(svc) == {"test"}, f"{name}: only the test stack may lose its data"
        assert "http: 0.0.0.0:8222" in conf and "http://127.0.0.1:8222/healthz" in " ".join(
            svc["healthcheck"]["test"]
        )
        assert re.search(r"^\s*sync_interval:\s*always", conf, re.M), f"{name}: fsync before acking"


def test_nats_max_payload_matches_the_embedded_server() -> None:
    """The orchestrator sizes inline payloads for its embedded server's
    max_payload; an external server with a smaller one would reject them."""
    broker = (s.ROOT / "orchestrator-go" / "internal" / "broker" / "broker.go").read_text()
    m = re.search(r"MaxPayload:\s*(\d+)\s*<<\s*(\d+)", broker)
    assert m, "MaxPayload of the embedded server not found in broker.go"
    embedded = int(m.group(1)) << int(m.group(2))
    for conf in sorted((s.DEPLOY / "nats").glob("*.conf")):
        mm = re.search(r"^max_payload:\s*(\d+)MB\s*$", conf.read_text(), re.M)
        assert mm, f"{conf.name}: max_payload"
        assert int(mm.group(1)) << 20 == embedded, (
            f"{conf.name}: max_payload != embedded {embedded}"
        )


# ------------------------------------------------------------------ cluster profile


def test_cluster_profile_has_three_nats_nodes(
    compose: dict[str, Any], svcs: dict[str, dict[str, Any]]
) -> None:
    nodes = {
        n: v for n, v in svcs.items() if "cluster" in s.profiles_of(v) and n.startswith("nats")
    }
    assert sorted(nodes) == ["nats-1", "nats-2", "nats-3"]
    conf = (s.ROOT / compose["configs"]["nats-cluster"]["file"]).read_text()
    routes = re.findall(r"nats-route://([a-z0-9-]+):6222", conf)
    assert sorted(routes) == sorted(nodes), "every node routes to all three"
    assert "server_name: $NATS_SERVER_NAME" in conf
    names = [s.env_of(v)["NATS_SERVER_NAME"] for v in nodes.values()]
    assert sorted(names) == sorted(nodes), "server names are unique and match the service names"
    vols = [str(v["volumes"][0]).split(":")[0] for v in nodes.values()]
    assert len(set(vols)) == 3, "each node has its own store"
    for n, v in nodes.items():
        assert v["healthcheck"]["test"][-1] == "http://127.0.0.1:8222/healthz", (
            f"{n}: the full healthz waits for a JetStream meta leader"
        )


def test_cluster_orchestrator_uses_all_nodes_and_three_replicas(
    svcs: dict[str, dict[str, Any]],
) -> None:
    env = s.env_of(svcs["orchestrator-cluster"])
    urls = env["TANDEM_ORCH_NATS_URL"].split(",")
    assert sorted(urls) == [f"nats://nats-{i}:4222" for i in (1, 2, 3)]
    assert env["TANDEM_ORCH_STREAM_REPLICAS"] == "3"
    assert "TANDEM_ORCH_STREAM_REPLICAS" not in s.env_of(svcs["orchestrator"]), (
        "one node: 1 replica"
    )


# ------------------------------------------------------------------ queue config


def _queue_fields() -> dict[str, str]:
    config_go = (s.ROOT / "orchestrator-go" / "internal" / "config" / "config.go").read_text()
    struct = s.find(r"type Queue struct \{(.*?)\n\}", config_go, re.S)
    fields = {tag: typ for typ, tag in re.findall(r'\s(\S+)\s+`toml:"([a-z_]+)"`', struct)}
    assert "name" in fields, "config.Queue fields not found"
    return fields


@pytest.mark.parametrize("config", ["orchestrator-queues", "orchestrator-test-queues"])
def test_queue_config_matches_the_orchestrator_format(compose: dict[str, Any], config: str) -> None:
    """deploy/orchestrator/*.toml against the fields of config.Queue (the
    orchestrator rejects unknown keys at start-up)."""
    fields = _queue_fields()
    path = s.ROOT / compose["configs"][config]["file"]
    queues = tomllib.loads(path.read_text())["queue"]
    names = [q["name"] for q in queues]
    assert "default" in names and len(names) == len(set(names))
    for q in queues:
        for key, value in q.items():
            assert key in fields, f"queue {q['name']}: unknown key {key}"
            if fields[key] == "time.Duration":
                s.duration_seconds(value)
            elif fields[key] in ("int", "int64"):
                assert isinstance(value, int)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", q["name"])
        assert q.get("min_workers", 0) <= q.get("max_workers", 16)


def test_test_stack_loads_the_harness_queues(compose: dict[str, Any]) -> None:
    """The compose test stack must declare the queues the suite's tests use:
    the file the harness gives the orchestrators it starts itself."""
    assert compose["configs"]["orchestrator-test-queues"]["file"] == "./tests/queues.toml"
    harness = (s.ROOT / "tests" / "harness.py").read_text()
    assert re.search(r'QUEUES_TOML = .*"queues\.toml"', harness), (
        "tests/harness.py no longer reads tests/queues.toml"
    )


def test_compose_file_has_no_duplicate_keys() -> None:
    """YAML loaders keep the last of two equal keys without a word; Compose
    rejects them. Checked on the node tree, before anchors are merged."""
    seen: set[int] = set()

    def walk(node: yaml.Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = [
                k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"
            ]
            dup = {k for k in keys if keys.count(k) > 1}
            assert not dup, f"duplicate keys {dup} at line {node.start_mark.line + 1}"
            for k, v in node.value:
                walk(k)
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v)

    walk(yaml.compose(s.COMPOSE_FILE.read_text(), Loader=yaml.SafeLoader))

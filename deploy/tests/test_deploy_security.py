"""docker-compose.yml with TLS and auth on: the `certs` set-up job, the TLS,
mTLS and token settings of compute and the orchestrators, health probes
that speak the same TLS, NATS users whose passwords never reach a command
line, and the compose test twin left plaintext on purpose (no host ports).

Static, except two checks that run the real thing when it is built: the
certs job's script with the real `tandem-orchestrator dev-certs`, and
deploy/nats/tandem.conf with the real nats-server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tandem._stack import Process, free_port, http_ready

import _support as s

CERTS_DIR = "/certs"
# What `tandem-orchestrator dev-certs --out DIR` writes (the shared spec).
DEV_CERTS_FILES = ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
NATS_USERS = ("orchestrator", "worker")
# The always-on, TLS-serving services, and the test twin (plaintext on purpose).
SECURE_COMPUTES = ("compute",)
SECURE_ORCHESTRATORS = ("orchestrator", "orchestrator-cluster")
PLAINTEXT_TWIN = ("compute-test", "orchestrator-test")
TANDEM_CONF = s.DEPLOY / "nats" / "tandem.conf"


def _mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append(v)
        else:
            src, _, rest = str(v).partition(":")
            target, _, mode = rest.partition(":")
            out.append({"source": src, "target": target, "read_only": mode == "ro"})
    return out


def _certs_mount(svc: dict[str, Any]) -> dict[str, Any] | None:
    found = [m for m in _mounts(svc) if m.get("source") == "certs"]
    assert len(found) <= 1
    return found[0] if found else None


def _cert_path(value: str) -> str:
    assert value.startswith(CERTS_DIR + "/"), f"{value}: not in the certs volume"
    name = value[len(CERTS_DIR) + 1 :]
    assert name in DEV_CERTS_FILES, f"{value}: dev-certs writes no {name}"
    return name


def _script(svcs: dict[str, dict[str, Any]]) -> str:
    certs = svcs["certs"]
    assert certs["entrypoint"] == ["/bin/sh", "-c"]
    [script] = certs["command"]
    return str(script)


# ------------------------------------------------------------------ the certs job


def test_certs_job_makes_certificates_for_every_name_dialled(
    svcs: dict[str, dict[str, Any]],
) -> None:
    certs = svcs["certs"]
    assert certs["image"] == svcs["orchestrator"]["image"], "dev-certs is in the orchestrator image"
    assert certs["restart"] == "no" and certs["healthcheck"] == {"disable": True}
    assert not s.profiles_of(certs) and not certs.get("ports")
    mount = _certs_mount(certs)
    assert mount and mount["target"] == CERTS_DIR and not mount.get("read_only")
    script = _script(svcs)
    m = re.search(r"tandem-orchestrator dev-certs --out (\S+) --hosts (\S+)", script)
    assert m and m.group(1) == CERTS_DIR
    hosts = set(m.group(2).split(","))
    # The health probes dial 127.0.0.1; the orchestrators dial compute by its
    # service name; clients on the compose network use the orchestrators'.
    assert {"127.0.0.1", "localhost", *SECURE_COMPUTES, *SECURE_ORCHESTRATORS} <= hosts
    assert re.search(r"if \[ ! -s /certs/ca.pem \]", script), "keeps the CA of earlier runs"
    for user in NATS_USERS:
        assert user in script
    assert "/dev/urandom" in script and "umask 077" in script


def test_secured_services_wait_for_certs_and_mount_them_read_only(
    svcs: dict[str, dict[str, Any]],
) -> None:
    users = [n for n, svc in svcs.items() if n != "certs" and _certs_mount(svc)]
    assert set(users) >= {"nats", *SECURE_COMPUTES, *SECURE_ORCHESTRATORS}
    for name in users:
        svc = svcs[name]
        mount = _certs_mount(svc)
        assert mount and mount["target"] == CERTS_DIR and mount.get("read_only") is True, name
        cond = (svc.get("depends_on") or {}).get("certs", {}).get("condition")
        assert cond == "service_completed_successfully", f"{name} must wait for the certs job"


# ------------------------------------------------------------------ TLS and auth


def test_compute_serves_tls_and_requires_client_certificates(
    svcs: dict[str, dict[str, Any]],
) -> None:
    for name in SECURE_COMPUTES:
        svc = svcs[name]
        env = s.env_of(svc)
        assert _cert_path(env["TANDEM_COMPUTE_TLS_CERT"]) == "server.pem"
        assert _cert_path(env["TANDEM_COMPUTE_TLS_KEY"]) == "server-key.pem"
        assert _cert_path(env["TANDEM_COMPUTE_TLS_CLIENT_CA"]) == "ca.pem"
        assert "TANDEM_COMPUTE_INSECURE" not in env
        probe = svc["healthcheck"]["test"]
        # mTLS: the probe presents the client certificate the orchestrator uses.
        for flag in (
            "-tls",
            "-tls-ca-cert=/certs/ca.pem",
            "-tls-client-cert=/certs/client.pem",
            "-tls-client-key=/certs/client-key.pem",
        ):
            assert flag in probe, f"{name}: health probe lacks {flag}"


def test_orchestrators_serve_tls_require_tokens_and_use_mtls_to_compute(
    svcs: dict[str, dict[str, Any]],
) -> None:
    for name in SECURE_ORCHESTRATORS:
        svc = svcs[name]
        env = s.env_of(svc)
        assert _cert_path(env["TANDEM_ORCH_TLS_CERT"]) == "server.pem"
        assert _cert_path(env["TANDEM_ORCH_TLS_KEY"]) == "server-key.pem"
        assert env["TANDEM_ORCH_AUTH"] == "true"
        assert _cert_path(env["TANDEM_ORCH_COMPUTE_CA"]) == "ca.pem"
        assert _cert_path(env["TANDEM_ORCH_COMPUTE_CERT"]) == "client.pem"
        assert _cert_path(env["TANDEM_ORCH_COMPUTE_KEY"]) == "client-key.pem"
        assert "TANDEM_ORCH_INSECURE" not in env
        compute = env["TANDEM_ORCH_COMPUTE"].removeprefix("dns:///").rpartition(":")[0]
        assert compute in SECURE_COMPUTES, f"{name} dials a TLS compute"
        probe = svc["healthcheck"]["test"]
        assert "-tls" in probe and "-tls-ca-cert=/certs/ca.pem" in probe, name
        # Health stays open under --auth: the probe needs no token.
        assert not any("authorization" in str(a).lower() for a in probe)


def test_the_test_twin_is_plaintext_on_purpose_and_unpublished(
    svcs: dict[str, dict[str, Any]],
) -> None:
    for name in PLAINTEXT_TWIN:
        svc = svcs[name]
        env = s.env_of(svc)
        prefix = s.SERVICE_ENV_PREFIX[name]
        assert env[prefix + "INSECURE"] == "true", f"{name}: says it is insecure"
        assert not [k for k in env if "TLS" in k or k.endswith("_AUTH")], name
        assert not svc.get("ports"), f"{name}: plaintext must stay inside the compose network"
        assert s.profiles_of(svc) == {"test"}


# ------------------------------------------------------------------ NATS users


def test_nats_passwords_come_from_files_never_a_command_line(
    svcs: dict[str, dict[str, Any]],
) -> None:
    nats = svcs["nats"]
    shell = nats["command"][2]
    for user in NATS_USERS:
        var = f"TANDEM_NATS_{user.upper()}_PASSWORD"
        assert f'{var}="$(cat /certs/nats-{user}.password)"' in shell, f"nats: {var}"
    # The server's own argv carries no secret: exec nats-server --config FILE.
    assert shell.rstrip().endswith("exec nats-server --config /etc/nats/tandem.conf")
    env = s.env_of(svcs["orchestrator"])
    assert env["TANDEM_ORCH_NATS_USER"] == "orchestrator"
    assert env["TANDEM_ORCH_NATS_PASSWORD_FILE"] == "/certs/nats-orchestrator.password"
    for name, svc in svcs.items():
        for k, v in s.env_of(svc).items():
            assert not (re.search(r"PASSWORD$|TOKEN$|SECRET", k) and v), (
                f"{name}: {k} holds a secret inline; use a *_FILE from the certs volume"
            )
        argv = " ".join(str(a) for a in (svc.get("command") or []))
        assert not re.search(r"--\S*(password|token)(=|\s)(?!-file)", argv), name


def test_tandem_conf_has_the_users_the_compose_file_gives_passwords_to() -> None:
    if not TANDEM_CONF.is_file():
        pytest.fail(f"{TANDEM_CONF} is missing (NATS users orchestrator and worker)")
    conf = TANDEM_CONF.read_text()
    for user in NATS_USERS:
        assert re.search(rf"user:\s*\"?{user}\"?", conf), f"tandem.conf: no user {user}"
        assert f"$TANDEM_NATS_{user.upper()}_PASSWORD" in conf, (
            f"tandem.conf: {user}'s password must come from $TANDEM_NATS_{user.upper()}_PASSWORD"
        )
    assert "listen: 0.0.0.0:4222" in conf and "store_dir: /data" in conf


# ------------------------------------------------------------------ the real thing


def _has_dev_certs() -> Path | None:
    binary = s.service_binary("TANDEM_ORCH_")
    if binary is None:
        return None
    done = subprocess.run(
        [str(binary), "dev-certs", "--help"], capture_output=True, text=True, timeout=20
    )
    return binary if done.returncode == 0 else None


def test_certs_script_runs_and_keeps_its_files(
    svcs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The certs job's script as compose runs it (`$$` already `$`), with
    the real dev-certs, in a folder standing for the volume; a second run
    (the next `docker compose up`) changes nothing."""
    binary = _has_dev_certs()
    if binary is None:
        pytest.skip("tandem-orchestrator with dev-certs not built (make build)")
    out = tmp_path / "certs"
    out.mkdir()
    script = _script(svcs).replace(CERTS_DIR, str(out))
    env = {**os.environ, "PATH": f"{binary.parent}{os.pathsep}{os.environ['PATH']}"}

    def run() -> dict[str, bytes]:
        done = subprocess.run(
            ["/bin/sh", "-c", script], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return {p.name: p.read_bytes() for p in out.iterdir()}

    first = run()
    for name in DEV_CERTS_FILES:
        assert first[name].startswith(b"-----BEGIN "), name
    for user in NATS_USERS:
        pw = first[f"nats-{user}.password"]
        assert re.fullmatch(rb"[A-Za-z0-9]{32,}", pw), f"{user}: {len(pw)} bytes"
        assert (out / f"nats-{user}.password").stat().st_mode & 0o077 == 0
    assert first["nats-orchestrator.password"] != first["nats-worker.password"]
    assert run() == first


def test_tandem_conf_with_the_real_nats_server(tmp_path: Path) -> None:
    """deploy/nats/tandem.conf on loopback: the compose health check answers,
    both users get in with the passwords from the environment, an anonymous
    client does not."""
    nats_bin = s.nats_server_binary()
    if nats_bin is None:
        pytest.skip("nats-server not built (make bin/nats-server)")
    if not TANDEM_CONF.is_file():
        pytest.fail(f"{TANDEM_CONF} is missing")
    nats = pytest.importorskip("nats")
    client, http = free_port(), free_port()
    conf = TANDEM_CONF.read_text()
    conf = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
    conf = conf.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{http}")
    conf = conf.replace("store_dir: /data", f"store_dir: {tmp_path / 'store'}")
    path = tmp_path / "tandem.conf"
    path.write_text(conf)
    passwords = {u: f"pw-{u}-{os.getpid()}" for u in NATS_USERS}
    env = {f"TANDEM_NATS_{u.upper()}_PASSWORD": p for u, p in passwords.items()}
    p = Process(
        "nats-server",
        [str(nats_bin), "-c", str(path)],
        log_path=tmp_path / "nats.log",
        env=env,
        ready=http_ready(f"http://127.0.0.1:{http}/healthz?js-enabled-only=true"),
        ready_timeout=30,
    )
    p.start()
    url = f"nats://127.0.0.1:{client}"

    async def check() -> None:
        for user, password in passwords.items():
            nc = await nats.connect(
                url, user=user, password=password, allow_reconnect=False, connect_timeout=5
            )
            await nc.flush()
            await nc.close()
        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)

    try:
        asyncio.run(asyncio.wait_for(check(), 30))
    finally:
        p.stop(timeout=10)


def test_the_orchestrator_image_lets_the_certs_job_write_the_volume(
    svcs: dict[str, dict[str, Any]],
) -> None:
    """A new named volume takes the owner of its mount point in the image of
    the first container that mounts it (the certs job): /certs must exist
    there, owned by the unprivileged user the image runs as."""
    runtime = s.parse_dockerfile(s.DEPLOY / "orchestrator.Dockerfile")[-1]
    runs = " ".join(i.args for i in runtime.instructions if i.keyword == "RUN")
    m = re.search(r"install -d -o tandem -g tandem -m 0750 ([^&]+)", runs)
    assert m and CERTS_DIR in m.group(1).split(), "orchestrator image: /certs owned by tandem"
    users = [i.args for i in runtime.instructions if i.keyword == "USER"]
    assert users == ["10001:10001"]
    assert "--uid 10001" in runs
    assert not svcs["certs"].get("user"), "the certs job runs as the image's user, not root"

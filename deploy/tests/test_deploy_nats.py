"""deploy/nats/*.conf with the real nats-server (the version pinned in
orchestrator-go/go.mod, which the Makefile builds into bin/): the configs
parse, a single server answers the compose health check, and the cluster
config forms a three-node JetStream cluster that holds a stream at 3 replicas.

Inside compose the servers listen on 0.0.0.0 and find each other by service
name; here the same files run on loopback with free ports, rewritten only in
those addresses and the store folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem._stack import Process, free_port, http_ready

import _support as s

NATS = s.nats_server_binary()
pytestmark = pytest.mark.skipif(NATS is None, reason="nats-server not built (make bin/nats-server)")

SINGLE = s.DEPLOY / "nats" / "single.conf"
CLUSTER = s.DEPLOY / "nats" / "cluster.conf"


def localize(
    conf: str,
    store: Path,
    client: int,
    http: int,
    route: int | None = None,
    routes: dict[str, int] | None = None,
) -> str:
    out = conf.replace("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client}")
    out = out.replace("http: 0.0.0.0:8222", f"http: 127.0.0.1:{http}")
    out = out.replace("store_dir: /data", f"store_dir: {store}")
    if route is not None:
        out = out.replace("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{route}")
    for name, port in (routes or {}).items():
        out = out.replace(f"nats-route://{name}:6222", f"nats-route://127.0.0.1:{port}")
    assert "0.0.0.0" not in out and "/data" not in out, "config changed: update localize()"
    return out


class Servers:
    """The nats-servers of one test; each ready once its monitoring URL answers 200."""

    def __init__(self) -> None:
        self.procs: list[Process] = []

    def start(self, conf: Path, health_url: str, env: dict[str, str] | None = None) -> Process:
        """Starts nats-server on ``conf`` without waiting (a cluster node is
        healthy only once its peers are up): call ``wait_ready()``."""
        p = Process(
            conf.stem,
            [str(NATS), "-c", str(conf)],
            log_path=conf.with_suffix(".log"),
            env=env,
            ready=http_ready(health_url),
            ready_timeout=25,
        )
        self.procs.append(p)
        return p.start(wait=False)

    def stop(self) -> None:
        for p in self.procs:
            p.stop(timeout=10)


@pytest.fixture
def servers() -> Iterator[Servers]:
    srv = Servers()
    try:
        yield srv
    finally:
        srv.stop()


def test_configs_parse() -> None:
    ok = subprocess.run(
        [str(NATS), "-t", "-c", str(SINGLE)], capture_output=True, text=True, timeout=20
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    env = {**os.environ, "NATS_SERVER_NAME": "nats-1"}
    ok = subprocess.run(
        [str(NATS), "-t", "-c", str(CLUSTER)], capture_output=True, text=True, env=env, timeout=20
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_single_server_passes_the_compose_health_check(tmp_path: Path, servers: Servers) -> None:
    client, http = free_port(), free_port()
    conf = tmp_path / "single.conf"
    conf.write_text(localize(SINGLE.read_text(), tmp_path / "store", client, http))
    # The URL of the compose health check, on this server's monitoring port.
    servers.start(conf, f"http://127.0.0.1:{http}/healthz?js-enabled-only=true").wait_ready()
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/varz", timeout=2) as r:
        varz = json.load(r)
    assert varz["max_payload"] == 8 << 20
    assert varz["jetstream"]["config"]["sync_always"] is True


def test_cluster_forms_and_holds_a_stream_at_three_replicas(
    tmp_path: Path, servers: Servers
) -> None:
    names = ["nats-1", "nats-2", "nats-3"]
    ports = {n: (free_port(), free_port(), free_port()) for n in names}  # client, http, route
    routes = {n: p[2] for n, p in ports.items()}
    for n in names:
        client, http, route = ports[n]
        conf = tmp_path / f"{n}.conf"
        conf.write_text(localize(CLUSTER.read_text(), tmp_path / n, client, http, route, routes))
        # The compose health check of a cluster node: the full /healthz,
        # which waits for a JetStream meta leader.
        servers.start(conf, f"http://127.0.0.1:{http}/healthz", {"NATS_SERVER_NAME": n})
    for p in servers.procs:
        p.wait_ready()

    nats = pytest.importorskip("nats")
    from nats.js.api import StreamConfig

    async def replicate() -> tuple[int, set[str]]:
        nc = await nats.connect(
            [f"nats://127.0.0.1:{ports[n][0]}" for n in names], connect_timeout=5
        )
        try:
            js = nc.jetstream()
            # Right after the meta leader is elected, peers may still be
            # catching up: placement can fail for a moment.
            deadline = time.monotonic() + 15
            while True:
                try:
                    info = await js.add_stream(
                        StreamConfig(name="DEPLOY_CHECK", subjects=["deploy.check"], num_replicas=3)
                    )
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            await js.publish("deploy.check", b"x" * (7 << 20))  # under max_payload
            cluster = info.cluster
            members = {cluster.leader} | {r.name for r in cluster.replicas or []}
            return info.config.num_replicas, members
        finally:
            await nc.close()

    try:
        replicas, members = asyncio.run(asyncio.wait_for(replicate(), 30))
    except Exception as e:
        logs = "\n".join(f"--- {p.name}\n{p.log_tail(40)}" for p in servers.procs)
        pytest.fail(f"{e!r}\n{logs}")
    assert replicas == 3
    assert members == set(names)
    assert re.search(r"cluster_name|tandem", CLUSTER.read_text())

"""Egress proxies through the built images: the gateway (runtime docker) starts real instance containers, one
with a proxy that needs a login (tests/proxies.py, run in a container on the simulator's network), one with a
proxy that is not there. The first reaches the simulator through its proxy and serves a generation; the second
is `unreachable`, with Chromium's error, and out of the pool."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    E2E_LABEL,
    E2E_PREFIX,
    SIMULATOR_IMAGE,
    GatewayProcess,
    SimulatorNetwork,
    print_fleet_logs,
    new_namespace,
    remove_namespace,
)
from tests.polling import wait_until

pytestmark = [pytest.mark.docker]

PROXIES_PY = Path(__file__).resolve().parents[1] / "proxies.py"
SECRET = "e2e-s3cret"
PROXY_PORT = 8888


@pytest.fixture
def proxy_container(engine: docker.DockerClient, sim_network: SimulatorNetwork) -> Iterator[Any]:
    """The recording HTTP proxy (with a login) in a container on the simulator's network; it prints CARRIED lines."""
    container = engine.containers.run(
        SIMULATOR_IMAGE,
        ["python", "/proxy/proxies.py", "--kind", "http", "--port", str(PROXY_PORT), "--username", "e2e",
         "--password", SECRET],
        detach=True,
        name=f"{E2E_PREFIX}proxy-{uuid.uuid4().hex[:6]}",
        network=sim_network.network,
        labels={E2E_LABEL: "1"},
        volumes={str(PROXIES_PY): {"bind": "/proxy/proxies.py", "mode": "ro"}},
    )
    try:
        wait_until(lambda: b"LISTENING" in container.logs(), timeout=30, what="the proxy container")
        yield container
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@pytest.fixture
def gateway_sqlite(
    engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """One gateway on SQLite (the proxy path does not depend on the database; the logic tests run both)."""
    namespace = new_namespace("px")
    process = GatewayProcess(
        f"sqlite+aiosqlite:///{tmp_path}/gateway.db", tmp_path / "data", sim_network, namespace, settings=dict(FAST_SETTINGS)
    )
    failed_before = request.session.testsfailed
    try:
        process.start()
        yield process
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, process)
        remove_namespace(engine, namespace)


def test_proxied_instance_reaches_the_simulator_through_its_proxy_and_a_dead_one_is_unreachable(
    gateway_sqlite: GatewayProcess, proxy_container: Any, sim_network: SimulatorNetwork
) -> None:
    gateway = gateway_sqlite
    proxy = f"http://e2e:{SECRET}@{proxy_container.name}:{PROXY_PORT}"
    created = gateway.call("POST", "/api/instances", json={"name": "via-proxy", "proxy": proxy})
    assert SECRET not in str(created) and created["instance"]["proxy"] == f"http://e***:***@{proxy_container.name}:{PROXY_PORT}"
    proxied = created["instance_id"]
    dead = gateway.create("dead-proxy")
    # Nothing listens on port 9 inside the instance's own container.
    gateway.call("PATCH", f"/api/instances/{dead}", json={"proxy": "http://127.0.0.1:9"})
    for instance_id in (proxied, dead):
        gateway.call("POST", f"/api/instances/{instance_id}/start")

    gateway.wait_running(proxied)
    simulator_host = sim_network.aistudio_url.removeprefix("http://")
    carried = [line.split(" ", 1)[1] for line in proxy_container.logs().decode().splitlines() if line.startswith("CARRIED ")]
    assert simulator_host in carried
    # The gateway's own calls to the instances (status probes, the live view, generations) never pass the proxy.
    assert not [where for where in carried if where.endswith(":8000")]

    def unreachable() -> dict[str, Any] | None:
        view = gateway.instance(dead)
        return view if view["status"] == "running" and view["login_state"] == "unreachable" else None

    view = wait_until(unreachable, timeout=120, what="the dead-proxy instance to be unreachable")
    assert "net::ERR_PROXY_CONNECTION_FAILED" in view["page_error"] and view["available"] is False
    assert "ERR_PROXY_CONNECTION_FAILED" in " ".join(e["message"] for e in gateway.events(dead))
    stats = gateway.call("GET", "/api/stats")["stats"]
    assert (stats["running_instances"], stats["available_instances"]) == (2, 1)

    # The pool serves through the proxied instance only.
    answer = requests.post(f"{gateway.api_url}/generate", json={"prompt": "a red square", "aspect_ratio": "1:1"}, timeout=120)
    body = answer.json()
    assert answer.status_code == 200 and body["success"] is True, body
    assert body["instance"] == "via-proxy"
    assert SECRET not in gateway.log_tail(10_000)

"""Egress proxies through the built images: the gateway (runtime docker) starts real instance containers, one
with a proxy that needs a login (tests/proxies.py, run in a container on the simulator's network), one with a
proxy that is not there. The first reaches the simulator through its proxy and serves a generation; the second
is `unreachable`, with Chromium's error, and out of the pool."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from gateway.runtime.docker import LABEL_RELAY_PORT, LABEL_ROLE, ROLE_RELAY
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    E2E_LABEL,
    E2E_PREFIX,
    SIMULATOR_IMAGE,
    GatewayProcess,
    SimulatorNetwork,
    fleet_containers,
    print_fleet_logs,
    new_namespace,
    remove_namespace,
)
from tests.polling import wait_until
from tests.proxies import ProxyThread

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
    # Nothing listens on the simulator's port 9 (a loopback address would now be relayed to this host).
    simulator_name = sim_network.aistudio_url.removeprefix("http://").split(":")[0]
    gateway.call("PATCH", f"/api/instances/{dead}", json={"proxy": f"http://{simulator_name}:9"})
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


# ---- a proxy on the host's loopback, as desktop proxy clients run -----------------------------------------


@pytest.fixture
def host_proxy(engine: docker.DockerClient, sim_network: SimulatorNetwork) -> Iterator[ProxyThread]:
    """A SOCKS5 proxy with a login listening on this host's 127.0.0.1 only; it finds the simulator by its address
    on the network (the host cannot resolve container names), as a desktop client finds the internet."""
    simulator = engine.containers.get(sim_network.aistudio_url.removeprefix("http://").split(":")[0])
    address = simulator.attrs["NetworkSettings"]["Networks"][sim_network.network]["IPAddress"]
    proxy = ProxyThread("socks5", username="clash", password=SECRET, hosts={simulator.name: address}).start()
    yield proxy
    proxy.close()


@pytest.fixture
def gateway_loopback(
    engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """A gateway whose "test proxy" target is the simulator, as the instances name it."""
    namespace = new_namespace("lo")
    target = sim_network.aistudio_url.removeprefix("http://")
    settings = {**FAST_SETTINGS, "PROXY_TEST_TARGET": target}
    process = GatewayProcess(f"sqlite+aiosqlite:///{tmp_path}/gateway.db", tmp_path / "data", sim_network, namespace, settings=settings)
    failed_before = request.session.testsfailed
    try:
        process.start()
        yield process
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, process)
        remove_namespace(engine, namespace)


def test_a_proxy_on_the_hosts_loopback_only_is_reached_from_an_instance_container(
    gateway_loopback: GatewayProcess, host_proxy: ProxyThread, sim_network: SimulatorNetwork, engine: docker.DockerClient
) -> None:
    gateway = gateway_loopback
    loopback = host_proxy.url()  # socks5://clash:<secret>@127.0.0.1:<port>
    simulator_host = sim_network.aistudio_url.removeprefix("http://")

    # Tested before any instance depends on it: through the relay, as the instances will reach it.
    tested = gateway.call("POST", "/api/proxies/test", json={"proxy": loopback})
    assert tested["success"] is True and tested["via"] == "relay", tested
    assert tested["exit_address"] and SECRET not in str(tested)
    print(f"\nloopback proxy test through the relay: {tested['latency_ms']} ms, exit {tested['exit_address']}")
    assert host_proxy.carried == [simulator_host]

    created = gateway.call("POST", "/api/instances", json={"name": "via-clash", "proxy": loopback})
    instance_id = created["instance_id"]
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id)  # logged in: its page loaded the simulator through the host's proxy
    assert simulator_host in host_proxy.carried[1:]
    assert not [where for where in host_proxy.carried if where.endswith(":8000")]
    (relay,) = [c for c in fleet_containers(engine, gateway.namespace) if c.labels.get(LABEL_ROLE) == ROLE_RELAY]
    assert relay.labels[LABEL_RELAY_PORT] == str(host_proxy.port)
    by_instance = gateway.call("POST", "/api/proxies/test", json={"instance_id": instance_id})
    assert by_instance["success"] is True and by_instance["source"] == "instance" and by_instance["via"] == "relay"

    answer = requests.post(f"{gateway.api_url}/generate", json={"prompt": "a red square", "aspect_ratio": "1:1"}, timeout=120)
    assert answer.status_code == 200 and answer.json()["success"] is True, answer.text

    # Nothing on a loopback port: said in plain words, before an instance depends on it.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        free = taken.getsockname()[1]
    refused = gateway.call("POST", "/api/proxies/test", json={"proxy": f"http://127.0.0.1:{free}"})
    assert refused["success"] is False and refused["error_code"] == "refused_loopback", refused
    assert f"127.0.0.1:{free}" in refused["error"]

    # The relay goes with the last instance that uses it.
    gateway.call("POST", f"/api/instances/{instance_id}/stop")
    gateway.wait_status(instance_id, "stopped")
    wait_until(lambda: not [c for c in fleet_containers(engine, gateway.namespace) if c.labels.get(LABEL_ROLE) == ROLE_RELAY],
               timeout=30, what="the relay to be removed")
    assert SECRET not in gateway.log_tail(10_000)

"""End-to-end fixtures: the real engine and images, the simulator container on a network of its own, and the
gateway as a process on the host (see harness.py). Skipped without an engine or the images, unless
AISTUDIO_REQUIRE_ALL=1 (then they fail)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import skip_or_fail
from tests.e2e.harness import (
    INSTANCE_IMAGE,
    SIMULATOR_IMAGE,
    GatewayProcess,
    SimulatorNetwork,
    engine_problem,
    fleet_containers,
    new_namespace,
    remove_namespace,
    remove_stale,
    simulator_network,
)

# Quick passes and restarts, so that a killed container is noticed and replaced in about a second.
FAST_SETTINGS = {
    "RECONCILE_INTERVAL": "0.5",
    "RESTART_BACKOFF_BASE": "0.2",
    "STOP_TIMEOUT": "5",
}


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    problem = engine_problem(INSTANCE_IMAGE, SIMULATOR_IMAGE)
    if problem:
        skip_or_fail(problem)
    client = docker.from_env(timeout=60)
    remove_stale(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sim_network(engine: docker.DockerClient) -> Iterator[SimulatorNetwork]:
    with simulator_network(engine) as network:
        yield network


@pytest.fixture
def gateway(
    engine: docker.DockerClient,
    sim_network: SimulatorNetwork,
    database_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayProcess]:
    """A running gateway on each database, in a namespace of its own; its containers and volumes are
    removed afterwards, and its log and its containers' logs are printed when the test failed."""
    namespace = new_namespace("cp")
    process = GatewayProcess(database_url, tmp_path / "data", sim_network, namespace, settings=dict(FAST_SETTINGS))
    failed_before = request.session.testsfailed
    try:
        process.start()
        yield process
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            _report(engine, process, request)
        remove_namespace(engine, namespace)
        if process.log_path is not None:
            process.log_path.unlink(missing_ok=True)


def _report(engine: docker.DockerClient, process: GatewayProcess, request: pytest.FixtureRequest) -> None:
    """Like dockerspawner's conftest: what the gateway and its containers said, for a failed test."""
    parts = [f"\n---- gateway log after {request.node.name} ----\n{process.log_tail(120)}"]
    for container in fleet_containers(engine, process.namespace):
        text = container.logs(tail=60).decode("utf-8", "replace")
        parts.append(f"---- {container.name} ({container.status}) ----\n{text}")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for part in parts:
        if reporter is not None:
            reporter.write_line(part)
        else:
            print(part)

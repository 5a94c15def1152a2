"""The chaos suite: the real engine, real instance containers, a Postgres server of the suite's own (which it
restarts), and the gateway as a process on the host (which it SIGKILLs). Each case breaks one thing under
load and asserts what must hold (README: "Failure modes").

These tests run after every other test of the run, and the Docker daemon restart runs last of all (the hook
below), because they disturb what other tests lean on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.chaos.fleet import ChaosFleet, open_chaos_fleet
from tests.e2e.conftest import engine  # noqa: F401 - the shared fixture: skips or fails without an engine
from tests.e2e.harness import SimulatorNetwork, simulator_network
from tests.pgserver import PostgresServer, postgres_server

CHAOS_DIR = Path(__file__).parent
LAST_MARK = "runs_last"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{LAST_MARK}: a chaos case that disturbs the whole machine (the Docker daemon)")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Chaos cases after everything else, in file order; those marked `runs_last` at the very end."""

    def chaos(item: pytest.Item) -> bool:
        return CHAOS_DIR in Path(str(item.fspath)).parents

    others = [i for i in items if not chaos(i)]
    cases = [i for i in items if chaos(i) and i.get_closest_marker(LAST_MARK) is None]
    last = [i for i in items if chaos(i) and i.get_closest_marker(LAST_MARK) is not None]
    items[:] = others + cases + last


@pytest.fixture(scope="session")
def chaos_postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def chaos_sim(engine: docker.DockerClient) -> Iterator[SimulatorNetwork]:  # noqa: F811
    with simulator_network(engine) as network:
        yield network


@pytest.fixture(scope="module")
def fleet(
    engine: docker.DockerClient,  # noqa: F811
    chaos_sim: SimulatorNetwork,
    chaos_postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ChaosFleet]:
    """Three signed-in instances behind a gateway on the suite's own Postgres, for one module."""
    with open_chaos_fleet(engine, chaos_sim, chaos_postgres, tmp_path_factory.mktemp("chaos"), request) as opened:
        yield opened

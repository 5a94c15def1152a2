from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.instance.harness import RunningInstance, require_chromium, signed_in_state, start_instance
from tests.simulator.fixtures import control, simulator_server, simulator_url  # noqa: F401

ACCOUNT = "acct-main"


@pytest.fixture(scope="session")
def instance(simulator_server: str, tmp_path_factory) -> Iterator[RunningInstance]:  # noqa: F811
    """One signed-in instance shared by the tests that leave it as they found it."""
    require_chromium()
    data_dir = tmp_path_factory.mktemp("instance") / "data"
    with start_instance(simulator_server, data_dir, session=signed_in_state(simulator_server, ACCOUNT)) as running:
        yield running


@pytest.fixture
def inst(instance: RunningInstance, simulator_url: str) -> RunningInstance:  # noqa: F811
    """The shared instance, with the simulator reset and the page idle."""
    instance.wait_for(lambda s: s["ready"] and not s["busy"] and s["login_state"] == "logged_in", what="idle")
    return instance


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    require_chromium()
    return tmp_path / "data"


def sim(url: str, path: str, body=None):
    return control(url, path, body)

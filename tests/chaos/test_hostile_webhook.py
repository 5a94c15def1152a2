"""A hostile webhook receiver against a real gateway process (issue 21): tasks whose `callback_url` answers with a
body that never ends (as fast as loopback carries it) or with a 1 GiB gzip bomb, each answer a 500 so every attempt
is made. What must hold: the gateway stays up and serving, and its memory (the process's resident set, read from
/proc before and after, printed) grows by less than a generous bound. No timing is asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from tests.chaos.fleet import ChaosFleet, open_chaos_fleet
from tests.e2e.harness import SimulatorNetwork
from tests.hostile import Hostile, hostile_server
from tests.pgserver import PostgresServer
from tests.polling import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

TASKS_PER_RECEIVER = 4
ATTEMPTS = 3
BOMB = 1 << 30  # unpacked; about 1 MB on the wire
GROWTH_BOUND = 50 * 1024 * 1024  # the bomb alone is twenty times this; a gateway that read either answer passes it
HOOKS = {
    "WEBHOOK_SECRET": "chaos-webhook-secret", "WEBHOOK_ATTEMPTS": str(ATTEMPTS), "WEBHOOK_BACKOFF": "0.2",
    "WEBHOOK_TIMEOUT": "5", "FETCH_PRIVATE_ADDRESSES": "true",  # private only so that loopback stands in for the receiver
}


@pytest.fixture(scope="module")
def hooked_fleet(
    engine: docker.DockerClient,
    chaos_sim: SimulatorNetwork,
    chaos_postgres: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ChaosFleet]:
    """One signed-in instance behind a gateway whose webhooks are signed and may reach loopback."""
    with open_chaos_fleet(engine, chaos_sim, chaos_postgres, tmp_path_factory.mktemp("hooks"), request,
                          instances=1, settings=HOOKS) as opened:
        yield opened


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def submit(fleet: ChaosFleet, callback_url: str) -> str:
    accepted = requests.post(f"{fleet.api}/tasks", json={"prompt": f"hook {uuid.uuid4().hex[:6]}", "callback_url": callback_url},
                             timeout=30)
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["task_id"])


def every_attempt_ended(receivers: list[Hostile]) -> bool:
    expected = TASKS_PER_RECEIVER * ATTEMPTS
    return all(len(r.requests) == expected and all(q["ended"] for q in r.requests) for r in receivers)


def test_a_receiver_answering_without_end_or_with_a_gzip_bomb_leaves_the_gateway_up_and_its_memory_bounded(
    hooked_fleet: ChaosFleet,
) -> None:
    fleet = hooked_fleet
    fleet.simulator()
    assert fleet.generate("warm-up").status_code == 200  # first-use allocations before the measure
    pid = fleet.gateway.process.pid  # type: ignore[union-attr]
    before = resident_bytes(pid)
    with (
        hostile_server("endless", status=500, chunk=64 * 1024, pause=0.0) as (endless_url, endless),
        hostile_server("bomb", status=500, bomb_bytes=BOMB) as (bomb_url, bomb),
    ):
        bomb.packed_bomb()
        for _ in range(TASKS_PER_RECEIVER):
            submit(fleet, f"{endless_url}/hook")
            submit(fleet, f"{bomb_url}/hook")
        wait_until(lambda: every_attempt_ended([endless, bomb]), timeout=300, pause=0.5,
                   what=f"{ATTEMPTS} attempts at each of {2 * TASKS_PER_RECEIVER} tasks, each hung up by the gateway")
        sent = sum(q["sent"] for q in endless.requests)
    after = resident_bytes(pid)
    status, health = fleet.health()
    print(f"\ngateway RSS before {before / 2**20:.1f} MiB, after {after / 2**20:.1f} MiB "
          f"(growth {(after - before) / 2**20:+.1f} MiB); {len(endless.requests)} endless answers "
          f"({sent / 2**20:.1f} MiB pushed before hang-up), {len(bomb.requests)} gzip bombs of {BOMB >> 30} GiB")
    assert fleet.gateway.process.poll() is None and status == 200, health  # type: ignore[union-attr]
    assert fleet.generate("after the hostile receivers").status_code == 200
    assert after - before < GROWTH_BOUND

"""Two gateways on one database (Postgres, or one SQLite file): one reconciles, the other takes over when the first
goes away."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.app import Fleet
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.polling import await_until


async def a_pass_of_each(*fleets: Fleet) -> None:
    """Every fleet's loop makes a whole pass that begins now: what a pass would do wrongly has been done by then."""
    for fleet in fleets:
        await asyncio.wait_for(fleet.reconciler.next_pass(), 10)


async def test_one_reconciler_per_database_and_failover(database_url: str, tmp_path: Path) -> None:
    fake = FakeRuntime()  # one engine both gateways manage
    settings = make_settings(database_url, tmp_path)
    first = await Fleet.open(settings, runtime=fake)
    second = await Fleet.open(settings, runtime=fake)
    try:
        await await_until(lambda: first.reconciler.is_leader or second.reconciler.is_leader, timeout=5,
                          what="either gateway to lead")
        await a_pass_of_each(first, second)  # each tried the lock again after one took it
        assert first.reconciler.is_leader != second.reconciler.is_leader
        leader, follower = (first, second) if first.reconciler.is_leader else (second, first)
        # The follower's API still works; the leader does the work.
        instance_id = (await follower.instances.create("shared")).instance_id
        await follower.instances.start(instance_id)
        await await_until(lambda: follower.instances.get(instance_id), until=lambda view: view.status == "running",
                          timeout=5, what="the instance running")
        await a_pass_of_each(leader, follower)
        assert fake.starts(instance_id) == 1
        await leader.close()
        await await_until(lambda: follower.reconciler.is_leader, timeout=5, what="the follower to take over")
        fake.kill(instance_id)  # the new leader notices and restarts it
        await await_until(lambda: fake.starts(instance_id), until=lambda starts: starts == 2, timeout=5,
                          what="the new leader to restart the instance")
    finally:
        for fleet in (first, second):
            await fleet.close()

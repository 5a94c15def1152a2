"""Two gateways on one Postgres: one reconciles, the other takes over when the first goes away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from gateway.app import Fleet
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings


async def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_one_reconciler_per_database_and_failover(postgres_url: str, tmp_path: Path) -> None:
    fake = FakeRuntime()  # one engine both gateways manage
    settings = make_settings(postgres_url, tmp_path)
    first = await Fleet.open(settings, runtime=fake)
    second = await Fleet.open(settings, runtime=fake)
    try:
        await wait_for(lambda: first.reconciler.is_leader or second.reconciler.is_leader)
        await asyncio.sleep(0.2)
        assert first.reconciler.is_leader != second.reconciler.is_leader
        leader, follower = (first, second) if first.reconciler.is_leader else (second, first)
        # The follower's API still works; the leader does the work.
        instance_id = (await follower.instances.create("shared")).instance_id
        await follower.instances.start(instance_id)
        await wait_for(lambda: fake.starts(instance_id) == 1)
        await asyncio.sleep(0.3)  # several passes of both
        assert fake.starts(instance_id) == 1
        assert (await follower.instances.get(instance_id)).status == "running"
        await leader.close()
        await wait_for(lambda: follower.reconciler.is_leader)
        fake.kill(instance_id)  # the new leader notices and restarts it
        await wait_for(lambda: fake.starts(instance_id) == 2)
    finally:
        for fleet in (first, second):
            await fleet.close()

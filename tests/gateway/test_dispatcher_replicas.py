"""Two gateways (two Fleets, two apps) on one Postgres: leases never collide, and a release in one wakes the
other's queue through LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Fleet, create_api_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY, make_settings
from tests.gateway.pool import DISPATCH_FAST, serve, start_instances
from tests.gateway.test_dispatcher import assert_no_overlap
from tests.polling import await_until

pytestmark = pytest.mark.postgres


@contextlib.asynccontextmanager
async def replica(url: str, data_dir: Path, fake: FakeRuntime, **overrides: Any) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    settings = make_settings(url, data_dir, encryption_key=REPLICA_ENCRYPTION_KEY, **{**DISPATCH_FAST, **overrides})
    fleet = await Fleet.open(settings, runtime=fake)
    try:
        async with serve(create_api_app(settings, fleet=fleet)) as base:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                yield fleet, http
    finally:
        await fleet.close()


async def test_two_gateways_never_lease_one_instance_twice(postgres_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    fake.generate_delay = 0.03
    async with replica(postgres_url, tmp_path / "a", fake) as (fleet_a, http_a):
        await start_instances(fleet_a, 3)
        async with replica(postgres_url, tmp_path / "b", fake) as (_fleet_b, http_b):
            calls = [http.post("/generate", json={"prompt": f"{name}{i}"}) for i in range(30) for name, http in (("a", http_a), ("b", http_b))]
            responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 60
    assert all(r.json()["success"] for r in responses)
    assert len(fake.generations) == 60 and len({g.instance_id for g in fake.generations}) == 3
    assert_no_overlap(fake)


async def test_a_release_in_one_gateway_wakes_the_queue_of_the_other(postgres_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    """Polling is set to an hour (past the client's timeout), so only the notification can hand B the
    instance A frees."""
    fake.generate_delay = 0.3
    slow_poll = {"queue_poll_interval": 3600.0}
    async with replica(postgres_url, tmp_path / "a", fake, **slow_poll) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake, **slow_poll) as (fleet_b, http_b):
            listening = fleet_b.dispatcher.listening
            assert listening is not None
            await asyncio.wait_for(listening.wait(), 10)
            first = asyncio.create_task(http_a.post("/generate", json={"prompt": "on a"}))
            await await_until(lambda: _any_generation(fake), timeout=10, what="a generation on gateway A")
            second = await http_b.post("/generate", json={"prompt": "queued on b"})
            assert (await first).json()["success"] is True
    assert second.json()["success"] is True and second.json()["timings"]["queued_ms"] > 0


async def _any_generation(fake: FakeRuntime) -> bool:
    return bool(fake.generations)

"""Helpers for the generation API's tests: a Fleet on the fake runtime with running instances, and its API
served by uvicorn on the test's own event loop (Litestar's test client runs the app on a loop of its own,
which a Fleet opened by the test cannot share, and it serves one request at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from litestar import Litestar
from sqlalchemy import func, select

from gateway.app import Fleet, create_api_app
from gateway.db.models import Task
from gateway.db.types import utcnow
from gateway.dispatcher.ledger import Clock
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.polling import await_until

# Queue wake-ups fast enough for tests; generation timeouts short enough for timeouts to be tested.
class ManualClock:
    """A fake clock for the account ledger: it stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


DISPATCH_FAST = {"queue_poll_interval": 0.05, "generation_timeout": 5.0, "lease_margin": 1.0}


@dataclass
class Pool:
    fleet: Fleet
    fake: FakeRuntime
    http: httpx.AsyncClient
    url: str
    instance_ids: list[str]

    @property
    def by_name(self) -> dict[str, str]:
        return {f"i{n}": iid for n, iid in enumerate(self.instance_ids)}

    def lru_order(self) -> list[str]:
        """The order a fresh pool hands instances out: never used, so by id."""
        return sorted(self.instance_ids, key=uuid.UUID)

    async def generate(self, **body: Any) -> httpx.Response:
        return await self.http.post("/generate", json={"prompt": "一只猫", **body})

    async def task_rows(self) -> list[Task]:
        await self.fleet.dispatcher.settled()  # answers go out before their rows are written
        async with self.fleet.sessions() as session:
            return list((await session.scalars(select(Task).order_by(Task.created_at))).all())

    async def task_count(self) -> int:
        await self.fleet.dispatcher.settled()
        async with self.fleet.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(Task)) or 0)

    def ran_on(self, instance_id: str) -> list[str | None]:
        return [g.task_id for g in self.fake.generations if g.instance_id == instance_id]


async def start_instances(fleet: Fleet, count: int, *, timeout: float = 10.0) -> list[str]:
    ids = []
    for n in range(count):
        view = await fleet.instances.create(f"i{n}")
        await fleet.instances.start(view.instance_id)
        ids.append(view.instance_id)
    ready = [("running", "logged_in")] * count
    await await_until(lambda: _states(fleet, ids), until=lambda states: states == ready, timeout=timeout,
                      what=f"{count} instances running and logged in")
    return ids


async def _states(fleet: Fleet, ids: list[str]) -> list[tuple[str, str]]:
    views = [await fleet.instances.get(i) for i in ids]
    return [(v.status, v.login_state) for v in views]


@contextlib.asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[str]:
    """Serve an app with uvicorn on this loop, on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # uvicorn's own error rather than a timeout
        return server.started

    await await_until(started, timeout=10, what="uvicorn to listen", pause=0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def open_pool(
    database_url: str, data_dir: Path, fake: FakeRuntime, instances: int = 2, *, clock: Clock = utcnow, **overrides: Any
) -> AsyncIterator[Pool]:
    """`clock`: the accounts' time (Pacific days, blocks, pacing); a `ManualClock` moves it at will."""
    settings = make_settings(database_url, data_dir, **{**DISPATCH_FAST, **overrides})
    fleet = await Fleet.open(settings, runtime=fake, clock=clock)
    try:
        ids = await start_instances(fleet, instances)
        async with serve(create_api_app(settings, fleet=fleet)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
                yield Pool(fleet, fake, http, url, ids)
    finally:
        await fleet.close()

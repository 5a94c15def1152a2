"""Postgres restarting under the gateway, on a server of the test's own (tests/pgserver.py), with the fake runtime.

What must hold: a release or a task's end that meets the outage is kept and written once the database is back,
so the instance is free again at once (not when its lease expires, minutes later) and /health counts no
phantom task; while the database is down /health says so without the driver's words, and a new task gets a
503 with Retry-After, never a 500. The reconciler's status moves are kept the same way, and its loop goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Fleet
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import Pool, open_pool
from tests.gateway.test_durable_tasks import SECRET, receiver
from tests.pgserver import PostgresServer, postgres_server
from tests.polling import await_until

pytestmark = pytest.mark.postgres

EN = {"Accept-Language": "en"}
LONG_LEASE = {"generation_timeout": 300.0}  # a lease that expires only after the test would have failed


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as started:
        yield started


@pytest.fixture
def database(server: PostgresServer) -> Iterator[str]:
    """A fresh database on the test's own server, which is running when the test begins."""
    if not server.running():
        server.start()
    name = f"outage_{uuid.uuid4().hex[:10]}"
    server.psql(f'CREATE DATABASE "{name}"')
    yield server.url.rsplit("/", 1)[0] + f"/{name}"
    if not server.running():
        server.start()
    server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database: str, tmp_path: Path) -> AsyncIterator[Pool]:
    fake = FakeRuntime()
    async with open_pool(database, tmp_path, fake, instances=2, **LONG_LEASE) as opened:
        yield opened


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info and r.name.startswith("gateway")]


async def test_releases_during_a_restart_land_when_postgres_is_back(
    pool: Pool, server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    pool.fake.generate_delay = 2.0
    submitted = await pool.http.post("/tasks", json={"prompt": "异步"})
    assert submitted.status_code == 202
    held = [asyncio.create_task(pool.generate()) for _ in range(2)]  # one runs, one waits in the queue

    async def two_running_one_queued() -> bool:
        body = (await pool.http.get("/health")).json()
        return body.get("active_tasks") == 2 and body.get("queued_tasks") == 1

    await await_until(two_running_one_queued, timeout=10, what="two tasks running and one queued")
    await asyncio.to_thread(server.stop)  # connections cut while both instances generate

    health = await pool.http.get("/health")
    assert health.status_code == 503 and health.json()["database"] == "unavailable", health.text
    assert int(health.headers["Retry-After"]) >= 1
    assert str(server.port) not in health.text and "Connect" not in health.text  # no driver words on the public port
    for path in ("/generate", "/tasks"):
        refused = await pool.http.post(path, json={"prompt": "during the outage"}, headers=EN)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "database_unavailable" and "database" in refused.json()["message"]
        assert int(refused.headers["Retry-After"]) >= 1
    # Both generations end during the outage: their releases and rows wait in memory.
    await await_until(lambda: pool.fleet.dispatcher.unwritten >= 2, timeout=10, what="the releases kept")
    await asyncio.to_thread(server.start)

    async def all_free() -> bool:
        response = await pool.http.get("/health")
        body = response.json()
        return response.status_code == 200 and body["active_tasks"] == 0 and body["browser_instances"]["busy"] == 0 \
            and body["browser_instances"]["available"] == 2 and body["unwritten"] == 0

    answers = await asyncio.gather(*held)  # the queued one ran once the database was back: none was lost
    assert [a.status_code for a in answers] == [200, 200] and all(a.json()["success"] for a in answers), [a.text for a in answers]
    await await_until(all_free, timeout=10, what="both instances free and no task active after the restart")
    rows = await pool.task_rows()
    held_ids = {a.json()["task_id"] for a in answers}
    assert {str(r.id): r.status for r in rows if str(r.id) in held_ids} == {i: "succeeded" for i in held_ids}
    task = await await_until(lambda: _finished(pool, submitted.json()["task_id"]), timeout=10, what="the async task")
    assert task["status"] == "succeeded" and task["generated_images"]
    after = await pool.generate()
    assert after.status_code == 200 and after.json()["success"] is True
    assert tracebacks(caplog) == []


async def _finished(pool: Pool, task_id: str) -> dict[str, Any] | None:
    body = (await pool.http.get(f"/tasks/{task_id}")).json()
    return body if body.get("done") else None


async def test_a_reconciler_write_that_meets_the_outage_lands_afterwards(
    database: str, server: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeRuntime(start_delay=2.0)  # the outage begins while the engine starts the container
    fleet = await Fleet.open(make_settings(database, tmp_path), runtime=fake)
    try:
        instance_id = (await fleet.instances.create("r1")).instance_id
        await fleet.instances.start(instance_id)
        await await_until(lambda: _status(fleet, instance_id, "starting"), timeout=10, what="starting")
        # The action reads the instance's proxy and region before it calls the engine: stop only once the engine works.
        await await_until(lambda: fake.starts(instance_id) == 1, timeout=10, what="the engine's start call")
        await asyncio.to_thread(server.stop)
        await await_until(lambda: any("database unreachable" in r.getMessage() for r in caplog.records
                                      if r.name == "gateway.reconciler.loop" and "reconcile action" in r.getMessage()),
                          timeout=15, what="the start's write to meet the outage")
        assert fake.starts(instance_id) == 1
        await asyncio.to_thread(server.start)
        await await_until(lambda: _status(fleet, instance_id, "running"), timeout=20, what="running after the outage")
        kinds = [e.kind for e in await fleet.instances.events(instance_id, limit=100)]
        assert "started" in kinds, kinds  # the move made during the outage was not lost
        assert fake.starts(instance_id) == 1  # and the container it started was kept, not started again
        assert fleet.reconciler._loop_task is not None and not fleet.reconciler._loop_task.done()
        assert tracebacks(caplog) == []
    finally:
        if not server.running():
            server.start()
        await fleet.close()


async def _status(fleet: Fleet, instance_id: str, status: str) -> bool:
    try:
        return (await fleet.instances.get(instance_id)).status == status
    except Exception:  # noqa: BLE001 - the database may be down while this polls
        return False


async def test_health_answers_at_once_during_the_outage(pool: Pool, server: PostgresServer) -> None:
    await asyncio.to_thread(server.stop)
    try:
        async with httpx.AsyncClient(base_url=pool.url, timeout=10) as http:
            response = await http.get("/health")
        assert response.status_code == 503 and response.json() == {"status": "unhealthy", "database": "unavailable", "unwritten": 0}
    finally:
        await asyncio.to_thread(server.start)


async def test_a_webhook_whose_task_ends_during_the_outage_is_delivered_when_postgres_is_back(
    database: str, tmp_path: Path, server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The webhook's outbox row is written with the task's end, so it waits with it instead of being lost.
    settings = {"webhook_secret": SECRET, "fetch_private_addresses": True, **LONG_LEASE}
    async with open_pool(database, tmp_path, FakeRuntime(), instances=1, **settings) as pool:
        pool.fake.generate_delay = 2.0
        with receiver([]) as (url, received):
            submitted = await pool.http.post("/tasks", json={"prompt": "钩子", "callback_url": url})
            assert submitted.status_code == 202, submitted.text

            async def running() -> bool:
                return (await pool.http.get("/health")).json().get("active_tasks") == 1

            await await_until(running, timeout=10, what="the task running")
            await asyncio.to_thread(server.stop)
            await await_until(lambda: pool.fleet.dispatcher.unwritten >= 1, timeout=10, what="the task's end kept")
            await asyncio.to_thread(server.start)
            await await_until(lambda: len(received) >= 1, timeout=30, what="the webhook after the restart")
        told = json.loads(received[0]["body"])
        assert (told["task_id"], told["status"]) == (submitted.json()["task_id"], "succeeded") and told["generated_images"]
    assert tracebacks(caplog) == []

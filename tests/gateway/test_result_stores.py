"""Kept results (GATEWAY_RESULT_STORE): both stores behind one interface, on both databases; the setting and its
refusals; and two gateways on one Postgres with separate data folders, each serving the other's results, signed
URLs and expiries alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Fleet, create_api_app
from gateway.db.engine import create_db_engine
from gateway.db.migrate import prepare_schema
from gateway.db.models import FleetMarker, KeptResult
from gateway.db.types import utcnow
from gateway.dispatcher.results import (
    IN_DATABASE,
    DatabaseResultStore,
    FileResultStore,
    StoredResult,
)
from gateway.retention import Purged
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY, make_settings
from tests.gateway.pool import DISPATCH_FAST, serve, start_instances
from tests.polling import await_until

TINY_B64 = base64.b64encode(TINY_PNG).decode()
KEY = "replica-api-key"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    db = create_db_engine(database_url)
    await prepare_schema(db, upgrade=True)
    try:
        yield db
    finally:
        await db.dispose()


# ---- the database's store ----------------------------------------------------------------------------------


async def test_database_store_keeps_a_result_until_it_expires(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=3600)
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [TINY_B64, "c2Vjb25k"], "the page's text")
    assert reference == IN_DATABASE
    assert await store.load(task_id, reference) == StoredResult([TINY_B64, "c2Vjb25k"], "the page's text")
    assert await store.load(uuid.uuid4(), reference) is None  # another task's
    assert await store.load(task_id, "/data/results/some-file.json") is None  # a file reference is not its own
    assert await store.load(task_id, None) is None  # the row forgot it (expired)
    # Nothing expired yet: a prune keeps it; an hour later it is gone, and only it.
    assert await store.prune() == 0
    assert await store.prune(utcnow() + timedelta(seconds=3601)) == 1
    assert await store.load(task_id, reference) is None


async def test_database_store_answers_none_past_the_expiry_before_any_prune(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=0.3)
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [TINY_B64], None)
    assert (await store.load(task_id, reference)) == StoredResult([TINY_B64], None)
    await asyncio.sleep(0.4)
    assert await store.load(task_id, reference) is None
    async with engine.connect() as connection:  # still there: only retention's prune deletes it
        assert await connection.scalar(select(func.count()).select_from(KeptResult)) == 1
    assert await store.prune() == 1


async def test_database_store_prunes_in_batches_and_deletes_by_task(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=60, batch=2)
    ids = [uuid.uuid4() for _ in range(5)]
    for task_id in ids:
        await store.save(task_id, [TINY_B64], None)
    # Retention hands over the deleted tasks' references: file references are not this store's.
    assert await store.delete([(ids[0], IN_DATABASE), (ids[1], "/elsewhere/x.json")]) == 1
    assert await store.load(ids[0], IN_DATABASE) is None and await store.load(ids[1], IN_DATABASE) is not None
    assert await store.delete([]) == 0
    assert await store.prune(utcnow() + timedelta(seconds=61)) == 4  # more than one batch of 2


async def test_saving_one_task_twice_keeps_the_second(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=60)
    task_id = uuid.uuid4()
    await store.save(task_id, ["Zmlyc3Q="], "first")
    await store.save(task_id, ["c2Vjb25k"], None)
    assert await store.load(task_id, IN_DATABASE) == StoredResult(["c2Vjb25k"], None)


# ---- the data folder's store -------------------------------------------------------------------------------


async def test_file_store_keeps_prunes_and_deletes_only_its_own(tmp_path: Path) -> None:
    store = FileResultStore(tmp_path / "results", ttl=60)
    first, second = uuid.uuid4(), uuid.uuid4()
    path = await store.save(first, [TINY_B64], "text")
    assert path == str(tmp_path / "results" / f"{first}.json")
    assert await store.load(first, path) == StoredResult([TINY_B64], "text")
    assert await store.load(first, IN_DATABASE) is None and await store.load(first, None) is None
    # Past its time by its file's age.
    old = (tmp_path / "results" / f"{first}.json")
    os.utime(old, (0, 0))
    other = await store.save(second, [TINY_B64], None)
    assert await store.prune() == 1 and not old.exists()
    assert await store.load(first, path) is None
    # Retention's deletion: a file outside its folder is not the gateway's to delete.
    outside = tmp_path / "keep.json"
    outside.write_text("{}")
    assert await store.delete([(uuid.uuid4(), str(outside)), (second, IN_DATABASE)]) == 0
    assert await store.delete([(second, other)]) == 1
    assert outside.exists() and not Path(other).exists()


async def test_a_damaged_result_file_reads_as_gone(tmp_path: Path) -> None:
    store = FileResultStore(tmp_path / "results", ttl=60)
    task_id = uuid.uuid4()
    path = Path(await store.save(task_id, [TINY_B64], None))
    path.write_text("[not a result")
    assert await store.load(task_id, str(path)) is None


# ---- the setting -------------------------------------------------------------------------------------------


def test_auto_is_the_database_on_postgres_and_files_on_sqlite(tmp_path: Path) -> None:
    postgres = "postgresql+asyncpg://u@db/fleet"
    assert make_settings(postgres, tmp_path).result_store_kind == "database"
    assert make_settings("", tmp_path).result_store_kind == "files"
    assert make_settings(f"sqlite+aiosqlite:///{tmp_path}/g.db", tmp_path).result_store_kind == "files"
    assert make_settings(postgres, tmp_path, result_store="files").result_store_kind == "files"
    assert make_settings("", tmp_path, result_store="database").dispatch.result_store == "database"


@pytest.mark.parametrize("value", ["s3", "", "Database "])
def test_an_unknown_store_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings("", tmp_path, result_store=value)
    assert "result_store" in str(refused.value)


def test_files_in_a_data_folder_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValidationError) as refused:
        make_settings("postgresql+asyncpg://u@db/fleet", blocker / "data", result_store="files")
    assert f"{blocker} is not a folder" in str(refused.value) and "GATEWAY_RESULT_STORE=files" in str(refused.value)
    # The database's store does not need the folder.
    assert make_settings("postgresql+asyncpg://u@db/fleet", blocker / "data").result_store_kind == "database"


# ---- two gateways on one Postgres --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def replica(url: str, data_dir: Path, fake: FakeRuntime, **overrides: Any) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    settings = make_settings(url, data_dir, encryption_key=REPLICA_ENCRYPTION_KEY, **{**DISPATCH_FAST, "api_keys": KEY, **overrides})
    fleet = await Fleet.open(settings, runtime=fake)
    try:
        async with serve(create_api_app(settings, fleet=fleet)) as base:
            headers = {"Authorization": f"Bearer {KEY}", "Accept-Language": "en"}
            async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as http:
                yield fleet, http
    finally:
        await fleet.close()


@pytest.mark.postgres
async def test_a_task_made_on_one_gateway_is_read_with_its_images_on_the_other(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    fake.generate_delay = 0.2
    async with replica(postgres_url, tmp_path / "a", fake) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake) as (fleet_b, http_b):
            assert fleet_a.dispatcher.results.kind == fleet_b.dispatcher.results.kind == "database"
            accepted = await http_a.post("/tasks", json={"prompt": "made on a"})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]

            async def on_b() -> dict[str, Any]:
                return (await http_b.get(f"/tasks/{task_id}")).json()

            finished = await await_until(on_b, until=lambda body: body.get("done"), timeout=15, what="the task, read on b")
            assert finished["success"] is True and finished["status"] == "succeeded"
            assert [base64.b64decode(i) for i in finished["generated_images"]] == [TINY_PNG]
            assert finished["ai_text_response"] == "fake text"
            # A synchronous answer from b is read back on a just the same.
            made_on_b = (await http_b.post("/generate", json={"prompt": "made on b"})).json()

            async def on_a() -> dict[str, Any]:
                return (await http_a.get(f"/tasks/{made_on_b['task_id']}")).json()

            # Its row ends just after the answer went out: a is told a moment later.
            read_on_a = await await_until(on_a, until=lambda body: body.get("done"), timeout=10, what="b's task on a")
            assert read_on_a["generated_images"] == made_on_b["generated_images"] != []
    # Neither data folder holds a result: they are in the database.
    assert not (tmp_path / "a" / "results").exists() and not (tmp_path / "b" / "results").exists()


@pytest.mark.postgres
async def test_a_signed_url_made_on_one_gateway_is_served_by_the_other(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with replica(postgres_url, tmp_path / "a", fake) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake) as (fleet_b, http_b):
            # One key for both, kept in the database (neither data folder has one of its own).
            assert fleet_a.secret == fleet_b.secret != ""
            async with fleet_a.sessions() as session:
                assert await session.get(FleetMarker, "signing_key") is not None
            answer = await http_a.post("/v1/images/generations", json={"prompt": "a fox", "response_format": "url"})
            assert answer.status_code == 200, answer.text
            url = httpx.URL(answer.json()["data"][0]["url"])
            assert url.path.startswith("/v1/images/files/")
            async with httpx.AsyncClient(base_url=str(http_b.base_url)) as anonymous:  # no API key
                served = await anonymous.get(url.path, params=url.params)
                assert served.status_code == 200 and served.content == TINY_PNG
                # The signature still binds: another index or expiry is refused on b too.
                forged = await anonymous.get(url.path.replace("/0.png", "/1.png"), params=url.params)
                assert forged.status_code == 403 and forged.json()["error"]["code"] == "image_url_invalid"


@pytest.mark.postgres
async def test_an_expired_result_is_410_alike_on_both_gateways_and_pruned_by_retention(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with replica(postgres_url, tmp_path / "a", fake, task_result_ttl=1.0) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake, task_result_ttl=1.0) as (fleet_b, http_b):
            made = (await http_a.post("/generate", json={"prompt": "short-lived"})).json()
            assert made["success"] is True
            task_id = made["task_id"]
            await asyncio.sleep(1.2)
            answers = [await http.get(f"/tasks/{task_id}") for http in (http_a, http_b)]
            assert [a.status_code for a in answers] == [410, 410]
            assert answers[0].json() == answers[1].json()
            assert answers[0].json()["error"] == "task_result_gone" and task_id in answers[0].json()["message"]
            # The gateways' own retention loops delete the row (every second at this TTL); still 410 after.
            async def kept_rows() -> int:
                async with fleet_a.sessions() as session:
                    return int(await session.scalar(select(func.count()).select_from(KeptResult)) or 0)

            await await_until(kept_rows, until=lambda count: count == 0, timeout=10, what="retention to prune the row")
            assert await fleet_b.retention.purge_once() == Purged()
            assert (await http_a.get(f"/tasks/{task_id}")).status_code == 410
            # A malformed id is a 404 on both, never a 500.
            assert [(await h.get("/tasks/not-an-id")).status_code for h in (http_a, http_b)] == [404, 404]

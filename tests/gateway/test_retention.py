"""Retention (GATEWAY_TASK_RETENTION): old finished tasks, their kept results and old instance events are deleted
in small batches; unfinished tasks and anything newer stay; every gateway may run it at once. Both databases,
both result stores (files, database rows)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.app import Fleet
from gateway.db.models import InstanceEvent, KeptResult, Task, TaskStatus
from gateway.dispatcher.results import FileResultStore
from gateway.db.types import utcnow
from gateway.runtime.fake import FakeRuntime
from gateway.retention import Purged, Retention
from tests.gateway.conftest import make_settings
from tests.polling import await_until

DAY = 86400.0


@pytest.fixture(params=["files", "database"])
async def fleet(request: pytest.FixtureRequest, database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Fleet]:
    """A fleet whose retention deletes no tasks (0): the tests run their passes themselves. Results are kept
    longer than tasks (else the pruner forgets the old rows' results first, as it does by default)."""
    settings = make_settings(database_url, tmp_path, task_retention=0, task_result_ttl=90 * DAY, result_store=request.param)
    opened = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        yield opened
    finally:
        await opened.close()


def retention(fleet: Fleet, **options: float) -> Retention:
    """A retention pass as a gateway with the default 30 days runs it."""
    settings = fleet.settings.model_copy(update={"task_retention": 30 * DAY})
    return Retention(fleet.sessions, settings.retention, fleet.dispatcher.results, **options)  # type: ignore[arg-type]


async def kept(fleet: Fleet) -> list[str]:
    """The task ids whose results the fleet's store still keeps."""
    store = fleet.dispatcher.results
    if isinstance(store, FileResultStore):
        return sorted(p.stem for p in store.directory.iterdir()) if store.directory.exists() else []
    async with fleet.sessions() as session:
        return sorted(str(i) for i in (await session.scalars(select(KeptResult.task_id))).all())


async def finished_task(fleet: Fleet, status: TaskStatus, when: datetime, *, result: Path | None = None) -> Task:
    """A finished task row with a kept result (in the fleet's store, unless another file is given)."""
    task_id = uuid.uuid4()
    reference = str(result) if result is not None else await fleet.dispatcher.results.save(task_id, ["aW1n"], None)
    return Task(id=task_id, status=status, prompt="p", created_at=when, finished_at=when, result_path=reference)


async def seed(fleet: Fleet, *, now: datetime, outside: Path) -> dict[str, list[uuid.UUID]]:
    """Tasks and events of various ages; kept results beside the old and the recent finished tasks."""
    old, recent = now - timedelta(days=40), now - timedelta(days=3)
    kinds, unfinished = (TaskStatus.SUCCEEDED, TaskStatus.FAILED), (TaskStatus.QUEUED, TaskStatus.RUNNING)
    tasks = {
        "old": [await finished_task(fleet, kinds[n % 2], old) for n in range(7)]  # more than two batches of 3
        # An old row pointing outside the results folder: the row goes, that file is not the gateway's to delete.
        + [await finished_task(fleet, TaskStatus.SUCCEEDED, old, result=outside)],
        "recent": [await finished_task(fleet, status, recent) for status in kinds],
        # Never finished: the dispatcher ends those, not retention.
        "unfinished": [Task(id=uuid.uuid4(), status=status, prompt="stuck", created_at=old) for status in unfinished],
    }
    instance_id = uuid.uuid4()
    ages = [("old", old)] * 5 + [("recent", recent)] * 2
    events = [InstanceEvent(instance_id=instance_id, kind="started", message=age, created_at=at) for age, at in ages]
    async with fleet.sessions.begin() as session:
        session.add_all([*(task for group in tasks.values() for task in group), *events])
    return {group: [task.id for task in rows] for group, rows in tasks.items()}


async def task_ids(fleet: Fleet) -> set[uuid.UUID]:
    async with fleet.sessions() as session:
        return set((await session.scalars(select(Task.id))).all())


async def event_messages(fleet: Fleet) -> list[str]:
    async with fleet.sessions() as session:
        return sorted((await session.scalars(select(InstanceEvent.message))).all())


async def test_old_finished_tasks_their_results_and_old_events_go_in_batches(fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    outside = tmp_path / "not-a-result.json"
    outside.write_text("keep me")
    ids = await seed(fleet, now=now, outside=outside)
    gateway = retention(fleet, batch=3, pause=0)

    purged = await gateway.purge_once(now)

    assert purged == Purged(tasks=8, events=5, results=7)
    assert await task_ids(fleet) == {*ids["recent"], *ids["unfinished"]}
    assert await event_messages(fleet) == ["recent", "recent"]
    assert await kept(fleet) == sorted(str(i) for i in ids["recent"])
    assert outside.read_text() == "keep me"
    # Nothing more to do: a second pass (or another gateway's) deletes nothing.
    assert await gateway.purge_once(now) == Purged()


async def test_gateways_purging_at_the_same_time_delete_each_row_once(fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    ids = await seed(fleet, now=now, outside=tmp_path / "absent.json")
    gateways = [retention(fleet, batch=2, pause=0) for _ in range(3)]

    results = await asyncio.gather(*(g.purge_once(now) for g in gateways))

    assert sum(r.tasks for r in results) == 8 and sum(r.events for r in results) == 5
    assert sum(r.results for r in results) == 7
    assert await task_ids(fleet) == {*ids["recent"], *ids["unfinished"]}


async def test_zero_keeps_everything(fleet: Fleet, tmp_path: Path) -> None:
    now = utcnow()
    await seed(fleet, now=now, outside=tmp_path / "absent.json")
    assert fleet.settings.task_retention == 0
    assert await fleet.retention.purge_once(now) == Purged()
    async with fleet.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Task)) == 12


async def test_the_gateway_runs_it_by_itself(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    """Without any call from outside: the fleet's own loop makes a pass as it opens, then every interval."""
    settings = make_settings(
        database_url, tmp_path, task_retention=30 * DAY, retention_interval=0.05, task_result_ttl=90 * DAY
    )
    opened = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        ids = await seed(opened, now=utcnow(), outside=tmp_path / "absent.json")
        kept = {*ids["recent"], *ids["unfinished"]}
        await await_until(lambda: task_ids(opened), until=lambda left: left == kept, timeout=20,
                          what="the fleet's own retention pass")
        # Events go in the same pass, after the tasks: a loaded machine can be read between the two.
        await await_until(lambda: event_messages(opened), until=lambda left: left == ["recent", "recent"], timeout=20,
                          what="the pass to reach the events")
    finally:
        await opened.close()

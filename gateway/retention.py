"""Retention: finished tasks (with their result files) and instance events older than `GATEWAY_TASK_RETENTION`
are deleted, a small batch per transaction, so that a pass never holds locks for long or grows the log.

Every gateway may run it at once: a batch deletes the rows it found by id, and a row that another gateway
deleted first is simply not there any more. Unfinished tasks are never deleted (the dispatcher ends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import InstanceEvent, Task, TaskStatus
from gateway.db.types import utcnow
from gateway.settings import RetentionSettings

log = logging.getLogger(__name__)

FINISHED = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


@dataclass(frozen=True)
class Purged:
    tasks: int = 0
    events: int = 0
    files: int = 0


class Retention:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: RetentionSettings,
        results_dir: Path,
        *,
        batch: int = 500,
        pause: float = 0.05,
    ) -> None:
        self._sessions = sessions
        self._keep = settings.task_retention
        self._interval = settings.retention_interval
        self._results_dir = results_dir.resolve()
        self._batch = batch
        self._pause = pause  # between batches, so that other writers get their turn
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._keep > 0 and self._loop is None:
            self._loop = asyncio.create_task(self._purge_forever(), name="retention")

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def purge_once(self, now: datetime | None = None) -> Purged:
        """Deletes everything older than the retention period, batch by batch; returns how much went."""
        if self._keep <= 0:
            return Purged()
        cutoff = (now or utcnow()) - timedelta(seconds=self._keep)
        tasks = files = 0
        while True:
            ids, paths = await self._delete_task_batch(cutoff)
            tasks += ids
            files += await asyncio.to_thread(self._unlink_results, paths)
            if ids < self._batch:
                break
            await asyncio.sleep(self._pause)
        events = 0
        while (deleted := await self._delete_event_batch(cutoff)) > 0:
            events += deleted
            if deleted < self._batch:
                break
            await asyncio.sleep(self._pause)
        purged = Purged(tasks, events, files)
        if tasks or events:
            log.info("retention: deleted %d tasks, %d result files, %d events before %s", tasks, files, events, cutoff)
        return purged

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception:  # noqa: BLE001 - a database outage; the next round tries again
                log.exception("retention pass failed")
            await asyncio.sleep(self._interval)

    async def _delete_task_batch(self, cutoff: datetime) -> tuple[int, list[str]]:
        # created_at finds them through ix_tasks_status_created_at; finished_at keeps a long task's row.
        old = (
            select(Task.id)
            .where(Task.status.in_(FINISHED), Task.created_at < cutoff, Task.finished_at < cutoff)
            .order_by(Task.created_at)
            .limit(self._batch)
        )
        # RETURNING: only the rows this statement deleted (another gateway may have taken some of the same).
        statement = delete(Task).where(Task.id.in_(old.scalar_subquery())).returning(Task.result_path)
        async with self._sessions.begin() as session:
            paths = list((await session.scalars(statement.execution_options(synchronize_session=False))).all())
        return len(paths), [path for path in paths if path]

    async def _delete_event_batch(self, cutoff: datetime) -> int:
        # Oldest ids first: the primary key's order is the order they were written in.
        event = InstanceEvent
        old = select(event.id).where(event.created_at < cutoff).order_by(event.id).limit(self._batch)
        statement = delete(event).where(event.id.in_(old.scalar_subquery())).returning(event.id)
        async with self._sessions.begin() as session:
            return len((await session.scalars(statement.execution_options(synchronize_session=False))).all())

    def _unlink_results(self, paths: list[str]) -> int:
        removed = 0
        for stored in paths:
            path = Path(stored)
            if path.resolve().parent != self._results_dir:
                continue  # another gateway's folder, or not a result file at all: never deleted from here
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue  # pruned after its time already (GATEWAY_TASK_RESULT_TTL)
            except OSError as exc:
                log.warning("retention: cannot delete result %s: %s", path, exc)
        return removed

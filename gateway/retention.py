"""Retention: finished tasks (with their kept results) and instance events older than `GATEWAY_TASK_RETENTION`
are deleted, a small batch per transaction, so that a pass never holds locks for long or grows the log; and
kept results past `GATEWAY_TASK_RESULT_TTL` are pruned from their store (files or database rows) every pass.

Every gateway may run it at once: a batch deletes the rows it found by id, and a row that another gateway
deleted first is simply not there any more. Unfinished tasks are never deleted (the dispatcher ends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import InstanceEvent, Task, TaskStatus
from gateway.db.types import utcnow
from gateway.dispatcher.results import ResultStore
from gateway.settings import RetentionSettings

log = logging.getLogger(__name__)

FINISHED = (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


@dataclass(frozen=True)
class Purged:
    tasks: int = 0
    events: int = 0
    results: int = 0  # kept results of the deleted tasks
    expired: int = 0  # kept results past their time (GATEWAY_TASK_RESULT_TTL)


class Retention:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: RetentionSettings,
        results: ResultStore,
        *,
        batch: int = 500,
        pause: float = 0.05,
    ) -> None:
        self._sessions = sessions
        self._keep = settings.task_retention
        # Expired results are pruned at least every minute (half their time when that is shorter).
        self._interval = min(settings.retention_interval, max(1.0, min(60.0, results.ttl / 2)))
        self._results = results
        self._batch = batch
        self._pause = pause  # between batches, so that other writers get their turn
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._purge_forever(), name="retention")

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def purge_once(self, now: datetime | None = None) -> Purged:
        """Deletes expired results, and everything older than the retention period, batch by batch; returns how
        much went."""
        expired = await self._results.prune()
        if self._keep <= 0:
            return Purged(expired=expired)
        cutoff = (now or utcnow()) - timedelta(seconds=self._keep)
        tasks = results = 0
        while True:
            count, kept = await self._delete_task_batch(cutoff)
            tasks += count
            results += await self._results.delete(kept)
            if count < self._batch:
                break
            await asyncio.sleep(self._pause)
        events = 0
        while (deleted := await self._delete_event_batch(cutoff)) > 0:
            events += deleted
            if deleted < self._batch:
                break
            await asyncio.sleep(self._pause)
        purged = Purged(tasks, events, results, expired)
        if tasks or events:
            log.info("retention: deleted %d tasks, %d kept results, %d events before %s", tasks, results, events, cutoff)
        return purged

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge_once()
            except Exception:  # noqa: BLE001 - a database outage; the next round tries again
                log.exception("retention pass failed")
            await asyncio.sleep(self._interval)

    async def _delete_task_batch(self, cutoff: datetime) -> tuple[int, list[tuple[uuid.UUID, str]]]:
        # created_at finds them through ix_tasks_status_created_at; finished_at keeps a long task's row.
        old = (
            select(Task.id)
            .where(Task.status.in_(FINISHED), Task.created_at < cutoff, Task.finished_at < cutoff)
            .order_by(Task.created_at)
            .limit(self._batch)
        )
        # RETURNING: only the rows this statement deleted (another gateway may have taken some of the same).
        statement = delete(Task).where(Task.id.in_(old.scalar_subquery())).returning(Task.id, Task.result_path)
        async with self._sessions.begin() as session:
            rows = list((await session.execute(statement.execution_options(synchronize_session=False))).all())
        return len(rows), [(task_id, reference) for task_id, reference in rows if reference]

    async def _delete_event_batch(self, cutoff: datetime) -> int:
        # Oldest ids first: the primary key's order is the order they were written in.
        event = InstanceEvent
        old = select(event.id).where(event.created_at < cutoff).order_by(event.id).limit(self._batch)
        statement = delete(event).where(event.id.in_(old.scalar_subquery())).returning(event.id)
        async with self._sessions.begin() as session:
            return len((await session.scalars(statement.execution_options(synchronize_session=False))).all())

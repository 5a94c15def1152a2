"""Task history: what the pool did, read from the task rows the dispatcher writes (never image bytes)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import Task, TaskStatus
from gateway.errors import Invalid

PROMPT_PREVIEW_CHARS = 200
OUTCOMES = tuple(status.value for status in TaskStatus)


class TaskView(msgspec.Struct, kw_only=True):
    task_id: str
    status: str
    mode: str
    prompt: str  # at most PROMPT_PREVIEW_CHARS characters
    prompt_truncated: bool
    aspect_ratio: str
    reference_count: int
    instance_id: str | None
    instance_name: str | None
    attempts: int
    error_code: str | None
    error_message: str | None
    image_count: int
    model: str | None = None
    image_size: str | None = None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    wait_ms: int | None  # queued: created → started
    run_ms: int | None  # on the instance: started → finished
    total_ms: int | None


_COLUMNS = (
    Task.id,
    Task.status,
    Task.mode,
    func.substr(Task.prompt, 1, PROMPT_PREVIEW_CHARS + 1).label("prompt"),
    Task.aspect_ratio,
    Task.reference_count,
    Task.instance_id,
    Task.instance_name,
    Task.attempts,
    Task.error_code,
    Task.error_message,
    Task.image_count,
    Task.model,
    Task.image_size,
    Task.created_at,
    Task.started_at,
    Task.finished_at,
)


class TaskHistoryService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def recent(
        self, *, limit: int = 100, outcome: str | None = None, instance_id: str | None = None
    ) -> list[TaskView]:
        """Newest first; `outcome` is a task status, `instance_id` the instance that ran it."""
        query = select(*_COLUMNS).order_by(Task.created_at.desc(), Task.id).limit(max(1, min(limit, 1000)))
        if outcome:
            if outcome not in OUTCOMES:
                raise Invalid("query_invalid", name="outcome", reason=" | ".join(OUTCOMES))
            query = query.where(Task.status == outcome)
        if instance_id:
            query = query.where(Task.instance_id == _parse_id(instance_id))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [_to_view(row) for row in rows]

    async def one(self, task_id: str) -> TaskView | None:
        """One task, or None for an id that names none (or is no id)."""
        try:
            uid = uuid.UUID(task_id)
        except ValueError:
            return None
        async with self._sessions() as session:
            row = (await session.execute(select(*_COLUMNS).where(Task.id == uid))).first()
        return _to_view(row) if row is not None else None

    async def with_kept_images(self, *, since: datetime, limit: int = 24) -> list[TaskView]:
        """Succeeded tasks whose images are still kept (a result, ended after `since`), newest first."""
        query = (select(*_COLUMNS).where(Task.status == TaskStatus.SUCCEEDED, Task.image_count > 0,
                                         Task.result_path.is_not(None), Task.finished_at >= since)
                 .order_by(Task.finished_at.desc(), Task.id).limit(max(1, min(limit, 200))))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return [_to_view(row) for row in rows]

    async def running_by_instance(self) -> dict[str, TaskView]:
        """The task each busy instance is working on, by instance id."""
        query = select(*_COLUMNS).where(Task.status == TaskStatus.RUNNING, Task.instance_id.is_not(None))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        return {str(row.instance_id): _to_view(row) for row in rows}


def _to_view(row: Any) -> TaskView:
    prompt = row.prompt or ""
    return TaskView(
        task_id=str(row.id),
        status=row.status,
        mode=row.mode,
        prompt=prompt[:PROMPT_PREVIEW_CHARS],
        prompt_truncated=len(prompt) > PROMPT_PREVIEW_CHARS,
        aspect_ratio=row.aspect_ratio,
        reference_count=row.reference_count,
        instance_id=str(row.instance_id) if row.instance_id else None,
        instance_name=row.instance_name,
        attempts=row.attempts,
        error_code=row.error_code,
        error_message=row.error_message,
        image_count=row.image_count,
        model=row.model,
        image_size=row.image_size,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        wait_ms=_ms(row.created_at, row.started_at),
        run_ms=_ms(row.started_at, row.finished_at),
        total_ms=_ms(row.created_at, row.finished_at),
    )


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def _parse_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise Invalid("query_invalid", name="instance_id", reason="not an instance id") from None

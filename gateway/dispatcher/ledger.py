"""The dispatcher's database work: leases on instances and the task rows, a transaction per step.

A lease is one conditional UPDATE whose target comes from a sub-select of the least recently used free
instance. On Postgres the sub-select locks its row `FOR UPDATE SKIP LOCKED`, so concurrent gateways pick
different rows instead of queueing on one; on SQLite the database's single writer makes the statement
atomic. Either way the outer WHERE re-checks that the lease is free, and RETURNING says whether we won.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from gateway.db.models import Instance, InstanceEvent, LoginState, Status, Target, Task, TaskStatus
from gateway.db.types import utcnow
from gateway.services.instance_client import InstanceAddress

NOTIFY_CHANNEL = "aistudio_fleet_pool"


@dataclass(frozen=True)
class Lease:
    task_id: uuid.UUID
    instance_id: uuid.UUID
    name: str
    address: InstanceAddress


@dataclass(frozen=True)
class PoolSnapshot:
    """What could serve a task: running, running and signed in, and of those not cooling down."""

    running: int
    logged_in: int
    servable: int
    cooldown_ends: datetime | None  # the earliest end among the cooling instances

    @property
    def empty(self) -> bool:
        return self.servable == 0


@dataclass(frozen=True)
class NewTask:
    task_id: uuid.UUID
    mode: str
    prompt: str
    aspect_ratio: str
    reference_count: int


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, written with its last lease's release."""

    status: TaskStatus
    error_code: str | None
    error_message: str | None
    image_count: int
    result_path: str | None
    timings: dict[str, Any]


@dataclass(frozen=True)
class Release:
    """What the end of one attempt does to the instance."""

    succeeded: bool
    cooldown: float | None = None  # seconds
    counts: bool = True  # a bounced (409) attempt ran nothing: no counter moves


def _lease_free(now: datetime) -> ColumnElement[bool]:
    return or_(Instance.lease_task_id.is_(None), Instance.lease_expires_at <= now)


def _not_cooling(now: datetime) -> ColumnElement[bool]:
    return or_(Instance.cooldown_until.is_(None), Instance.cooldown_until <= now)


def _serving(now: datetime) -> ColumnElement[bool]:
    """Could take a task once free. `busy` (the instance's last word on /status) is left out on purpose: it
    is stale between probes, and an instance that really is busy answers 409, which sends the task on."""
    return and_(
        Instance.status == Status.RUNNING,
        Instance.target == Target.RUNNING,
        Instance.login_state == LoginState.LOGGED_IN,
        Instance.endpoint.is_not(None),
        _not_cooling(now),
    )


class Ledger:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, lease_seconds: float, origin: str) -> None:
        self._sessions = sessions
        self._lease_seconds = lease_seconds
        self._origin = origin  # this process, so it can tell its own notifications from other replicas'
        self._postgres = sessions.kw["bind"].dialect.name == "postgresql"

    @property
    def postgres(self) -> bool:
        return self._postgres

    @property
    def origin(self) -> str:
        return self._origin

    # Leases --------------------------------------------------------------------------------------

    async def admit(
        self, task: NewTask, *, avoid: frozenset[uuid.UUID], try_lease: bool, may_queue: Callable[[], bool]
    ) -> tuple[Lease | None, PoolSnapshot | None]:
        """Writes the task's row: leased and running when an instance is free, else queued when
        `may_queue()` grants it a place. Returns the lease, or the pool's snapshot when it was not leased;
        a task neither leased nor queued (nothing can serve it, or no room to wait) leaves no row."""
        now = utcnow()
        async with self._sessions.begin() as session:
            lease = await self._lease(session, task.task_id, avoid, now) if try_lease else None
            snapshot = None
            if lease is None:
                snapshot = await self._snapshot(session, frozenset(), now)
                if snapshot.empty or not may_queue():
                    return None, snapshot  # nothing was written: the failed lease changed no row
            values = dict(
                id=task.task_id,
                mode=task.mode,
                prompt=task.prompt,
                aspect_ratio=task.aspect_ratio,
                reference_count=task.reference_count,
                created_at=now,
                status=TaskStatus.QUEUED,
                attempts=0,
            )
            if lease is not None:
                values.update(_running(lease), started_at=now)
            await session.execute(insert(Task).values(**values))
        return lease, snapshot if lease is None else None

    async def lease_queued(self, task_id: uuid.UUID, exclude: frozenset[uuid.UUID]) -> Lease | None:
        """A lease for a task that waited; its row turns running."""
        now = utcnow()
        async with self._sessions.begin() as session:
            lease = await self._lease(session, task_id, exclude, now)
            if lease is not None:
                await session.execute(
                    update(Task)
                    .where(Task.id == task_id)
                    .values(**_running(lease), started_at=func.coalesce(Task.started_at, now))
                )
        return lease

    async def finish_attempt(
        self, lease: Lease, release: Release, end: TaskEnd | None, *, attempts: int, events: Sequence[InstanceEvent] = ()
    ) -> None:
        """Frees the instance (with its cooldown and counters) and moves the task on: to its end, or back to
        queued for another instance. Other gateways hear that an instance is free."""
        now = utcnow()
        values: dict[str, Any] = {"lease_task_id": None, "lease_expires_at": None}
        if release.cooldown:
            values["cooldown_until"] = now + timedelta(seconds=release.cooldown)
        if release.counts:
            counter = Instance.tasks_done if release.succeeded else Instance.tasks_failed
            values[counter.key] = counter + 1
        task_values: dict[str, Any] = {"attempts": attempts}
        if end is None:
            task_values["status"] = TaskStatus.QUEUED
        else:
            task_values.update(_ended(end, now))
        async with self._sessions.begin() as session:
            await session.execute(
                update(Instance)
                .where(Instance.id == lease.instance_id, Instance.lease_task_id == lease.task_id)
                .values(**values)
            )
            await session.execute(update(Task).where(Task.id == lease.task_id).values(**task_values))
            session.add_all(events)
            await self._notify(session, "free")

    async def release_unused(self, lease: Lease) -> None:
        """A lease nobody will use (its waiter left at that very moment): free it, leave the task alone."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(Instance)
                .where(Instance.id == lease.instance_id, Instance.lease_task_id == lease.task_id)
                .values(lease_task_id=None, lease_expires_at=None)
            )
            await self._notify(session, "free")

    async def end_task(self, task_id: uuid.UUID, end: TaskEnd, *, attempts: int | None = None) -> None:
        """A task that ends without holding a lease (it waited too long, its client left, ...)."""
        values = _ended(end, utcnow())
        if attempts is not None:
            values["attempts"] = attempts
        async with self._sessions.begin() as session:
            await session.execute(
                update(Task).where(Task.id == task_id, Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))).values(**values)
            )

    async def snapshot(self, exclude: frozenset[uuid.UUID] = frozenset()) -> PoolSnapshot:
        async with self._sessions() as session:
            return await self._snapshot(session, exclude, utcnow())

    async def suspect(self, instance_id: uuid.UUID) -> None:
        """Tells the other gateways' reconcilers (one of them leads) to probe this instance."""
        if self._postgres:
            async with self._sessions.begin() as session:
                await self._notify(session, "suspect", str(instance_id))

    async def _lease(
        self, session: AsyncSession, task_id: uuid.UUID, exclude: frozenset[uuid.UUID], now: datetime
    ) -> Lease | None:
        candidate = (
            select(Instance.id)
            .where(_serving(now), _lease_free(now))
            .order_by(Instance.last_used_at.asc().nulls_first(), Instance.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if exclude:
            candidate = candidate.where(Instance.id.not_in(exclude))
        statement = (
            update(Instance)
            .where(Instance.id == candidate.scalar_subquery(), _lease_free(now))
            .values(
                lease_task_id=task_id,
                lease_expires_at=now + timedelta(seconds=self._lease_seconds),
                last_used_at=now,
            )
            .returning(Instance.id, Instance.name, Instance.endpoint, Instance.token)
        )
        row = (await session.execute(statement)).first()
        if row is None:
            return None
        return Lease(task_id, row.id, row.name, InstanceAddress(row.endpoint, row.token))

    async def _snapshot(self, session: AsyncSession, exclude: frozenset[uuid.UUID], now: datetime) -> PoolSnapshot:
        def count(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        running = and_(Instance.status == Status.RUNNING, Instance.target == Target.RUNNING)
        logged_in = and_(running, Instance.login_state == LoginState.LOGGED_IN)
        cooling = and_(logged_in, ~_not_cooling(now))
        query = select(
            count(running),
            count(logged_in),
            count(_serving(now)),
            func.min(case((cooling, Instance.cooldown_until), else_=None)),
        )
        if exclude:
            query = query.where(Instance.id.not_in(exclude))
        row = (await session.execute(query)).one()
        cooldown_ends = row[3]
        if isinstance(cooldown_ends, str):  # SQLite hands an aggregate back untyped
            cooldown_ends = datetime.fromisoformat(cooldown_ends)
        if cooldown_ends is not None and cooldown_ends.tzinfo is None:
            cooldown_ends = cooldown_ends.replace(tzinfo=now.tzinfo)
        return PoolSnapshot(int(row[0]), int(row[1]), int(row[2]), cooldown_ends)

    async def _notify(self, session: AsyncSession, kind: str, argument: str = "") -> None:
        # Delivered when the transaction commits, to every gateway listening on the same database.
        if self._postgres:
            payload = f"{self._origin}:{kind}:{argument}"
            await session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": payload})

    # Tasks ---------------------------------------------------------------------------------------

    async def get_task(self, task_id: uuid.UUID) -> Task | None:
        async with self._sessions() as session:
            return await session.get(Task, task_id)

    async def expire_results(self, older_than: datetime) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Task)
                .where(Task.result_path.is_not(None), Task.finished_at < older_than)
                .values(result_path=None)
            )
        return int(result.rowcount or 0)

    async def abandon_stale(self, created_before: datetime, end: TaskEnd) -> int:
        """Tasks still queued or running long after any live gateway would have ended them."""
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Task)
                .where(Task.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING)), Task.created_at < created_before)
                .values(**_ended(end, utcnow()))
            )
        return int(result.rowcount or 0)


def _running(lease: Lease) -> dict[str, Any]:
    return {"status": TaskStatus.RUNNING, "instance_id": lease.instance_id, "instance_name": lease.name}


def _ended(end: TaskEnd, now: datetime) -> dict[str, Any]:
    return {
        "status": end.status,
        "error_code": end.error_code,
        "error_message": end.error_message,
        "image_count": end.image_count,
        "result_path": end.result_path,
        "timings": end.timings,
        "finished_at": now,
    }

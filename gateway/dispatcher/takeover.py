"""Takeover between gateways sharing a database: heartbeats, and a live gateway claiming a dead one's work.

Each gateway keeps a `gateway_beats` row fresh every GATEWAY_HEARTBEAT_INTERVAL and removes it when it stops
cleanly. A gateway is dead when its row is older than GATEWAY_HEARTBEAT_TIMEOUT or gone. A live gateway then, in
one transaction: ends the dead one's running tasks (and its queued tasks whose inputs were not kept) as
`abandoned` and frees their leases (writing the webhooks of those that have a callback URL), takes its queued
asynchronous tasks (they become its own) and its pending webhooks. Every claim is `UPDATE ... WHERE owner IN
(the dead) RETURNING`: two gateways claiming at once cannot both get a row (the second finds the owner changed),
so no task runs twice. The instances of the abandoned tasks are freed as soon as they say they are idle (their
generation may still be under way: leased at once, the next task would meet a busy instance), or unreachable, or
their lease has expired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.db.models import GatewayBeat, TaskInput, TaskStatus, WebhookDelivery
from gateway.db.types import utcnow
from gateway.dispatcher import statements as sql
from gateway.dispatcher.statements import INSTANCES, TASKS, I, T
from gateway.dispatcher.task_result import ended_unattended

log = logging.getLogger(__name__)

BEATS = GatewayBeat.__table__
OUTBOX = WebhookDelivery.__table__
INPUTS = TaskInput.__table__
G = BEATS.c
W = OUTBOX.c
UNFINISHED = (TaskStatus.QUEUED, TaskStatus.RUNNING)

Transaction = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


@dataclass
class Claimed:
    """What one takeover got: the dead gateways, tasks ended as abandoned, queued tasks and webhooks taken."""

    dead: list[str | None] = field(default_factory=list)
    abandoned: int = 0
    queued: list[Row[Any]] = field(default_factory=list)  # the task rows, oldest first
    webhooks: int = 0


class Owners:
    """This gateway's heartbeat row and its claims on dead gateways' tasks and webhooks."""

    def __init__(self, transaction: Transaction, origin: str, *, timeout: float, clock: Callable[[], datetime]) -> None:
        self._transaction = transaction
        self.origin = origin
        self._timeout = timeout
        self._clock = clock

    async def beat(self) -> bool:
        """Marks this gateway alive. False when its row was gone: another gateway declared it dead (it stopped
        beating for longer than the timeout) and may have taken its queued tasks."""
        now = self._clock()
        async with self._transaction() as connection:
            result = await connection.execute(update(BEATS).where(G.id == self.origin).values(beat_at=now))
            if result.rowcount:
                return True
            await connection.execute(insert(BEATS).values(id=self.origin, started_at=now, beat_at=now))
        return False

    async def leave(self) -> None:
        """A clean stop: the row goes, so a live gateway takes what it left queued at its next beat."""
        async with self._transaction() as connection:
            await connection.execute(delete(BEATS).where(G.id == self.origin))

    async def dead(self, *, everyone_else: bool = False) -> list[str | None]:
        """Gateways that stopped beating, and owners without a row (stopped cleanly). `everyone_else`: this
        gateway knows it is alone (SQLite, or no other gateway connected), so every other one is dead, and so
        are tasks from before owners were recorded (None)."""
        cutoff = self._clock() - timedelta(seconds=self._timeout)
        stale = select(G.id).where(G.id != self.origin)
        if not everyone_else:
            stale = stale.where(G.beat_at < cutoff)
        alive = select(G.id)
        rowless = select(T.owner).where(T.status.in_(UNFINISHED), T.owner.is_not(None), T.owner.not_in(alive)).distinct()
        rowless_hooks = select(W.owner).where(W.owner.is_not(None), W.owner.not_in(alive)).distinct()
        async with self._transaction() as connection:
            found: set[str | None] = set((await connection.execute(stale)).scalars())
            found |= set((await connection.execute(rowless)).scalars())
            found |= set((await connection.execute(rowless_hooks)).scalars())
        found.discard(self.origin)
        return sorted(found, key=str) + ([None] if everyone_else else [])

    async def claim(self, dead: list[str | None], end_values: dict[str, Any]) -> Claimed:
        """Takes over `dead` in one transaction (see the module's doc)."""
        claimed = Claimed(dead)
        if not dead:
            return claimed
        of_dead = _owned_by(T.owner, dead)
        resumable = and_(T.status == TaskStatus.QUEUED, T.request_path.is_not(None))
        async with self._transaction() as connection:
            ended = (await connection.execute(
                update(TASKS).where(of_dead, T.status.in_(UNFINISHED), ~resumable).values(**end_values)
                .returning(T.id, T.mode, T.attempts, T.created_at, T.model, T.image_size, T.output_format, T.callback_url)
            )).all()
            if ended:  # their instances are freed once idle (`orphan_leases`): they may still be generating
                await connection.execute(delete(INPUTS).where(INPUTS.c.task_id.in_([row.id for row in ended])))
                claimed.webhooks += await self._tell_ended(connection, ended, end_values)
            taken = await connection.execute(
                update(TASKS).where(of_dead, resumable).values(owner=self.origin).returning(*TASKS.c)
            )
            claimed.queued = sorted(taken.all(), key=lambda row: row.created_at)
            hooks = await connection.execute(update(OUTBOX).where(_owned_by(W.owner, dead)).values(owner=self.origin))
            claimed.webhooks += int(hooks.rowcount or 0)
            names = [name for name in dead if name is not None]
            if names:
                await connection.execute(delete(BEATS).where(G.id.in_(names)))
        claimed.abandoned = len(ended)
        return claimed

    async def _tell_ended(self, connection: AsyncConnection, ended: Sequence[Row[Any]], end_values: dict[str, Any]) -> int:
        """Webhooks for the ended tasks that have a callback URL and no delivery yet (a gateway of an older version
        wrote its webhook apart from the end, at times before it: that one goes instead). Returns how many."""
        deliveries = [d for d in (ended_unattended(row, end_values) for row in ended) if d is not None]
        if not deliveries:
            return 0
        told = select(W.task_id).where(W.task_id.in_([d.task_id for d in deliveries]))
        already = set((await connection.execute(told)).scalars())
        rows = [d.row(self.origin, utcnow()) for d in deliveries if d.task_id not in already]
        if rows:
            await connection.execute(insert(OUTBOX), rows)
        return len(rows)

    async def orphan_leases(self) -> list[Row[Any]]:
        """Instances still leased to a task that has ended (a dead gateway's, ended as abandoned): free once idle."""
        ended = select(T.id).where(T.status.not_in(UNFINISHED))
        query = select(I.id, I.name, I.endpoint, I.token, I.lease_task_id).where(I.lease_task_id.in_(ended))
        async with self._transaction() as connection:
            return list((await connection.execute(query)).all())

    async def free(self, instance_id: Any, task_id: Any) -> bool:
        """Frees an orphan lease, unless it changed meanwhile."""
        async with self._transaction() as connection:
            result = await connection.execute(
                update(INSTANCES).where(I.id == instance_id, I.lease_task_id == task_id)
                .values(lease_task_id=None, lease_expires_at=None)
            )
        return bool(result.rowcount)

    async def prune_inputs(self) -> int:
        """Kept inputs of tasks that ended some other way (abandoned, expired) or were deleted."""
        live = select(T.id).where(T.status.in_(UNFINISHED))
        async with self._transaction() as connection:
            result = await connection.execute(delete(INPUTS).where(INPUTS.c.task_id.not_in(live)))
        return int(result.rowcount or 0)

    async def still_mine(self, task_id: Any) -> bool:
        """Whether this gateway still owns a task (a gateway declared dead may have lost it)."""
        async with self._transaction() as connection:
            owner = await connection.scalar(select(T.owner).where(T.id == task_id))
        return owner == self.origin

    async def anyone_else_connected(self, prefix: str) -> bool:
        """Postgres: another gateway's connections are open (their application_name starts with `prefix`)."""
        async with self._transaction() as connection:
            others = await connection.scalar(sql.OTHER_GATEWAYS, {"p_prefix": prefix + "%", "p_me": prefix + self.origin})
        return bool(others)


def _owned_by(column: Any, owners: list[str | None]) -> Any:
    names = [name for name in owners if name is not None]
    conditions = [column.in_(names)] if names else []
    if None in owners:
        conditions.append(column.is_(None))
    return or_(*conditions)

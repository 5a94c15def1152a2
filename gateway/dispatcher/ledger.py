"""The dispatcher's database work: leases on instances and the task rows.

Two steps per task on the request path: a lease (with the task's row) and a release (with the task's end).
Each is one round trip on Postgres and one short transaction on SQLite; the SQL is in `statements`. Core
SQL on a connection, not ORM sessions: the ORM's unit of work would cost more than the statements do.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Text, and_, case, cast, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from fleet_contract.codes import OUT_OF_REACH
from gateway.accounts import page_catalogue
from gateway.accounts import policy
from gateway.accounts.calendar import pacific_day
from gateway.accounts.policy import BlockKind
from gateway.db.models import (
    EventKind,
    InstanceEvent,
    LoginState,
    Status,
    Target,
    TaskStatus,
    WebhookDelivery,
    new_event,
)
from gateway.db.outage import Backlog
from gateway.db.types import utcnow
from gateway.dispatcher import statements as sql
from gateway.dispatcher.statements import (
    EVENTS,
    MODEL_BLOCKS,
    NOTIFY_CHANNEL,
    TASKS,
    USAGE,
    B,
    I,
    T,
    U,
)
from gateway.dispatcher.task_result import Delivery
from gateway.instance_client import InstanceAddress
from gateway.settings import AccountSettings

Clock = Callable[[], datetime]

__all__ = ["NOTIFY_CHANNEL", "Lease", "Ledger", "NewTask", "PoolSnapshot", "Release", "TaskEnd"]


OUTBOX = WebhookDelivery.__table__
RECENT_IMAGES = 1024  # answers remembered for conversations' next turns (their rows may not be written yet)


@dataclass(frozen=True)
class Lease:
    task_id: uuid.UUID
    instance_id: uuid.UUID
    name: str
    address: InstanceAddress
    pace: float | None = None  # the account's own pause between tasks (None: the fleet's)
    daily_cap: int | None = None  # its own daily cap per model (None: the fleet's)
    # When the attempt was sent: its Pacific day is the one its answer counts in (an answer may land after midnight).
    leased_at: datetime | None = None


@dataclass(frozen=True)
class PoolSnapshot:
    """What could serve a task: running, running and signed in, and of those able to take the task's model."""

    running: int
    logged_in: int
    servable: int
    blocked: int = 0  # signed in, but their accounts may not be asked for the task's model now
    back_at: datetime | None = None  # the earliest end of those blocks that end by themselves (reset, pause)
    now: datetime | None = None  # the ledger's clock when it looked

    @property
    def empty(self) -> bool:
        return self.servable == 0

    @property
    def spent(self) -> bool:
        """No account may be asked for the model before `back_at` (its allowance or a rate limit)."""
        return self.empty and self.back_at is not None


@dataclass(frozen=True)
class NewTask:
    task_id: uuid.UUID
    mode: str
    prompt: str
    aspect_ratio: str
    reference_count: int
    model: str
    image_size: str | None = None
    # Which face took it, the answer's format, the client's idempotency key and what it was given for, the
    # kept inputs of a task that may outlive this gateway, and the webhook.
    api: str | None = None
    output_format: str | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    request_path: str | None = None
    callback_url: str | None = None
    after_task: uuid.UUID | None = None  # a conversation's last task: its instance is preferred (see GenerationRequest)


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, written with its last lease's release."""

    status: TaskStatus
    error_code: str | None
    error_message: str | None
    image_count: int
    result_path: str | None
    timings: dict[str, Any]
    image_hashes: list[str] | None = None  # sha256 of each image the client received


@dataclass(frozen=True)
class Release:
    """What the end of one attempt does to the instance and to its account's ledger for the model."""

    succeeded: bool
    model: str  # what the attempt asked for: the ledger row it counts in
    counts: bool = True  # a bounced (409) attempt ran nothing: no counter moves
    block: BlockKind | None = None  # what the answer blocks on this account for the model
    block_reason: str = ""

    @property
    def quota(self) -> bool:
        return self.block == BlockKind.QUOTA


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        lease_seconds: float,
        origin: str,
        accounts: AccountSettings | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._engine = engine
        self._lease_seconds = lease_seconds
        self._origin = origin  # this process, so it can tell its own notifications from other replicas'
        self._recent_images: OrderedDict[str, uuid.UUID] = OrderedDict()  # sha256 -> the task that answered with it
        self.accounts = accounts or AccountSettings()
        self.clock = clock  # injected by tests and the day benchmark: midnight Pacific comes when they say
        self._postgres = engine.dialect.name == "postgresql"
        # One statement needs no transaction around it: saves Postgres two round trips per step.
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT") if self._postgres else engine
        # SQLite has one writer: writers queue here, in order, rather than in its sleeping busy handler.
        self._writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        # Releases and task ends that met a database outage wait here and land when it is back.
        self.backlog = Backlog("dispatcher bookkeeping")

    @property
    def postgres(self) -> bool:
        return self._postgres

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction (on SQLite, in turn with the ledger's own writers)."""
        return self._transaction()

    # Leases --------------------------------------------------------------------------------------

    async def admit(
        self, task: NewTask, *, avoid: frozenset[uuid.UUID], try_lease: bool, may_queue: Callable[[], bool]
    ) -> tuple[Lease | None, PoolSnapshot | None]:
        """Writes the task's row: leased and running when an instance is free, else queued when
        `may_queue()` grants it a place. Returns the lease, or the pool's snapshot when it was not leased;
        a task neither leased nor queued (nothing can serve it, or no room to wait) leaves no row."""
        await self.backlog.ready()  # releases still waiting for the database come first
        now = self.clock()
        params = (self._lease_params(task.task_id, avoid, now, task.model, after=task.after_task) | _task_params(task)
                  | {"p_owner": self._origin})
        if try_lease and self._postgres and not self._leases_take_turns:
            async with self._single.connect() as connection:
                lease = self._lease_from(task.task_id, await connection.execute(sql.LEASE_AND_REGISTER, params), now)
            if lease is not None:
                return lease, None
            try_lease = False  # nothing was free a moment ago: queue (the queue retries the lease)
        async with self._transaction() as connection:
            await self._take_turn(connection)
            lease = self._lease_from(task.task_id, await connection.execute(sql.LEASE, params), now) if try_lease else None
            if lease is not None:
                await connection.execute(sql.INSERT_TASK, params | _running(lease, now))
                return lease, None
            snapshot = await self._snapshot(connection, frozenset(), now, task.model)
            if snapshot.empty or not may_queue():
                return None, snapshot  # nothing was written: the failed lease changed no row
            queued = {"p_status": TaskStatus.QUEUED, "p_instance_id": None, "p_instance_name": None, "p_started_at": None}
            await connection.execute(sql.INSERT_TASK, params | queued)
        return None, snapshot

    async def lease_queued(self, task_id: uuid.UUID, exclude: frozenset[uuid.UUID], model: str,
                           after: uuid.UUID | None = None) -> Lease | None:
        """A lease for a task that waited; its row turns running."""
        await self.backlog.ready()  # its own return to the queue, if that is still waiting, comes first
        now = self.clock()
        params = self._lease_params(task_id, exclude, now, model, after=after)
        if self._postgres and not self._leases_take_turns:
            async with self._single.connect() as connection:
                return self._lease_from(task_id, await connection.execute(sql.LEASE_AND_START, params), now)
        async with self._transaction() as connection:
            await self._take_turn(connection)
            lease = self._lease_from(task_id, await connection.execute(sql.LEASE, params), now)
            if lease is not None:
                await connection.execute(sql.START_TASK, params | _running(lease, now))
        return lease

    async def finish_attempt(
        self, lease: Lease, release: Release, end: TaskEnd | None, *, attempts: int, events: Sequence[InstanceEvent] = (),
        webhook: Delivery | None = None,
    ) -> None:
        """Frees the instance (with its cooldown and counters) and moves the task on: to its end (with its webhook
        in the outbox, in the same transaction), or back to queued for another instance. Other gateways hear that
        an instance is free. Kept and written again when the database cannot be reached, so the lease never waits
        for its expiry."""
        write = functools.partial(self._finish_attempt, lease, release, end, attempts=attempts, events=events, webhook=webhook)
        await self.backlog.write(f"the release of {lease.name} by task {lease.task_id}", write)

    async def _finish_attempt(
        self, lease: Lease, release: Release, end: TaskEnd | None, *, attempts: int, events: Sequence[InstanceEvent],
        webhook: Delivery | None,
    ) -> None:
        now = self.clock()
        counted = release.counts
        params: dict[str, Any] = {
            "p_instance_id": lease.instance_id,
            "p_task_id": lease.task_id,
            "p_cooldown_until": self._rest_until(lease, now) if counted else None,
            "p_done": int(counted and release.succeeded),
            "p_failed": int(counted and not release.succeeded),
            "p_attempts": attempts,
            "p_now": now,
            **self._usage_params(release, lease.leased_at or now),
            **self._notice("free"),
        }
        if end is not None:
            params.update(_end_params(end))
        cap = policy.cap_for(self.accounts.daily_caps, release.model, lease.daily_cap) if params["p_made"] else None
        if self._postgres and not events and release.block is None and cap is None and webhook is None:
            async with self._single.connect() as connection:
                await connection.execute(sql.RELEASE_AND_END if end is not None else sql.RELEASE_AND_REQUEUE, params)
            return
        async with self._transaction() as connection:
            await connection.execute(sql.RELEASE, params)
            await connection.execute(sql.END_TASK if end is not None else sql.REQUEUE_TASK, params)
            await connection.execute(sql.COUNT_USAGE[self._engine.dialect.name], params)
            await connection.execute(sql.CLEAR_RATE_LIMIT, params)
            block, reason = release.block, release.block_reason
            sent = lease.leased_at or now
            if block is None and cap is not None and await self._made_today(connection, lease.instance_id, release.model, sent) >= cap:
                block, reason = BlockKind.CAP, f"the daily cap of {cap} is reached"
            if block is not None:
                events = [*events, await self._block_model(connection, lease, release.model, block, reason, now)]
            if events:
                await connection.execute(insert(EVENTS), [_event_row(e) for e in events])
            if webhook is not None:
                await connection.execute(insert(OUTBOX).values(**webhook.row(self._origin, utcnow())))
            await self._notify(connection, params)

    def _rest_until(self, lease: Lease, now: datetime) -> datetime | None:
        """Pacing: the account rests this long after any attempt that reached its page (None: no rest)."""
        pause = lease.pace if lease.pace is not None else self.accounts.pause
        seconds = policy.pace_pause(pause, self.accounts.jitter)
        return now + timedelta(seconds=seconds) if seconds > 0 else None

    @staticmethod
    def _usage_params(release: Release, sent: datetime) -> dict[str, Any]:
        """The attempt counts in the Pacific day it was sent on (`sent`)."""
        counted = release.counts
        return {
            "p_model": release.model,
            "p_day": pacific_day(sent),
            "p_made": int(counted and release.succeeded),
            "p_failed_usage": int(counted and not release.succeeded and not release.quota),
            "p_quota": int(counted and release.quota),
        }

    @staticmethod
    async def _made_today(connection: AsyncConnection, instance_id: uuid.UUID, model: str, now: datetime) -> int:
        query = select(U.made).where(U.instance_id == instance_id, U.model == model, U.day == pacific_day(now))
        return int(await connection.scalar(query) or 0)

    async def _block_model(
        self, connection: AsyncConnection, lease: Lease, model: str, kind: BlockKind, reason: str, now: datetime
    ) -> InstanceEvent:
        """Writes the block and returns its event. A rate limit doubles the last one's pause (its strikes)."""
        strikes = 0
        if kind == BlockKind.RATE_LIMIT:
            earlier = select(B.strikes).where(B.instance_id == lease.instance_id, B.model == model, B.kind == kind.value)
            strikes = int(await connection.scalar(earlier) or 0)
        strikes += kind == BlockKind.RATE_LIMIT
        settings = self.accounts
        pause = policy.rate_limit_pause(strikes, settings.rate_limit_pause, settings.rate_limit_pause_max, settings.jitter)
        # A day's allowance ends at the midnight after the attempt was sent (a quota answer landing just after
        # midnight speaks of the day before); a pause runs from the answer.
        since = now if kind == BlockKind.RATE_LIMIT else (lease.leased_at or now)
        until = policy.block_until(kind, since, pause)
        # Replaces the earlier block of the same key (a void one, or a rate limit's); portable, unlike an upsert.
        await connection.execute(delete(MODEL_BLOCKS).where(B.instance_id == lease.instance_id, B.model == model))
        row = {"instance_id": lease.instance_id, "model": model, "reason": reason[:2000], "created_at": now,
               "kind": kind.value, "until": until, "strikes": strikes}
        await connection.execute(insert(MODEL_BLOCKS), [row])
        when = f"until {until.isoformat(timespec='seconds')}" if until else "until a new session or restart"
        message = f"{model} blocked ({kind.value}) {when}: {reason}"
        return new_event(lease.instance_id, lease.name, EventKind.MODEL_BLOCKED, message[:2000])

    async def renew_allowances(self) -> int:
        """Ends the blocks whose time is up, with an event for each allowance back (the day's reset), and drops
        usage older than the kept days and rate-limit strikes from more than a day ago."""
        now = self.clock()
        daily = (BlockKind.QUOTA.value, BlockKind.CAP.value)
        async with self._transaction() as connection:
            ended = (await connection.execute(
                delete(MODEL_BLOCKS).where(B.kind.in_(daily), B.until <= now).returning(B.instance_id, B.model, B.kind)
            )).all()
            await connection.execute(delete(MODEL_BLOCKS).where(
                B.kind == BlockKind.RATE_LIMIT.value, B.until <= now - timedelta(days=1)))
            oldest = pacific_day(now) - timedelta(days=self.accounts.usage_days)
            await connection.execute(delete(USAGE).where(U.day < oldest))
            if ended:
                names = dict((await connection.execute(
                    select(I.id, I.name).where(I.id.in_({row.instance_id for row in ended})))).all())
                events = [
                    new_event(row.instance_id, names.get(row.instance_id, ""), EventKind.ALLOWANCE_RENEWED,
                              f"{row.model}: the {row.kind} block ended at the day's reset")
                    for row in ended
                ]
                await connection.execute(insert(EVENTS), [_event_row(e) for e in events])
        return len(ended)

    async def release_unused(self, lease: Lease) -> None:
        """A lease nobody will use (its waiter left at that very moment): free it, leave the task alone."""
        await self.backlog.write(f"the unused lease of {lease.name}", functools.partial(self._release_unused, lease))

    async def _release_unused(self, lease: Lease) -> None:
        params = {"p_instance_id": lease.instance_id, "p_task_id": lease.task_id, "p_now": self.clock(), **self._notice("free")}
        async with self._transaction() as connection:
            await connection.execute(sql.RELEASE_UNUSED, params)
            await self._notify(connection, params)

    async def end_task(
        self, task_id: uuid.UUID, end: TaskEnd, *, attempts: int | None = None, webhook: Delivery | None = None
    ) -> None:
        """A task that ends without holding a lease (it waited too long, its client left, ...); its webhook goes to
        the outbox with the end, unless the task had ended already."""
        write = functools.partial(self._end_task, task_id, end, attempts, webhook)
        await self.backlog.write(f"the end of task {task_id}", write)

    async def _end_task(self, task_id: uuid.UUID, end: TaskEnd, attempts: int | None, webhook: Delivery | None) -> None:
        values = _ended(end, self.clock())
        if attempts is not None:
            values["attempts"] = attempts
        unfinished = T.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))
        async with self._transaction() as connection:
            ended = await connection.execute(update(TASKS).where(T.id == task_id, unfinished).values(**values))
            if webhook is not None and ended.rowcount:
                await connection.execute(insert(OUTBOX).values(**webhook.row(self._origin, utcnow())))

    async def snapshot(self, exclude: frozenset[uuid.UUID] = frozenset(), model: str | None = None) -> PoolSnapshot:
        async with self._engine.connect() as connection:
            return await self._snapshot(connection, exclude, self.clock(), model)

    async def suspect(self, instance_id: uuid.UUID) -> None:
        """Tells the other gateways' reconcilers (one of them leads) to probe this instance."""
        if self._postgres:
            async with self._single.connect() as connection:
                await self._notify(connection, self._notice("suspect", str(instance_id)))

    @property
    def _leases_take_turns(self) -> bool:
        return self._postgres and self.accounts.per_exit > 0

    async def _take_turn(self, connection: AsyncConnection) -> None:
        """A per-exit limit counts the other leases on the exit: on Postgres two gateways (or two connections)
        leasing at once would both see room, so leases wait for each other while the limit is on."""
        if self._leases_take_turns:
            await connection.execute(sql.LEASE_TURN)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        async with contextlib.AsyncExitStack() as stack:
            if self._writer is not None:
                await stack.enter_async_context(self._writer)
            yield await stack.enter_async_context(self._engine.begin())

    def _lease_params(self, task_id: uuid.UUID, exclude: frozenset[uuid.UUID], now: datetime, model: str,
                      after: uuid.UUID | None = None) -> dict[str, Any]:
        expires = now + timedelta(seconds=self._lease_seconds)
        today = pacific_day(now)
        return {
            # a model the packaged catalogue lacks goes only to accounts whose page lists it
            "p_task_id": task_id, "p_exclude": list(exclude | page_catalogue.not_offering(model)), "p_now": now, "p_expires": expires, "p_model": model,
            "p_day": today, "p_since": today - timedelta(days=self.accounts.usage_days),
            "p_per_exit": self.accounts.per_exit, "p_after": after,
        }

    @staticmethod
    def _lease_from(task_id: uuid.UUID, result: Any, now: datetime) -> Lease | None:
        row = result.first()
        if row is None:
            return None
        address = InstanceAddress(row.endpoint, row.token)
        return Lease(task_id, row.id, row.name, address, row.pace_seconds, row.daily_cap, leased_at=now)

    async def _snapshot(
        self, connection: AsyncConnection, exclude: frozenset[uuid.UUID], now: datetime, model: str | None
    ) -> PoolSnapshot:
        """With a model: instances whose accounts cannot use it do not count as servable."""

        def count(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        running = and_(I.status == Status.RUNNING, I.target == Target.RUNNING)
        logged_in = and_(running, I.login_state == LoginState.LOGGED_IN, I.aistudio_reach.not_in(OUT_OF_REACH))
        serving = sql.serving(now)
        if model is None:
            query = select(count(running), count(logged_in), count(serving), literal(0), literal(None))
        else:
            blocked = sql.model_blocked(model, now)
            query = select(
                count(running),
                count(logged_in),
                count(and_(serving, ~blocked)),
                count(and_(serving, blocked)),
                func.min(case((serving, sql.block_end(model, now)), else_=None)),
            )
        exclude = exclude | page_catalogue.not_offering(model)
        if exclude:
            query = query.where(I.id.not_in(exclude))
        row = (await connection.execute(query)).one()
        return PoolSnapshot(int(row[0]), int(row[1]), int(row[2]), int(row[3]), _aware(row[4], now), now)

    def _notice(self, kind: str, argument: str = "") -> dict[str, str]:
        return {"p_channel": NOTIFY_CHANNEL, "p_payload": f"{self._origin}:{kind}:{argument}"}

    async def _notify(self, connection: AsyncConnection, params: dict[str, Any]) -> None:
        # Delivered when the transaction commits, to every gateway listening on the same database.
        if self._postgres:
            await connection.execute(sql.NOTIFY, {"p_channel": params["p_channel"], "p_payload": params["p_payload"]})

    # Tasks ---------------------------------------------------------------------------------------

    async def get_task(self, task_id: uuid.UUID) -> Row[Any] | None:
        async with self._engine.connect() as connection:
            return (await connection.execute(select(TASKS).where(T.id == task_id))).first()

    def note_images(self, hashes: Sequence[str], task_id: uuid.UUID) -> None:
        """The images a task answered with, remembered here before its row is written (bounded, newest kept)."""
        for image in hashes:
            self._recent_images[image] = task_id
            self._recent_images.move_to_end(image)
        while len(self._recent_images) > RECENT_IMAGES:
            self._recent_images.popitem(last=False)

    async def task_that_made(self, image_sha256: str, since: datetime) -> uuid.UUID | None:
        """The newest task ended since `since` that answered with this image (sha256, hex), if any: this
        gateway's own recent answers first, then every gateway's rows."""
        if not re.fullmatch(r"[0-9a-f]{64}", image_sha256):
            return None
        if image_sha256 in self._recent_images:
            return self._recent_images[image_sha256]
        query = (select(T.id).where(T.status == TaskStatus.SUCCEEDED, T.finished_at >= since,
                                    cast(T.image_hashes, Text).contains(image_sha256))
                 .order_by(T.finished_at.desc()).limit(1))
        async with self._engine.connect() as connection:
            return await connection.scalar(query)

    async def expire_results(self, older_than: datetime) -> int:
        async with self._transaction() as connection:
            result = await connection.execute(
                update(TASKS).where(T.result_path.is_not(None), T.finished_at < older_than).values(result_path=None)
            )
        return int(result.rowcount or 0)

    async def task_by_key(self, idempotency_key: str) -> Row[Any] | None:
        async with self._engine.connect() as connection:
            return (await connection.execute(select(TASKS).where(T.idempotency_key == idempotency_key))).first()

    async def record_callback(self, task_id: uuid.UUID, attempts: list[dict[str, Any]]) -> None:
        """Every delivery attempt of a task's webhook so far (time, status or error)."""
        async with self._transaction() as connection:
            await connection.execute(update(TASKS).where(T.id == task_id).values(callback_attempts=attempts))

    async def abandon_stale(self, created_before: datetime, end: TaskEnd) -> int:
        """Tasks still queued or running long after any live gateway would have ended them."""
        unfinished = T.status.in_((TaskStatus.QUEUED, TaskStatus.RUNNING))
        async with self._transaction() as connection:
            result = await connection.execute(
                update(TASKS).where(unfinished, T.created_at < created_before).values(**_ended(end, utcnow()))
            )
        return int(result.rowcount or 0)


def _aware(value: Any, now: datetime) -> datetime | None:
    """An aggregate's time as the database hands it back (SQLite: a string, without its zone)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=now.tzinfo)
    return value


def _task_params(task: NewTask) -> dict[str, Any]:
    return {
        "p_mode": task.mode,
        "p_prompt": task.prompt,
        "p_aspect_ratio": task.aspect_ratio,
        "p_model": task.model,
        "p_image_size": task.image_size,
        "p_reference_count": task.reference_count,
        "p_api": task.api,
        "p_output_format": task.output_format,
        "p_idempotency_key": task.idempotency_key,
        "p_request_hash": task.request_hash,
        "p_request_path": task.request_path,
        "p_callback_url": task.callback_url,
    }


def _running(lease: Lease, now: datetime) -> dict[str, Any]:
    return {
        "p_status": TaskStatus.RUNNING,
        "p_instance_id": lease.instance_id,
        "p_instance_name": lease.name,
        "p_started_at": now,
    }


def _end_columns(end: TaskEnd) -> dict[str, Any]:
    return {
        "status": end.status,
        "error_code": end.error_code,
        "error_message": _storable(end.error_message),
        "image_count": end.image_count,
        "result_path": end.result_path,
        "timings": end.timings,
        "image_hashes": end.image_hashes,
    }


def _storable(text: str | None) -> str | None:
    """An instance's words as Postgres can store them (no NUL), so a task's end is never refused for them."""
    return text.replace("\x00", "") if text else text


def _end_params(end: TaskEnd) -> dict[str, Any]:
    """For the prebuilt statements, whose parameters are named `p_<column>`."""
    return {f"p_{name}": value for name, value in _end_columns(end).items()}


def _ended(end: TaskEnd, now: datetime) -> dict[str, Any]:
    """Column values, for the less frequent statements built in place."""
    return {**_end_columns(end), "finished_at": now}


def ended_values(end: TaskEnd) -> dict[str, Any]:
    """A task row's columns when it ends now as `end` says."""
    return _ended(end, utcnow())


def _event_row(event: InstanceEvent) -> dict[str, Any]:
    return {
        "instance_id": event.instance_id,
        "instance_name": event.instance_name,
        "kind": event.kind,
        "message": event.message,
        "created_at": event.created_at,
    }

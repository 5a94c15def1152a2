"""The account ledger's read side: per account and model, what it made today, what it is known to hold, what is
left, whether it is blocked and why; and the pool's totals per model. For the management API, the CLI, the panel
and `/metrics`.

Plain reads over a sessionmaker, with `now` given by the caller (the fleet's clock): the ledger's writes live in
`gateway.dispatcher.ledger`, and today is the Pacific day of `now`, as there.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_contract import catalogue
from gateway.accounts.calendar import next_reset, pacific_day
from gateway.accounts.policy import cap_for
from gateway.db.models import AccountUsage, Instance, ModelBlock, Target, block_in_force
from gateway.errors import Invalid, NotFound
from gateway.settings import AccountSettings

# Views ---------------------------------------------------------------------------------------------------------


class ModelUsageView(msgspec.Struct, kw_only=True):
    """One account's day with one model."""

    model: str
    made_today: int
    failed_today: int  # attempts that failed, quota answers aside
    quota_answers_today: int
    # The most it made on a day it ran out, over the kept days (None: it never ran out, so nobody knows).
    learned_capacity: int | None
    cap: int | None  # the operator's daily cap on it (the instance's own, else the fleet's; None: no cap)
    # Left today: the lower of the learned capacity and the cap, minus today's count, never below 0 (None: unknown).
    remaining: int | None
    blocked: bool  # the account may not be asked for the model now
    block_kind: str | None = None  # quota, cap, rate_limit, unavailable
    blocked_until: datetime | None = None  # None while blocked: until a new session or restart
    block_reason: str | None = None


class AccountUsageView(msgspec.Struct, kw_only=True):
    """One account (one instance's Google login) and its models."""

    instance_id: str
    name: str
    status: str
    target: str
    pace_seconds: float | None  # its own pause between tasks (None: the fleet's)
    daily_cap: int | None  # its own daily cap per model (None: the fleet's)
    models: list[ModelUsageView]


class PoolModelView(msgspec.Struct, kw_only=True):
    """The pool's day with one model. `made_today` counts every account; the rest counts the accounts meant to
    run (a stopped one serves nothing): what is known to be left on those not blocked, how many of those were
    never measured (their share is unknown, not zero), and how many are blocked."""

    model: str
    made_today: int
    remaining: int
    unknown_capacity: int
    blocked: int
    accounts: int


class UsageReport(msgspec.Struct, kw_only=True):
    now: datetime
    day: date  # today in Pacific time, the day the allowances count in
    next_reset: datetime  # the next midnight Pacific: spent allowances and caps come back then
    usage_days: int  # how far back the learned capacity looks
    models: list[str]
    accounts: list[AccountUsageView]
    pool: list[PoolModelView]


# Reads ---------------------------------------------------------------------------------------------------------

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class _Rows:
    """What the database holds for the accounts asked about, keyed by (instance id, model)."""

    instances: Sequence[Any]
    today: dict[tuple[uuid.UUID, str], Any]
    capacity: dict[tuple[uuid.UUID, str], int]
    blocks: dict[tuple[uuid.UUID, str], Any]


async def usage_report(
    sessions: Sessions, accounts: AccountSettings, now: datetime, *, instance_id: str | None = None, model: str | None = None
) -> UsageReport:
    """The ledger per account and model, and the pool's totals per model. `instance_id`: that account only (404
    when unknown); `model`: that model only (422 when neither the catalogue nor the ledger knows it)."""
    day = pacific_day(now)
    since = day - timedelta(days=accounts.usage_days)
    uid = _instance_uuid(instance_id) if instance_id is not None else None
    async with sessions() as session:
        rows = await _read(session, now, day, since, uid)
        if uid is not None and not rows.instances:
            raise NotFound("instance_not_found", instance_id=instance_id)
        models = _listed_models(await _models_in_rows(session, since, now))
    if model is not None:
        models = [_known_model(model, models)]
    views = [_account(row, models, rows, accounts) for row in rows.instances]
    return UsageReport(
        now=now, day=day, next_reset=next_reset(now), usage_days=accounts.usage_days, models=models,
        accounts=views, pool=[_pool(name, views) for name in models],
    )


async def _read(session: AsyncSession, now: datetime, day: date, since: date, uid: uuid.UUID | None) -> _Rows:
    instances = select(Instance.id, Instance.name, Instance.status, Instance.target, Instance.pace_seconds,
                       Instance.daily_cap).order_by(Instance.created_at, Instance.id)
    today = select(AccountUsage.instance_id, AccountUsage.model, AccountUsage.made, AccountUsage.failed,
                   AccountUsage.quota_answers).where(AccountUsage.day == day)
    capacity = (
        select(AccountUsage.instance_id, AccountUsage.model, func.max(AccountUsage.made_at_quota))
        .where(AccountUsage.day >= since, AccountUsage.made_at_quota.is_not(None))
        .group_by(AccountUsage.instance_id, AccountUsage.model)
    )
    blocks = (
        select(ModelBlock.instance_id, ModelBlock.model, ModelBlock.kind, ModelBlock.until, ModelBlock.reason)
        .join(Instance, Instance.id == ModelBlock.instance_id)
        .where(block_in_force(now))
    )
    if uid is not None:
        instances = instances.where(Instance.id == uid)
        today = today.where(AccountUsage.instance_id == uid)
        capacity = capacity.where(AccountUsage.instance_id == uid)
        blocks = blocks.where(ModelBlock.instance_id == uid)
    return _Rows(
        instances=(await session.execute(instances)).all(),
        today={(r.instance_id, r.model): r for r in (await session.execute(today)).all()},
        capacity={(r[0], r[1]): int(r[2]) for r in (await session.execute(capacity)).all()},
        blocks={(r.instance_id, r.model): r for r in (await session.execute(blocks)).all()},
    )


async def _models_in_rows(session: AsyncSession, since: date, now: datetime) -> set[str]:
    """Models the ledger speaks of (the kept days' usage, the blocks in force), whatever the catalogue says now."""
    used = select(AccountUsage.model).where(AccountUsage.day >= since).distinct()
    blocked = select(ModelBlock.model).join(Instance, Instance.id == ModelBlock.instance_id).where(block_in_force(now)).distinct()
    return set((await session.scalars(used)).all()) | set((await session.scalars(blocked)).all())


def _listed_models(in_rows: Iterable[str]) -> list[str]:
    """The catalogue's driven models in its order, then any other the ledger holds, by name."""
    driven = [spec.id for spec in catalogue.load().driven]
    return driven + sorted(set(in_rows) - set(driven))


def _known_model(name: str, listed: list[str]) -> str:
    """A listed model by its id, or a catalogue alias of one; else 422 naming it and the choices."""
    spec = catalogue.load().find(name)
    wanted = spec.id if spec is not None else name
    if wanted not in listed:
        raise Invalid("model_unknown", value=str(name)[:80], choices=", ".join(listed))
    return wanted


def _instance_uuid(instance_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(instance_id)
    except (ValueError, TypeError, AttributeError):
        raise NotFound("instance_not_found", instance_id=str(instance_id)[:80]) from None


# Building the views --------------------------------------------------------------------------------------------


def _account(row: Any, models: list[str], rows: _Rows, accounts: AccountSettings) -> AccountUsageView:
    return AccountUsageView(
        instance_id=str(row.id), name=row.name, status=row.status, target=row.target,
        pace_seconds=row.pace_seconds, daily_cap=row.daily_cap,
        models=[_model(row, name, rows, accounts) for name in models],
    )


def _model(row: Any, model: str, rows: _Rows, accounts: AccountSettings) -> ModelUsageView:
    key = (row.id, model)
    today, block = rows.today.get(key), rows.blocks.get(key)
    made = int(today.made) if today is not None else 0
    capacity = rows.capacity.get(key)
    cap = cap_for(accounts.daily_caps, model, row.daily_cap)
    return ModelUsageView(
        model=model,
        made_today=made,
        failed_today=int(today.failed) if today is not None else 0,
        quota_answers_today=int(today.quota_answers) if today is not None else 0,
        learned_capacity=capacity,
        cap=cap,
        remaining=remaining(capacity, cap, made),
        blocked=block is not None,
        block_kind=block.kind if block is not None else None,
        blocked_until=block.until if block is not None else None,
        block_reason=block.reason if block is not None else None,
    )


def remaining(capacity: int | None, cap: int | None, made: int) -> int | None:
    """What is left today: the capacity, lowered to the cap (the account stops there), minus what was made."""
    if capacity is None:
        return None
    ceiling = capacity if cap is None else min(capacity, cap)
    return max(0, ceiling - made)


def _pool(model: str, views: list[AccountUsageView]) -> PoolModelView:
    cells = [(account, next(m for m in account.models if m.model == model)) for account in views]
    meant = [cell for account, cell in cells if account.target == Target.RUNNING]
    free = [cell for cell in meant if not cell.blocked]
    return PoolModelView(
        model=model,
        made_today=sum(cell.made_today for _, cell in cells),
        remaining=sum(cell.remaining for cell in free if cell.remaining is not None),
        unknown_capacity=sum(1 for cell in free if cell.remaining is None),
        blocked=sum(1 for cell in meant if cell.blocked),
        accounts=len(meant),
    )


@dataclass(frozen=True)
class UsageReader:
    """The reads bound to one fleet's database, account settings and clock."""

    sessions: Sessions
    accounts: AccountSettings
    clock: Callable[[], datetime]

    async def report(self, *, instance_id: str | None = None, model: str | None = None) -> UsageReport:
        return await usage_report(self.sessions, self.accounts, self.clock(), instance_id=instance_id, model=model)

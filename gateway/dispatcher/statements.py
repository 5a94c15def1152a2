"""The SQL of the request path, built once with bound parameters (a task costs no statement construction).
Parameters are named `p_<what>`: see the ledger, which fills them.

The lease: an UPDATE of a free instance, picked by a sub-select that on Postgres locks its row `FOR UPDATE
SKIP LOCKED` (concurrent gateways pick different rows instead of queueing on one; on SQLite the single writer
makes the statement atomic). The outer WHERE re-checks the lease is free and RETURNING says whether we won.
It picks, among accounts not resting, not blocked for the model and with room on their proxy exit, the one
with the most of the model's allowance left today (learned capacity minus today's count; an account not yet
measured counts with the best capacity seen), then the least recently used.

On Postgres each step is one statement: data-modifying CTEs lease and register the task together, or
release the instance, end the task and notify the other gateways together, each in a single round trip.
SQLite runs the same parts as separate statements in one transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Date,
    Integer,
    Uuid,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from gateway.accounts.policy import BlockKind
from gateway.db.models import (
    AccountUsage,
    Instance,
    InstanceEvent,
    ModelBlock,
    Task,
    TaskStatus,
    block_in_force,
    can_take_task,
)
from gateway.db.types import UTCDateTime

NOTIFY_CHANNEL = "aistudio_fleet_pool"

INSTANCES = Instance.__table__
TASKS = Task.__table__
EVENTS = InstanceEvent.__table__
MODEL_BLOCKS = ModelBlock.__table__
USAGE = AccountUsage.__table__
I = INSTANCES.c
T = TASKS.c
B = MODEL_BLOCKS.c
U = USAGE.c
_PEER = INSTANCES.alias("peer")

_NOW = bindparam("p_now", type_=UTCDateTime())
_TASK_ID = bindparam("p_task_id", type_=Uuid())
_MODEL = bindparam("p_model", type_=B.model.type)
_DAY = bindparam("p_day", type_=Date())  # today, in Pacific time
_SINCE = bindparam("p_since", type_=Date())  # the oldest day whose usage still teaches the capacity
_PER_EXIT = bindparam("p_per_exit", type_=Integer())  # tasks at once through one proxy exit (0: no limit)


def _param(name: str, column: Any) -> BindParameter[Any]:
    # Prefixed: a parameter named like a column would also be taken as a value for that column.
    return bindparam(f"p_{name}", type_=column.type)


def _bound(columns: Any, *names: str) -> dict[str, BindParameter[Any]]:
    """Column values that come from parameters of the same (prefixed) names."""
    return {name: _param(name, columns[name]) for name in names}


def lease_free(now: Any = _NOW) -> ColumnElement[bool]:
    return or_(I.lease_task_id.is_(None), I.lease_expires_at <= now)


def not_cooling(now: Any = _NOW) -> ColumnElement[bool]:
    return or_(I.cooldown_until.is_(None), I.cooldown_until <= now)


def serving(now: Any = _NOW) -> ColumnElement[bool]:
    """Could take a task once free: the models' one predicate. `busy` (the instance's last word on /status) is
    left out on purpose: it is stale between probes, and an instance that really is busy answers 409."""
    return can_take_task(now)


def model_blocked(model: Any = None, now: Any = _NOW) -> ColumnElement[bool]:
    """The instance's account may not be asked for this model now (the lease's `p_model` unless given)."""
    model = _MODEL if model is None else model
    return select(B.instance_id).where(B.instance_id == I.id, B.model == model, block_in_force(now)).exists()


def block_end(model: Any, now: Any) -> Any:
    """When the instance's timed block on the model ends (NULL: none, or one that waits for a new session)."""
    return select(func.min(B.until)).where(B.instance_id == I.id, B.model == model, B.until > now).scalar_subquery()


def made_today(model: Any = _MODEL, day: Any = _DAY) -> Any:
    return select(U.made).where(U.instance_id == I.id, U.model == model, U.day == day).scalar_subquery()


def learned_capacity(model: Any = _MODEL, since: Any = _SINCE) -> Any:
    """The most the account made of the model on a day it ran out, over the kept days (NULL: never ran out)."""
    return select(func.max(U.made_at_quota)).where(U.instance_id == I.id, U.model == model, U.day >= since).scalar_subquery()


def best_capacity(model: Any = _MODEL, since: Any = _SINCE) -> Any:
    """The most any account made of the model on a day it ran out: the guess for an account not yet measured."""
    return select(func.max(U.made_at_quota)).where(U.model == model, U.day >= since).scalar_subquery()


def remaining_today(model: Any = _MODEL, day: Any = _DAY, since: Any = _SINCE) -> Any:
    """Learned capacity minus today's count. An account not yet measured is taken to have the best capacity
    seen (unknown is not empty, and it still shares the load); NULL while no account was ever measured."""
    capacity = func.coalesce(learned_capacity(model, since), best_capacity(model, since))
    return capacity - func.coalesce(made_today(model, day), 0)


def exit_has_room(now: Any = _NOW) -> ColumnElement[bool]:
    """Fewer than `p_per_exit` leases run through this instance's proxy exit (the same proxy URL, or none)."""
    peer = _PEER.c
    busy = (
        select(func.count())
        .select_from(_PEER)
        .where(peer.lease_task_id.is_not(None), peer.lease_expires_at > now,
               func.coalesce(peer.proxy_exit, "") == func.coalesce(I.proxy_exit, ""))
        .scalar_subquery()
    )
    return or_(_PER_EXIT <= 0, busy < _PER_EXIT)


def holds_conversation() -> Any:
    """0 for the instance that ran `p_after` (a conversation's last turn: its page may still hold that chat), else 1."""
    after = select(T.instance_id).where(T.id == bindparam("p_after", type_=Uuid())).scalar_subquery()
    return case((I.id == after, 0), else_=1)


# The lease.
_CANDIDATE = (
    select(I.id)
    .where(serving(), not_cooling(), lease_free(), ~model_blocked(), exit_has_room(),
           I.id.not_in(bindparam("p_exclude", expanding=True)))
    .order_by(holds_conversation(), remaining_today().desc().nulls_first(), I.last_used_at.asc().nulls_first(), I.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
LEASE = (
    update(INSTANCES)
    .where(I.id == _CANDIDATE.scalar_subquery(), lease_free())
    .values(
        lease_task_id=_TASK_ID,
        lease_expires_at=bindparam("p_expires", type_=UTCDateTime()),
        last_used_at=_NOW,
        updated_at=_NOW,  # set here: column defaults are not applied inside a CTE
    )
    .returning(I.id, I.name, I.endpoint, I.token, I.lease_task_id, I.pace_seconds, I.daily_cap)
)

# A new task's row.
# What a client asked of a task beyond the generation (its face, output, idempotency, kept inputs, webhook), and
# the gateway whose queue holds it.
_REQUEST_COLUMNS = ("api", "output_format", "idempotency_key", "request_hash", "request_path", "callback_url", "owner")
_NEW_TASK_COLUMNS = (
    "id", "mode", "prompt", "aspect_ratio", "model", "image_size", "reference_count", "status", "instance_id",
    "instance_name", "started_at", "created_at", "attempts", "image_count", *_REQUEST_COLUMNS,
)
INSERT_TASK = insert(TASKS).values(
    id=_TASK_ID,
    **_bound(
        T, "mode", "prompt", "aspect_ratio", "model", "image_size", "reference_count", "status", "instance_id",
        "instance_name", "started_at", *_REQUEST_COLUMNS,
    ),
    created_at=_NOW,
    attempts=0,
    image_count=0,
)

# A waiting task got its lease.
START_TASK = (
    update(TASKS)
    .where(T.id == _TASK_ID)
    .values(
        status=TaskStatus.RUNNING,
        **_bound(T, "instance_id", "instance_name"),
        started_at=func.coalesce(T.started_at, _NOW),
    )
)

# The end of an attempt.
RELEASE = (
    update(INSTANCES)
    .where(I.id == _param("instance_id", I.id), I.lease_task_id == _TASK_ID)
    .values(
        lease_task_id=None,
        lease_expires_at=None,
        cooldown_until=func.coalesce(_param("cooldown_until", I.cooldown_until), I.cooldown_until),
        tasks_done=I.tasks_done + bindparam("p_done"),
        tasks_failed=I.tasks_failed + bindparam("p_failed"),
        last_success_at=case((bindparam("p_done") == 1, _NOW), else_=I.last_success_at),
        updated_at=_NOW,
    )
)
RELEASE_UNUSED = (
    update(INSTANCES)
    .where(I.id == _param("instance_id", I.id), I.lease_task_id == _TASK_ID)
    .values(lease_task_id=None, lease_expires_at=None, updated_at=_NOW)
)

# The account ledger: one attempt's count in today's row of its account and model (p_made, p_failed_usage, p_quota
# are 0 or 1). The first quota answer of the day notes how many the account had made: its capacity that day.
def _usage_upsert(dialect_insert: Any) -> Any:
    quota = bindparam("p_quota", type_=Integer())
    new = dialect_insert(USAGE).values(
        instance_id=_param("instance_id", U.instance_id), model=_MODEL, day=_DAY,
        made=bindparam("p_made", type_=Integer()), failed=bindparam("p_failed_usage", type_=Integer()),
        quota_answers=quota, first_quota_at=case((quota == 1, _NOW), else_=null()),
        made_at_quota=case((quota == 1, 0), else_=null()),
    )
    taken = new.excluded
    return new.on_conflict_do_update(
        index_elements=[U.instance_id, U.model, U.day],
        set_={
            "made": U.made + taken.made,
            "failed": U.failed + taken.failed,
            "quota_answers": U.quota_answers + taken.quota_answers,
            "first_quota_at": func.coalesce(U.first_quota_at, taken.first_quota_at),
            "made_at_quota": func.coalesce(U.made_at_quota, case((taken.quota_answers > 0, U.made), else_=null())),
        },
    )


COUNT_USAGE = {"postgresql": _usage_upsert(postgresql.insert), "sqlite": _usage_upsert(sqlite.insert)}

# A success ends the model's rate-limit strikes on the account.
CLEAR_RATE_LIMIT = delete(MODEL_BLOCKS).where(
    B.instance_id == _param("instance_id", B.instance_id), B.model == _MODEL,
    B.kind == BlockKind.RATE_LIMIT.value, bindparam("p_made", type_=Integer()) == 1,
)

# The task's end.
END_TASK = (
    update(TASKS)
    .where(T.id == _TASK_ID)
    .values(
        **_bound(T, "status", "error_code", "error_message", "image_count", "result_path", "timings", "attempts", "image_hashes"),
        finished_at=_NOW,
    )
)
REQUEUE_TASK = (
    update(TASKS)
    .where(T.id == _TASK_ID)
    .values(status=TaskStatus.QUEUED, attempts=_param("attempts", T.attempts))
)

NOTIFY = text("SELECT pg_notify(:p_channel, :p_payload)")

# Postgres: leases take turns while a per-exit limit is on (it counts other leases, which a concurrent
# statement cannot see before it commits). Held until the lease's transaction ends.
LEASE_TURN = text("SELECT pg_advisory_xact_lock(7242901)")

# Postgres: connections of other gateways (their application_name starts with the prefix, then their origin).
OTHER_GATEWAYS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :p_prefix AND application_name <> :p_me"
)


def _notified(*parts: Executable) -> Executable:
    """One Postgres statement: the parts as data-modifying CTEs, then NOTIFY (sent when it commits)."""
    ctes = [part.cte(f"step_{n}") for n, part in enumerate(parts)]  # type: ignore[attr-defined]
    statement = select(func.pg_notify(bindparam("p_channel"), bindparam("p_payload")))
    return statement.add_cte(*ctes)


# Postgres: lease and register in one statement. Same parameters as LEASE and INSERT_TASK (status running).
_LEASED = LEASE.cte("leased")
LEASE_AND_REGISTER = select(
    _LEASED.c.id, _LEASED.c.name, _LEASED.c.endpoint, _LEASED.c.token, _LEASED.c.pace_seconds, _LEASED.c.daily_cap
).add_cte(
    insert(TASKS)
    .from_select(
        list(_NEW_TASK_COLUMNS),
        select(
            _TASK_ID,
            _param("mode", T.mode),
            _param("prompt", T.prompt),
            _param("aspect_ratio", T.aspect_ratio),
            _param("model", T.model),
            _param("image_size", T.image_size),
            _param("reference_count", T.reference_count),
            literal(TaskStatus.RUNNING.value),
            _LEASED.c.id,
            _LEASED.c.name,
            _NOW,
            _NOW,
            literal(0),
            literal(0),
            *(_param(name, T[name]) for name in _REQUEST_COLUMNS),
        ),
    )
    .cte("registered")
)

# Postgres: a waiting task's lease and its row's start in one statement.
_LEASED_AGAIN = LEASE.cte("leased")
LEASE_AND_START = select(
    _LEASED_AGAIN.c.id, _LEASED_AGAIN.c.name, _LEASED_AGAIN.c.endpoint, _LEASED_AGAIN.c.token,
    _LEASED_AGAIN.c.pace_seconds, _LEASED_AGAIN.c.daily_cap,
).add_cte(
    update(TASKS)
    .where(T.id == _LEASED_AGAIN.c.lease_task_id)
    .values(
        status=TaskStatus.RUNNING,
        instance_id=_LEASED_AGAIN.c.id,  # UPDATE ... FROM leased: no lease, no change
        instance_name=_LEASED_AGAIN.c.name,
        started_at=func.coalesce(T.started_at, _NOW),
    )
    .cte("started")
)

# Postgres: the release, the task's end (or its return to the queue) and the notification together.
RELEASE_AND_END = _notified(RELEASE, END_TASK, COUNT_USAGE["postgresql"], CLEAR_RATE_LIMIT)
RELEASE_AND_REQUEUE = _notified(RELEASE, REQUEUE_TASK, COUNT_USAGE["postgresql"], CLEAR_RATE_LIMIT)
RELEASE_UNUSED_AND_NOTIFY = _notified(RELEASE_UNUSED)

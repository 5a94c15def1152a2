"""SQLAlchemy models: instances, their event log, tasks, and one-off markers.

Every model change ships a migration in `migrations/versions/`.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
    and_,
    or_,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from fleet_contract.codes import OUT_OF_REACH, LoginState, Reach
from gateway.db.sealing import SealedText
from gateway.db.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_MAX_LENGTH = 64


class Target(StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Status(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    ERROR = "error"


# The login state and whether the page reaches AI Studio are the contract's (the instance reports both).
UNREACHABLE_SHOWN = "unreachable"  # the old API's login_state for a page that cannot reach AI Studio (derived)


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class EventKind(StrEnum):
    CREATED = "created"
    START_REQUESTED = "start_requested"
    STOP_REQUESTED = "stop_requested"
    STARTED = "started"
    READY = "ready"
    START_FAILED = "start_failed"
    LOGIN_STATE_CHANGED = "login_state_changed"
    DIED = "died"
    RESTARTING = "restarting"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"
    REMOVED = "removed"
    ADOPTED = "adopted"
    ORPHAN_REMOVED = "orphan_removed"
    SESSION_IMPORTED = "session_imported"
    ENGINE_DOWN = "engine_down"
    # Written by the dispatcher: a task's attempt found the instance silent, failing or signed out.
    ATTEMPT_SUSPECT = "attempt_suspect"
    # The instance's page stopped or started reaching AI Studio (page_error says why).
    AISTUDIO_REACH_CHANGED = "aistudio_reach_changed"
    # The account ledger: a model blocked on an account (quota, rate limit, cap) and its allowance coming back.
    MODEL_BLOCKED = "model_blocked"
    ALLOWANCE_RENEWED = "allowance_renewed"
    # Operators' changes and session health.
    PROXY_CHANGED = "proxy_changed"
    REGIONAL_CHANGED = "regional_changed"  # its time zone or locale (set with the proxy)
    PACING_CHANGED = "pacing_changed"  # its own pause between tasks or daily cap
    SELECTORS_CHANGED = "selectors_changed"
    SESSION_EXPIRING = "session_expiring"
    # The canary (gateway/canary.py): a model's canary turned red, or green again, on this instance's run.
    CANARY_FAILED = "canary_failed"
    CANARY_RECOVERED = "canary_recovered"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), uuid.UUID: Uuid(), dict[str, Any]: JSON()}


class Instance(Base):
    """One browser instance: the API sets `target`, only the reconciler moves `status` toward it."""

    __tablename__ = "instances"
    __table_args__ = (
        CheckConstraint(_in("target", Target), name="target"),
        CheckConstraint(_in("status", Status), name="status"),
        CheckConstraint(_in("login_state", LoginState), name="login_state"),
        CheckConstraint(_in("aistudio_reach", Reach), name="aistudio_reach"),
        Index("ix_instances_status_login_state", "status", "login_state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    target: Mapped[str] = mapped_column(String(16), default=Target.STOPPED)
    status: Mapped[str] = mapped_column(String(16), default=Status.STOPPED)
    login_state: Mapped[str] = mapped_column(String(16), default=LoginState.UNKNOWN)
    # Whether the instance's page can load AI Studio at all (proxy down, DNS, timeout): apart from the login.
    aistudio_reach: Mapped[str] = mapped_column(String(16), default=Reach.UNKNOWN, server_default=Reach.UNKNOWN.value)
    # What the instance itself last said on /status; the lease below is the gateway's own view.
    busy: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_task_id: Mapped[uuid.UUID | None]
    lease_expires_at: Mapped[datetime | None]
    cooldown_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # What a start waits for before the container runs (scheduling, an image pull, the pod's Events); None otherwise.
    start_progress: Mapped[str | None] = mapped_column(Text)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    tasks_failed: Mapped[int] = mapped_column(Integer, default=0)
    # Consecutive crashes or failed starts; the reconciler gives up above settings.max_restarts.
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    next_restart_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_used_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    # Runtime handle: what the engine calls it, where it listens, and the bearer token it was started with.
    # The secrets (token, pending session, proxy URL) are sealed in the database (gateway/db/sealing.py).
    handle: Mapped[str | None] = mapped_column(String(255))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    token: Mapped[str | None] = mapped_column(SealedText)
    # A session waiting to be delivered once the instance is ready (the legacy migration).
    pending_session: Mapped[str | None] = mapped_column(SealedText, deferred=True)
    # The instance id it had in the old system (`aistudio-fleet migrate`): a second migration skips it.
    legacy_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # The browser's own egress proxy (scheme://user:pass@host:port); None means the fleet default.
    proxy_url: Mapped[str | None] = mapped_column(SealedText, deferred=True)
    # Its keyed fingerprint (SecretBox.exit_of), set with it: tasks per proxy exit are counted in SQL.
    proxy_exit: Mapped[str | None] = mapped_column(String(32))
    # The browser's time zone (IANA) and locale (BCP 47), set with its proxy; None means the fleet default.
    timezone: Mapped[str | None] = mapped_column(String(64))
    locale: Mapped[str | None] = mapped_column(String(64))
    # Why the page cannot reach AI Studio, as the browser said it (aistudio_reach `unreachable`).
    page_error: Mapped[str | None] = mapped_column(Text)
    # What the page's model picker offers this account, from /status: {"models": [...], "options": {...}, "read_at"}.
    offered_models: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Session health, as the instance reports it on /status.
    login_checked_at: Mapped[datetime | None]
    signed_in_since: Mapped[datetime | None]
    session_saved_at: Mapped[datetime | None]
    session_expires_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    # Pacing of this account (None: the fleet's): seconds between its tasks, and its daily cap per model.
    pace_seconds: Mapped[float | None] = mapped_column(Float)
    daily_cap: Mapped[int | None] = mapped_column(Integer)


class InstanceEvent(Base):
    """What happened to an instance and why; no foreign key, so the history outlives a deleted row."""

    __tablename__ = "instance_events"
    __table_args__ = (Index("ix_instance_events_instance_id_id", "instance_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    instance_id: Mapped[uuid.UUID]
    instance_name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), default="")
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """One generation request and its outcome (the dispatcher fills it); never any image bytes."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        Index("ix_tasks_status_created_at", "status", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.QUEUED)
    mode: Mapped[str] = mapped_column(String(16), default="sync")  # sync (held request) or async (POST /tasks)
    prompt: Mapped[str] = mapped_column(Text)
    aspect_ratio: Mapped[str] = mapped_column(String(16), default="Auto")
    model: Mapped[str | None] = mapped_column(String(64))  # None: the instance's default model
    image_size: Mapped[str | None] = mapped_column(String(8))
    reference_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), index=True
    )
    instance_name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    image_count: Mapped[int] = mapped_column(Integer, default=0)
    # Where its kept images are: a file's path, or `database` (a `kept_results` row); None once expired.
    result_path: Mapped[str | None] = mapped_column(String(512))
    timings: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Which API face took it (generate, openai, gemini, tasks), and what the client asked of its output.
    api: Mapped[str | None] = mapped_column(String(16))
    output_format: Mapped[str | None] = mapped_column(String(8))
    # Content hashes (sha256, hex) of the images it answered with, in order: a client can check what it got.
    image_hashes: Mapped[list[str] | None] = mapped_column(JSON)
    # Idempotency-Key and a hash of the request body: the same key with another body is a conflict.
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # A queued asynchronous task's inputs, kept so another gateway can pick it up: a file's path, or `database`
    # (a `task_inputs` row, the default on Postgres).
    request_path: Mapped[str | None] = mapped_column(String(512))
    # The gateway (its origin) whose queue holds it; a live one takes it over when that one stops beating.
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    # Webhook: where the result goes (sealed: such URLs often carry the receiver's credential), and every delivery
    # attempt (time, status, error).
    callback_url: Mapped[str | None] = mapped_column(SealedText)
    callback_attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)


class KeptResult(Base):
    """A task's images while they are kept (GATEWAY_RESULT_STORE=database, the default on Postgres): every gateway
    sharing the database serves them. Base64 as the instance sent them, in order; gone after `expires_at`."""

    __tablename__ = "kept_results"

    task_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # no foreign key: retention deletes both
    images_b64: Mapped[list[str]] = mapped_column(JSON)
    text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class TaskInput(Base):
    """A queued asynchronous task's inputs (its request and meta as JSON) while it waits, in the database so that
    any gateway sharing it resumes the task; removed when the task ends."""

    __tablename__ = "task_inputs"

    task_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # no foreign key: retention deletes both
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GatewayBeat(Base):
    """A gateway's heartbeat: a row per running gateway (its origin), removed when it stops cleanly. One that has
    not beaten for GATEWAY_HEARTBEAT_TIMEOUT is dead: a live one takes its queued tasks and webhooks."""

    __tablename__ = "gateway_beats"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """A webhook not yet delivered (the outbox): written when its task ends, delivered by its owner gateway with
    retries; gone once delivered or out of attempts. A live gateway takes a dead one's rows."""

    __tablename__ = "webhook_outbox"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID] = mapped_column(index=True)
    url: Mapped[str] = mapped_column(SealedText)  # sealed like the task's callback_url: it may carry a credential
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # each attempt so far
    next_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    owner: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FleetMarker(Base):
    """One-off facts the gateway must remember, e.g. that a legacy session file was already migrated."""

    __tablename__ = "fleet_markers"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelBlock(Base):
    """A model this instance's account may not be asked for now, and why (`gateway.accounts.policy.BlockKind`):
    the page refused it (until a new session or restart), its allowance or cap is spent (until midnight
    Pacific), or it was rate-limited (a doubling pause; `strikes` counts them until a success)."""

    __tablename__ = "model_blocks"

    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="unavailable", server_default="unavailable")
    until: Mapped[datetime | None]
    strikes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AccountUsage(Base):
    """The account ledger: what one instance's account did with one model on one Pacific day."""

    __tablename__ = "account_usage"

    instance_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    made: Mapped[int] = mapped_column(Integer, default=0)  # successful generations
    failed: Mapped[int] = mapped_column(Integer, default=0)  # attempts that failed, quota answers aside
    quota_answers: Mapped[int] = mapped_column(Integer, default=0)
    first_quota_at: Mapped[datetime | None]
    # `made` when the first quota answer came: the day's allowance as Google measured it (learned capacity).
    made_at_quota: Mapped[int | None] = mapped_column(Integer)


class FleetSetting(Base):
    """Fleet-wide settings an operator changes at run time (the selectors override), one row per key."""

    __tablename__ = "fleet_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CanaryRun(Base):
    """One canary run of a model (gateway/canary.py): a small generation (`kind` generation, spends an image) or a
    page check (`check`, free). `ok` is None when it was skipped (no idle account, no allowance left)."""

    __tablename__ = "canary_runs"
    __table_args__ = (Index("ix_canary_runs_model_kind_started_at", "model", "kind", "started_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)
    model: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # generation | check
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    step: Mapped[str | None] = mapped_column(String(64))  # what failed: the instance's error code, missing roles...
    message: Mapped[str] = mapped_column(Text, default="")
    timings: Mapped[dict[str, Any] | None]
    instance_name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    task_id: Mapped[uuid.UUID | None]  # the generation's task (api "canary")


def lease_active(now: datetime) -> ColumnElement[bool]:
    """The gateway holds an unexpired lease on the instance."""
    return and_(Instance.lease_task_id.is_not(None), Instance.lease_expires_at > now)


def cooling_down(now: datetime) -> ColumnElement[bool]:
    return and_(Instance.cooldown_until.is_not(None), Instance.cooldown_until > now)


def is_busy(now: datetime) -> ColumnElement[bool]:
    return or_(Instance.busy.is_(True), lease_active(now))


def can_take_task(now: Any) -> ColumnElement[bool]:
    """The one definition of an instance that can take a task once free: running and meant to be, with an
    address, logged in, its page reaching AI Studio. The lease, the stats and the panel use it. A pacing rest
    (`cooldown_until`) is a short wait, not an inability: the lease skips it, the pool still counts it."""
    return and_(
        Instance.status == Status.RUNNING,
        Instance.target == Target.RUNNING,
        Instance.endpoint.is_not(None),
        Instance.login_state == LoginState.LOGGED_IN,
        Instance.aistudio_reach.not_in(OUT_OF_REACH),
    )


def block_in_force(now: Any) -> ColumnElement[bool]:
    """A timed block (quota, cap, rate limit) holds until its end. An open-ended one (the page refused the model)
    holds until a new session, or a restart after it (the reconciler stamps `started_at` whenever an instance
    becomes ready): a block older than the last start is void."""
    open_ended = and_(
        ModelBlock.until.is_(None), or_(Instance.started_at.is_(None), ModelBlock.created_at >= Instance.started_at)
    )
    return or_(ModelBlock.until > now, open_ended)


def session_expiring(expires_at: datetime | None, now: datetime, warn_before: float) -> bool:
    """The Google auth cookies run out within the warning window (or already have)."""
    return expires_at is not None and expires_at - now <= timedelta(seconds=warn_before)


def is_available(now: datetime) -> ColumnElement[bool]:
    """Can take a task and is free now (the instance's last /status and the gateway's lease both say so)."""
    return and_(can_take_task(now), ~is_busy(now), ~cooling_down(now))


def new_event(instance_id: uuid.UUID, name: str, kind: EventKind, message: str) -> InstanceEvent:
    return InstanceEvent(instance_id=instance_id, instance_name=name, kind=kind, message=message, created_at=utcnow())

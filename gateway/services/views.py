"""What the services hand to the API and the panel: msgspec Structs in the old system's field names."""

from __future__ import annotations

from datetime import datetime

import msgspec


class InstanceView(msgspec.Struct, kw_only=True):
    # The old system's fields first: clients in the field read these.
    instance_id: str
    name: str
    status: str
    created_at: datetime
    last_used: datetime | None
    error_message: str | None
    is_busy: bool
    # Added by the fleet.
    target: str
    # The login state; `unreachable` while the page cannot load AI Studio (kept for the old clients, derived
    # from `aistudio_reach`, which says it on its own).
    login_state: str
    available: bool
    cooldown_until: datetime | None
    started_at: datetime | None
    tasks_done: int
    tasks_failed: int
    restart_count: int
    next_restart_at: datetime | None
    handle: str | None
    # Models its account said it cannot use: no task for them goes here until a restart or a new session.
    unavailable_models: list[ModelBlockView] = msgspec.field(default_factory=list)
    # Egress proxy, masked: the instance's own (None: the fleet default applies) and the one its browser uses.
    proxy: str | None = None
    effective_proxy: str | None = None
    # Time zone and locale of its browser: its own (None: the fleet default) and the ones it starts with.
    timezone: str | None = None
    locale: str | None = None
    effective_timezone: str | None = None
    effective_locale: str | None = None
    # Whether the instance's page can load AI Studio at all (unknown, reachable, unreachable), apart from the login.
    aistudio_reach: str = "unknown"
    # Why the page cannot reach AI Studio (aistudio_reach `unreachable`), in the browser's words.
    page_error: str | None = None
    # While a start waits for its container (being scheduled, pulling the image, the pod's Events): what it waits for.
    start_progress: str | None = None
    # Session health: the last check of the login on the page, since when it is signed in, the last save of
    # the login to the volume, when its Google auth cookies expire (and whether that is soon), the last success.
    login_checked_at: datetime | None = None
    signed_in_since: datetime | None = None
    session_saved_at: datetime | None = None
    session_expires_at: datetime | None = None
    session_expiring: bool = False
    last_success_at: datetime | None = None
    # The id it had in the old multi-instance system, when `aistudio-fleet migrate` created it.
    legacy_id: str | None = None
    # Its account's own pacing: seconds between its tasks and daily cap per model (None: the fleet's).
    pace_seconds: float | None = None
    daily_cap: int | None = None


class ModelBlockView(msgspec.Struct, kw_only=True):
    """A model the account may not be asked for now: `kind` says why (unavailable, quota, cap, rate_limit)."""

    model: str
    reason: str
    since: datetime
    kind: str = "unavailable"
    until: datetime | None = None  # None: until a new session or restart


class EngineView(msgspec.Struct, kw_only=True):
    name: str
    ok: bool | None
    reason: str
    since: datetime
    egress_fence: str = "off"  # on, off, unavailable: instances fenced from private addresses (docker)
    warnings: list[str] = msgspec.field(default_factory=list)  # about the instances' isolation, for the operator


class StatsView(msgspec.Struct, kw_only=True):
    total_instances: int
    running_instances: int
    available_instances: int
    busy_instances: int
    concurrency_capacity: int
    starting_instances: int
    stopped_instances: int
    error_instances: int
    needs_login_instances: int
    cooling_down_instances: int
    active_tasks: int
    queued_tasks: int
    engine: EngineView


class EventView(msgspec.Struct, kw_only=True):
    id: int
    instance_id: str
    instance_name: str
    kind: str
    message: str
    created_at: datetime

"""Request and response bodies of the management API, in the old system's envelopes."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import msgspec

from gateway.accounts.usage import AccountUsageView, ModelUsageView, PoolModelView
from gateway.services.views import EventView, InstanceView, StatsView


class CreateInstanceIn(msgspec.Struct, forbid_unknown_fields=False):
    name: str
    proxy: str | None = None  # the browser's own egress proxy; none: the fleet default
    timezone: str | None = None  # IANA name (Asia/Tokyo), to match the proxy's exit; none: the fleet default
    locale: str | None = None  # BCP 47 tag (ja-JP); none: the fleet default
    # The old system's id of the instance this one replaces (`aistudio-fleet migrate`): 409 when already migrated.
    legacy_id: str | None = None
    # A storage state or cookie list, kept with the row and imported once the instance is first ready.
    session: list[Any] | dict[str, Any] | None = None


class UpdateInstanceIn(msgspec.Struct, forbid_unknown_fields=False):
    # Each field given changes; "" or null: back to the fleet default; takes effect at the next start.
    proxy: str | None | msgspec.UnsetType = msgspec.UNSET
    timezone: str | None | msgspec.UnsetType = msgspec.UNSET
    locale: str | None | msgspec.UnsetType = msgspec.UNSET
    # Its account's pacing, from its next task; null: the fleet's. Out of range: 422 naming the field.
    pace_seconds: Annotated[
        float | None | msgspec.UnsetType,
        msgspec.Meta(description="Seconds between this account's tasks, 0 to 3600; null: GATEWAY_PACE_PAUSE"),
    ] = msgspec.UNSET
    daily_cap: Annotated[
        int | None | msgspec.UnsetType,
        msgspec.Meta(description="Images per model a day on this account, 1 to 100000; null: GATEWAY_PACE_DAILY_CAP"),
    ] = msgspec.UNSET

    def regional(self) -> dict[str, str | None]:
        """The time zone and locale fields given (absent ones stay as they are)."""
        return {name: value for name in ("timezone", "locale") if (value := getattr(self, name)) is not msgspec.UNSET}

    def pacing(self) -> dict[str, float | int | None]:
        """The pacing fields given (absent ones stay as they are)."""
        return {name: value for name in ("pace_seconds", "daily_cap") if (value := getattr(self, name)) is not msgspec.UNSET}


class InstanceListOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instances: list[InstanceView]
    concurrency_count: int
    total_count: int


class CreateInstanceOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    message: str
    instance: InstanceView


class InstanceOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance: InstanceView


class InstanceActionOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    changed: bool  # false when the instance already was where it was asked to go
    instance: InstanceView


class DeleteInstanceOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    message: str


class StatsOut(msgspec.Struct, kw_only=True):
    success: bool = True
    stats: StatsView


class EventsOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    events: list[EventView]


class LogsOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    lines: list[str]


class SessionImportOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    cookies: int | None
    login_state: str | None
    pending: bool = False  # the instance is stopped: it gets the session when it is next ready


class ProxyTestIn(msgspec.Struct, forbid_unknown_fields=False):
    """One of: `proxy` (a URL, before it is saved), `instance_id` (its proxy, or the default it uses); neither:
    the fleet default."""

    proxy: str | None = None
    instance_id: str | None = None


class AccountsUsageOut(msgspec.Struct, kw_only=True):
    """Every account's day per model, and the pool's totals per model."""

    success: bool = True
    now: datetime
    day: date  # today in Pacific time
    next_reset: datetime  # the next midnight Pacific
    usage_days: int
    models: list[str]
    accounts: list[AccountUsageView]
    pool: list[PoolModelView]


class InstanceUsageOut(msgspec.Struct, kw_only=True):
    """One account's day per model."""

    success: bool = True
    now: datetime
    day: date
    next_reset: datetime
    usage_days: int
    instance_id: str
    name: str
    pace_seconds: float | None
    daily_cap: int | None
    models: list[ModelUsageView]

"""Request and response bodies of the management API, in the old system's envelopes."""

from __future__ import annotations

from typing import Any

import msgspec

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

    def regional(self) -> dict[str, str | None]:
        """The time zone and locale fields given (absent ones stay as they are)."""
        return {name: value for name in ("timezone", "locale") if (value := getattr(self, name)) is not msgspec.UNSET}


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

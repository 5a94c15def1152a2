"""Revisions of the fleet-wide overrides (selectors, catalogue): one counter per override in `fleet_settings`,
shared by every gateway on the database, raised in the transaction that changes the override.

A change's revision travels with it (to the instances for the selectors, into each process's model check for the
catalogue), and a receiver applies only a revision newer than the one it holds: a delivery that crossed a newer
one between two replicas changes nothing.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.models import FleetSetting
from gateway.db.types import utcnow

COUNTER_KEY = "override_revisions"


async def next_revision(session: AsyncSession, override: str) -> int:
    """The override's counter plus one, kept; call inside the transaction that stores the change (the row is locked
    until it commits, so two replicas never hand out one revision twice)."""
    row = await _locked_counter(session)
    revision = int(row.value.get(override, 0)) + 1
    row.value = {**row.value, override: revision}  # a new dict: the JSON column sees the change
    row.updated_at = utcnow()
    return revision


async def current_revision(session: AsyncSession, override: str) -> int | None:
    """The revision of the override's last change; None before any change. Read it before the override itself: a
    change committed between the two reads then pairs an older revision with the newer document, never the reverse."""
    row = await session.get(FleetSetting, COUNTER_KEY, populate_existing=True)
    value = row.value.get(override) if row is not None else None
    return int(value) if value is not None else None


async def _locked_counter(session: AsyncSession) -> FleetSetting:
    row = await session.get(FleetSetting, COUNTER_KEY, with_for_update=True)
    if row is not None:
        return row
    try:
        async with session.begin_nested():  # another replica may create the row at the same moment
            session.add(FleetSetting(key=COUNTER_KEY, value={}, updated_at=utcnow()))
    except IntegrityError:
        pass
    row = await session.get(FleetSetting, COUNTER_KEY, with_for_update=True, populate_existing=True)
    assert row is not None
    return row

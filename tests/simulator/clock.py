"""The simulator's clock (real UTC time plus an offset tests can move) and the Pacific day quotas live by."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

# AI Studio's daily allowances reset at midnight Pacific time; zoneinfo knows its daylight-saving dates.
PACIFIC = ZoneInfo("America/Los_Angeles")
# Far enough for any test, near enough that dates never overflow datetime's range.
MAX_OFFSET = timedelta(days=100 * 365)


def parse_instant(text: Any) -> datetime:
    """An ISO 8601 instant with its zone ("Z" or an offset), in UTC; TypeError or ValueError for anything else."""
    if not isinstance(text, str):
        raise TypeError(f"'now' must be an ISO 8601 string with a zone, not {text!r}")
    try:
        instant = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"'now' is not an ISO 8601 date-time: {text!r}") from exc
    if instant.tzinfo is None or instant.utcoffset() is None:
        # a naive time could mean any zone, and the Pacific day depends on which
        raise ValueError(f"'now' needs a zone (e.g. 'Z' or '+00:00'): {text!r}")
    return instant.astimezone(UTC)


def parse_seconds(value: Any) -> float:
    """A finite number of seconds (JSON booleans are not numbers here); TypeError or ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"'advance_s' must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or abs(value) > MAX_OFFSET.total_seconds():
        raise ValueError(f"'advance_s' must be finite and within 100 years, not {value!r}")
    return float(value)


def pacific_day(instant: datetime) -> date:
    return instant.astimezone(PACIFIC).date()


def next_reset(instant: datetime) -> datetime:
    """The next midnight Pacific after `instant`, in UTC (08:00 in winter, 07:00 in summer)."""
    following = pacific_day(instant) + timedelta(days=1)
    return datetime.combine(following, time(0), tzinfo=PACIFIC).astimezone(UTC)


def iso_utc(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SimClock:
    """Real UTC time plus an offset, so tests can cross a Pacific midnight without waiting for one."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self._set_offset(self.offset + timedelta(seconds=seconds))

    def set(self, instant: datetime) -> None:
        # the clock keeps running from `instant` at real speed
        self._set_offset(instant - datetime.now(UTC))

    def _set_offset(self, offset: timedelta) -> None:
        if abs(offset) > MAX_OFFSET:
            raise ValueError("the simulator clock stays within 100 years of real time")
        self.offset = offset

    def describe(self) -> dict[str, str]:
        now = self.now()
        return {"now": iso_utc(now), "pacific_day": pacific_day(now).isoformat(), "next_reset": iso_utc(next_reset(now))}

"""The day Google's image allowances count in: midnight to midnight in Pacific time, daylight saving included."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")


def pacific_day(now: datetime) -> date:
    """The Pacific calendar day `now` (aware) falls on: the key of a day's usage."""
    return now.astimezone(PACIFIC).date()


def day_start(day: date) -> datetime:
    """Midnight Pacific at the start of `day`, in UTC (07:00 or 08:00 UTC; midnight is never skipped nor doubled)."""
    return datetime.combine(day, time(0), PACIFIC).astimezone(UTC)


def next_reset(now: datetime) -> datetime:
    """The next midnight Pacific after `now`, in UTC: when a spent allowance comes back."""
    return day_start(pacific_day(now) + timedelta(days=1))

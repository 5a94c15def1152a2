"""Session health from an instance's /status: what to store, what to warn about, when to check the login.

Pure functions of the stored row and the instance's answer, like `decide`; the loop performs them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gateway.db.models import EventKind, LoginState
from gateway.db.models import session_expiring as expiring
from gateway.reconciler.decide import InstanceRow
from gateway.instance_client import InstanceStatus

# States in which the account is known to be signed out: the session's age starts again at the next login.
SIGNED_OUT = (LoginState.NEEDS_LOGIN, LoginState.SIGNIN_REFUSED)


def parse_time(value: str | None) -> datetime | None:
    """An instance's ISO 8601 time; None when missing or unreadable (an old instance, a bad clock)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def health_changes(
    row: InstanceRow, status: InstanceStatus, login_state: str, now: datetime, warn_before: float
) -> tuple[dict[str, Any], list[tuple[EventKind, str]]]:
    """The session columns that changed, and a SESSION_EXPIRING event when the session enters the window."""
    reported = {
        "login_checked_at": parse_time(status.login_checked_at),
        "session_saved_at": parse_time(status.session_saved_at),
        "session_expires_at": parse_time(status.session_expires_at),
    }
    values = {column: value for column, value in reported.items() if value != getattr(row, column)}
    if login_state == LoginState.LOGGED_IN and row.signed_in_since is None:
        values["signed_in_since"] = now
    elif login_state in SIGNED_OUT and row.signed_in_since is not None:
        values["signed_in_since"] = None
    events: list[tuple[EventKind, str]] = []
    new_expiry = reported["session_expires_at"]
    if expiring(new_expiry, now, warn_before) and not expiring(row.session_expires_at, now, warn_before):
        assert new_expiry is not None
        events.append((EventKind.SESSION_EXPIRING, f"Google sign-in cookies expire at {new_expiry.isoformat(timespec='minutes')}"))
    return values, events


def login_check_due(status: InstanceStatus, now: datetime, interval: float) -> bool:
    """An idle, ready instance whose page has not told its login state for `interval` seconds."""
    if interval <= 0 or not status.ready or status.busy:
        return False
    checked = parse_time(status.login_checked_at)
    return checked is None or now - checked >= timedelta(seconds=interval)

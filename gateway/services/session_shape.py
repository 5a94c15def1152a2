"""What the gateway itself can tell about a session file before any instance sees it: its shape, its cookie
count and when Google's sign-in cookies in it expire.

The instance owns the real parsing (instance/session_store.py); the gateway shares no code with it, so this
mirrors only its acceptance rules, for sessions that wait in the database until an instance is ready.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Google's sign-in cookies (as instance/session_store.py names them): a session whose copies are all expired is dead.
AUTH_COOKIE_NAMES = frozenset({"SID", "HSID", "SSID", "APISID", "SAPISID", "__Secure-1PSID", "__Secure-3PSID"})


class SessionShapeError(ValueError):
    """The content is in none of the session shapes an instance reads; the message says what is wrong."""


@dataclass(frozen=True)
class SessionSummary:
    cookies: int
    auth_cookies: int
    auth_expires_at: datetime | None  # the first of Google's sign-in cookies to expire; None: none expires
    expired: bool  # it has sign-in cookies and every one of them has expired

    def to_json(self) -> dict[str, Any]:
        expires = self.auth_expires_at.isoformat() if self.auth_expires_at else None
        return {"cookies": self.cookies, "auth_cookies": self.auth_cookies, "auth_expires_at": expires, "expired": self.expired}


def parse_session(content: bytes) -> Any:
    """The JSON in a session file, or SessionShapeError."""
    try:
        return json.loads(content.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SessionShapeError("not UTF-8 text") from None
    except ValueError as exc:
        raise SessionShapeError(f"not JSON ({exc.msg}, line {exc.lineno})") from None


def cookies_of(payload: Any, *, cookie_list_only: bool = False) -> list[dict[str, Any]]:
    """The cookies of a storage state or a bare cookie list (or only the latter), checked as the instance does."""
    if isinstance(payload, list):
        cookies = payload
    elif isinstance(payload, dict) and isinstance(payload.get("cookies"), list) and not cookie_list_only:
        cookies = payload["cookies"]
        origins = payload.get("origins") or []
        if not isinstance(origins, list) or not all(isinstance(o, dict) and "origin" in o for o in origins):
            raise SessionShapeError("'origins' must be a list of objects with an 'origin'")
    elif cookie_list_only:
        raise SessionShapeError("expected a list of cookies (what Playwright's context.cookies() writes)")
    else:
        raise SessionShapeError("expected a storage-state object with 'cookies', or a list of cookies")
    for index, cookie in enumerate(cookies):
        _check_cookie(cookie, index)
    return cookies


def summarize(cookies: list[dict[str, Any]], now: datetime | None = None) -> SessionSummary:
    now_ts = (now or datetime.now(UTC)).timestamp()
    stamps = [_expires(c) for c in cookies if c.get("name") in AUTH_COOKIE_NAMES]
    expiring = [s for s in stamps if s > 0]
    first = datetime.fromtimestamp(min(expiring), UTC) if expiring else None
    expired = bool(stamps) and all(0 < s < now_ts for s in stamps)
    return SessionSummary(cookies=len(cookies), auth_cookies=len(stamps), auth_expires_at=first, expired=expired)


def check_session(content: bytes, *, cookie_list_only: bool = False) -> SessionSummary:
    """Parses and checks a session file; SessionShapeError when an instance would refuse it."""
    return summarize(cookies_of(parse_session(content), cookie_list_only=cookie_list_only))


def _check_cookie(cookie: Any, index: int) -> None:
    if not isinstance(cookie, dict):
        raise SessionShapeError(f"cookie #{index} is not an object")
    name, value, domain = cookie.get("name"), cookie.get("value"), cookie.get("domain")
    if not isinstance(name, str) or not name or not isinstance(value, str):
        raise SessionShapeError(f"cookie #{index} needs a string 'name' and 'value'")
    if not isinstance(domain, str) or not domain:
        raise SessionShapeError(f"cookie #{index} ({name}) has no 'domain'")
    try:
        _expires(cookie)
    except (TypeError, ValueError):
        raise SessionShapeError(f"cookie #{index} ({name}) has an unreadable expiry") from None


def _expires(cookie: dict[str, Any]) -> float:
    """Epoch seconds; -1 for a cookie that lasts the browser session (as Playwright writes it)."""
    raw = cookie.get("expires", cookie.get("expirationDate"))
    if cookie.get("session") is True or raw is None:
        return -1.0
    if isinstance(raw, bool):
        raise ValueError("boolean expiry")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError("expiry is not finite")
    return value

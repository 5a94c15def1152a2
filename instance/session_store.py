"""Login state on the volume: Playwright storage state, read at start, written atomically.

Imports accept three shapes: Playwright storage state, a bare cookie list, and browser-extension
cookie exports (EditThisCookie / Cookie-Editor: `expirationDate`, `hostOnly`, `sameSite: "no_restriction"`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Google's sign-in cookies; a session whose copies of these are all expired is dead (AISTUDIO.md).
AUTH_COOKIE_NAMES = frozenset({"SID", "HSID", "SSID", "APISID", "SAPISID", "__Secure-1PSID", "__Secure-3PSID"})
# Renewed while a page is open (__Secure-1PSIDTS about every 10 minutes, the SIDCC family on many requests); a copy
# older than the browser's newest renewal may be refused, so a change to any of these is saved at once.
RENEWED_SUFFIXES = ("SIDTS", "SIDCC")


def is_login_cookie(name: str) -> bool:
    return name in AUTH_COOKIE_NAMES or name.endswith(RENEWED_SUFFIXES)


def renews_login(set_cookie: str) -> bool:
    """A Set-Cookie header (lines joined by newlines) that gives a login cookie a new, live value: the jar is a
    working login now, worth writing at once (a sign-out, which empties or expires them, is not)."""
    for line in set_cookie.splitlines():
        pair, _, attributes = line.partition(";")
        name, _, value = pair.strip().partition("=")
        lowered = attributes.lower().replace(" ", "")
        if is_login_cookie(name) and value and "max-age=0" not in lowered and "max-age=-" not in lowered:
            return True
    return False


def login_fingerprint(cookies: list[dict[str, Any]]) -> frozenset[tuple[str, str, str, str]]:
    """What of the cookie jar is the login: a change here must reach the volume."""
    return frozenset(
        (c.get("domain", ""), c.get("path", "/"), c.get("name", ""), c.get("value", ""))
        for c in cookies if is_login_cookie(c.get("name", ""))
    )

_SAME_SITE = {
    "no_restriction": "None",
    "none": "None",
    "lax": "Lax",
    "strict": "Strict",
    "unspecified": "Lax",
}

EMPTY_STATE: dict[str, Any] = {"cookies": [], "origins": []}


class SessionFormatError(ValueError):
    """The uploaded session is in none of the shapes we read."""


def _normalize_cookie(raw: Any, index: int) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SessionFormatError(f"cookie #{index} is not an object")
    name, value = raw.get("name"), raw.get("value")
    if not isinstance(name, str) or not name or not isinstance(value, str):
        raise SessionFormatError(f"cookie #{index} needs a string 'name' and 'value'")
    domain = raw.get("domain")
    if not isinstance(domain, str) or not domain:
        raise SessionFormatError(f"cookie #{index} ({name}) has no 'domain'")
    # Extension exports mark host-only cookies; Playwright wants them without a leading dot.
    if raw.get("hostOnly") is True:
        domain = domain.lstrip(".")
    expires = raw.get("expires", raw.get("expirationDate"))
    if raw.get("session") is True or expires is None:
        expires = -1
    try:
        expires = float(expires)
    except (TypeError, ValueError) as exc:
        raise SessionFormatError(f"cookie #{index} ({name}) has an unreadable expiry") from exc
    secure = bool(raw.get("secure", False))
    same_site = _SAME_SITE.get(str(raw.get("sameSite", "Lax")).lower(), "Lax")
    if same_site == "None" and not secure:
        same_site = "Lax"  # Chromium drops SameSite=None cookies that are not Secure
    return {
        "name": name,
        "value": value,
        "domain": domain,
        "path": raw.get("path") or "/",
        "expires": expires,
        "httpOnly": bool(raw.get("httpOnly", False)),
        "secure": secure,
        "sameSite": same_site,
    }


def normalize_session(payload: Any) -> dict[str, Any]:
    """Any accepted shape → Playwright storage state, or SessionFormatError saying what is wrong."""
    if isinstance(payload, list):
        cookies, origins = payload, []
    elif isinstance(payload, dict) and isinstance(payload.get("cookies"), list):
        cookies, origins = payload["cookies"], payload.get("origins") or []
    else:
        raise SessionFormatError("expected a storage-state object with 'cookies', or a list of cookies")
    if not isinstance(origins, list) or not all(isinstance(o, dict) and "origin" in o for o in origins):
        raise SessionFormatError("'origins' must be a list of objects with an 'origin'")
    return {"cookies": [_normalize_cookie(c, i) for i, c in enumerate(cookies)], "origins": origins}


def auth_cookies_expired(state: dict[str, Any], now: float | None = None) -> bool:
    """True when the state carries Google auth cookies and every one of them has expired."""
    now = time.time() if now is None else now
    auth = [c for c in state.get("cookies", []) if c.get("name") in AUTH_COOKIE_NAMES]
    if not auth:
        return False
    return all(0 < float(c.get("expires", -1)) < now for c in auth)


def auth_cookies_expire_at(state: dict[str, Any]) -> float | None:
    """When the first of the Google auth cookies expires (epoch seconds); None without any that expire."""
    stamps = [
        float(c["expires"])
        for c in state.get("cookies", [])
        if c.get("name") in AUTH_COOKIE_NAMES and float(c.get("expires", -1)) > 0
    ]
    return min(stamps) if stamps else None


class SessionStore:
    """The storage-state file on the volume. Writes are atomic: temp file, fsync, rename."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved state; a corrupt or truncated file is moved aside and an empty state returned."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return dict(EMPTY_STATE)
        try:
            return normalize_session(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError, SessionFormatError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("session file %s unreadable (%s); moved to %s", self.path, exc, aside.name)
            return dict(EMPTY_STATE)

    def saved_at(self) -> float | None:
        """When the login was last written to the volume (epoch seconds), None when never."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    @property
    def previous_path(self) -> Path:
        return self.path.with_name(f"{self.path.stem}.previous{self.path.suffix}")

    def load_previous(self) -> dict[str, Any] | None:
        """The login an import replaced, or None when there is none (or it cannot be read)."""
        try:
            return normalize_session(json.loads(self.previous_path.read_bytes().decode("utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, SessionFormatError):
            return None

    def save(self, state: dict[str, Any], *, keep_previous: bool = False) -> None:
        """Written beside the file, synced, renamed over it, the folder synced: a crash leaves the old file or
        the new one, whole. `keep_previous`: the file it replaces becomes the previous login first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".storage_state.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(state, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            if keep_previous and self.path.exists():
                os.replace(self.path, self.previous_path)
            os.replace(tmp, self.path)
            _sync_folder(self.path.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _sync_folder(folder: Path) -> None:
    """The renames themselves reach the disk (a host crash right after a save keeps it)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

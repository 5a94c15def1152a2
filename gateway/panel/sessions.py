"""Panel sign-ins kept in the database, one `fleet_markers` row each: signing out deletes the row, so the cookie
stops working at once, on every gateway that shares the database, even if someone copied it.

The row's key holds a hash of the session's secret, never the secret itself: reading the database does not
sign anyone in. A session lasts `admin_session_hours` from its row's `created_at`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.models import FleetMarker
from gateway.db.types import utcnow

SESSION_MARKER_PREFIX = "panel-session:"


class PanelSessions:
    def __init__(self, sessions: Callable[[], async_sessionmaker[AsyncSession]], seconds: float) -> None:
        self._sessions = sessions  # looked up on use: the fleet opens after the app is built
        self.seconds = seconds

    async def open(self) -> str:
        """A new session; returns its secret, for the cookie."""
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        async with self._sessions().begin() as session:
            # Expired sign-ins go when a new one comes, so rows never pile up.
            await session.execute(
                delete(FleetMarker).where(
                    FleetMarker.key.startswith(SESSION_MARKER_PREFIX, autoescape=True),
                    FleetMarker.created_at < now - timedelta(seconds=self.seconds),
                )
            )
            expires = now + timedelta(seconds=self.seconds)
            session.add(FleetMarker(key=_key(secret), value=f"expires {expires.isoformat()}", created_at=now))
        return secret

    async def valid(self, secret: str) -> bool:
        async with self._sessions()() as session:
            marker = await session.get(FleetMarker, _key(secret))
        return marker is not None and marker.created_at > utcnow() - timedelta(seconds=self.seconds)

    async def close(self, secret: str) -> None:
        async with self._sessions().begin() as session:
            await session.execute(delete(FleetMarker).where(FleetMarker.key == _key(secret)))


def _key(secret: str) -> str:
    return SESSION_MARKER_PREFIX + hashlib.sha256(secret.encode()).hexdigest()

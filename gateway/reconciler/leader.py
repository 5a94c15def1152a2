"""One reconciler per database: gateways sharing a Postgres elect one by an advisory lock.

The lock lives on a dedicated connection in autocommit (no transaction left open); it is lost, and taken over
by another gateway, when that connection or its process dies. SQLite means one process, so it always leads.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# An arbitrary constant shared by every gateway: "AISF" in ASCII.
LOCK_KEY = 0x41495346
CANARY_LOCK_KEY = 0x41495343  # "AISC": the canary's own election (gateway/canary.py)


class LeaderLock:
    def __init__(self, engine: AsyncEngine, *, key: int = LOCK_KEY, what: str = "the reconciler") -> None:
        self._engine = engine
        self._key = key
        self._what = what
        self._connection: AsyncConnection | None = None
        self._exclusive = engine.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        return not self._exclusive or self._connection is not None

    async def acquire(self) -> bool:
        """True while this gateway leads; cheap to call before every pass."""
        if not self._exclusive:
            return True
        try:
            if self._connection is not None:
                await self._connection.execute(text("SELECT 1"))  # still alive, so still held
                return True
            connection = await self._engine.connect()
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            got = await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})
        except SQLAlchemyError as exc:
            log.warning("%s leadership unknown (database error): %s", self._what, exc)
            await self.release()
            return False
        if got:
            self._connection = connection
            log.info("this gateway now runs %s", self._what)
            return True
        await connection.close()
        return False

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
        except SQLAlchemyError:
            pass  # a dead connection has released it already
        finally:
            try:
                await connection.close()
            except SQLAlchemyError:
                pass

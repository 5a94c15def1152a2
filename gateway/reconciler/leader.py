"""One reconciler per database: gateways sharing a Postgres elect one by an advisory lock.

The lock lives on a dedicated connection in autocommit (no transaction left open); it is lost, and taken over
by another gateway, when that connection or its process dies. On a SQLite file the lock is an flock on a file beside
it, so two gateways started on one file (a mistake, or tests' replicas) still run one reconciler; in memory, one
process leads alone.
"""

from __future__ import annotations

import fcntl
import logging
import os

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
        self._lock_path = _sqlite_lock_path(engine, key)
        self._lock_fd: int | None = None

    @property
    def held(self) -> bool:
        if self._lock_path is not None:
            return self._lock_fd is not None
        return not self._exclusive or self._connection is not None

    async def acquire(self) -> bool:
        """True while this gateway leads; cheap to call before every pass."""
        if self._lock_path is not None:
            return self._acquire_file_lock()
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

    def _acquire_file_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("%s leadership unknown (lock file %s: %s)", self._what, self._lock_path, exc.strerror)
            return False
        try:
            # flock, not fcntl's record locks: those are per process, and would let two gateways in one process both lead
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        log.info("this gateway now runs %s", self._what)
        return True

    async def release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock
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


def _sqlite_lock_path(engine: AsyncEngine, key: int) -> str | None:
    """The lock file beside a SQLite database file; None for Postgres and for a database in memory."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}.leader-{key:08x}.lock"

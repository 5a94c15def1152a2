"""When the database cannot be reached: telling that apart from a bug, and writes kept until it is back.

A Postgres restart, a dropped connection or a server that is still starting fails every statement for a few
seconds; what the gateway meant to write then (an instance's release, a task's end, a status move) is kept
in memory, in order, and written again with backoff until it lands, instead of being lost.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

try:  # asyncpg raises these itself while connecting (SQLAlchemy wraps only errors from open connections)
    from asyncpg.exceptions import (
        AdminShutdownError,
        CannotConnectNowError,
        PostgresConnectionError,
        TooManyConnectionsError,
    )

    _ASYNCPG: tuple[type[BaseException], ...] = (
        AdminShutdownError, CannotConnectNowError, PostgresConnectionError, TooManyConnectionsError,
    )
except ImportError:  # pragma: no cover - SQLite-only installs
    _ASYNCPG = ()


def database_unreachable(exc: BaseException) -> bool:
    """True for a connection that failed or broke (server down, restarting, network), which a later try may
    get past; False for what no retry mends (a constraint, bad data, a bug)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (DatabaseUnreachable, OperationalError, InterfaceError)):
        return True
    # The driver's own error may sit under SQLAlchemy's (`orig`) and under its adapter (`__cause__`).
    seen: list[BaseException] = []
    found: BaseException | None = exc
    while found is not None and len(seen) < 6 and found not in seen:
        seen.append(found)
        if isinstance(found, _ASYNCPG) or _network(found) or _outage_state(found):
            return True
        found = getattr(found, "orig", None) or found.__cause__
    return False


def _outage_state(exc: BaseException) -> bool:
    """SQLSTATE class 08 (connection exception), 57P01-57P03 (shut down, crashed, starting), 53300 (too many)."""
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(state, str) and (state.startswith("08") or state in ("57P01", "57P02", "57P03", "53300"))


def _network(exc: BaseException) -> bool:
    """A socket that could not connect or broke; not any OSError (a full disk is no outage of the database)."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    if isinstance(exc, OSError):
        # asyncio's connect raises a bare OSError when every address of a name failed
        return exc.errno in _NETWORK_ERRNOS or (exc.errno is None and "Multiple exceptions" in str(exc))
    return False


_NETWORK_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EPIPE}


class DatabaseUnreachable(Exception):
    """Raised where a step needs the database and earlier writes are still waiting for it."""


Write = Callable[[], Awaitable[None]]


@dataclass(eq=False)
class _Pending:
    what: str
    write: Write
    since: float = field(default_factory=time.monotonic)
    tries: int = 1


class Backlog:
    """Writes that failed because the database could not be reached, kept in order and retried with backoff
    (`first_delay`, doubling up to `max_delay`) until they land. A write that fails for another reason is
    not kept: it raises at once, or, once kept, is logged and dropped (a retry would never land)."""

    def __init__(self, name: str, *, first_delay: float = 0.2, max_delay: float = 2.0) -> None:
        self._name = name
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._pending: deque[_Pending] = deque()
        self._order = asyncio.Lock()  # one flush at a time, so writes land in the order they were made
        self._retrier: asyncio.Task[None] | None = None
        self.landed_late = 0  # writes that landed after waiting here (tests and metrics read it)

    def __len__(self) -> int:
        return len(self._pending)

    async def write(self, what: str, write: Write) -> bool:
        """Runs `write` now, after any earlier write still waiting; keeps it for later when the database
        cannot be reached (False). Raises only what a retry would not mend."""
        if self._pending:
            self._pending.append(_Pending(what, write))
            return await self.flush()
        try:
            await write()
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            self._keep(_Pending(what, write), exc)
            return False
        return True

    async def flush(self) -> bool:
        """Tries the waiting writes once, in order; True when none is left."""
        async with self._order:
            while self._pending:
                item = self._pending[0]
                try:
                    await item.write()
                except Exception as exc:
                    if database_unreachable(exc):
                        item.tries += 1
                        return False
                    self._pending.popleft()
                    log.error("%s: dropped %s, which cannot be written: %s", self._name, item.what, exc)
                    continue
                self._pending.popleft()
                self.landed_late += 1
                waited = time.monotonic() - item.since
                log.info("%s: %s written after %.1f s and %d tries", self._name, item.what, waited, item.tries)
        return True

    async def ready(self) -> None:
        """Before a step that must come after the waiting writes: flush them, or raise DatabaseUnreachable."""
        if self._pending and not await self.flush():
            raise DatabaseUnreachable(f"{len(self._pending)} writes are waiting for the database")

    async def close(self) -> None:
        """One last try; what still cannot be written is said in the log (the next start recovers it)."""
        if self._retrier is not None:
            self._retrier.cancel()
            await asyncio.gather(self._retrier, return_exceptions=True)
            self._retrier = None
        if self._pending and not await self.flush():
            for item in self._pending:
                log.error("%s: %s was never written: the database stayed unreachable", self._name, item.what)
            self._pending.clear()

    def _keep(self, item: _Pending, exc: BaseException) -> None:
        if not self._pending:
            log.warning("%s: database unreachable (%s); keeping writes until it is back", self._name, _short(exc))
        self._pending.append(item)
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.create_task(self._retry(), name=f"{self._name}-retry")

    async def _retry(self) -> None:
        delay = self._first_delay
        while self._pending:
            await asyncio.sleep(delay)
            if await self.flush():
                return
            delay = min(delay * 2, self._max_delay)


def _short(exc: BaseException) -> str:
    """The first line of the error, without SQLAlchemy's statement and link."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]

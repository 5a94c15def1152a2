"""Wake-ups between gateway processes on one Postgres: LISTEN on a dedicated asyncpg connection.

Payloads are `<origin>:<kind>:<argument>`: `free` (an instance was released: waiters may lease it) and
`suspect:<instance id>` (a dispatcher could not reach it: the leading reconciler probes it now). A process
ignores its own. When the connection drops, the queue's poll keeps things moving until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url

from gateway.dispatcher.ledger import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

RECONNECT_DELAY = 2.0


class PoolListener:
    def __init__(
        self,
        database_url: str,
        origin: str,
        *,
        on_free: Callable[[], None],
        on_suspect: Callable[[uuid.UUID], None],
    ) -> None:
        self._url = make_url(database_url)
        self._origin = origin
        self._on_free = on_free
        self._on_suspect = on_suspect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dispatch-listen")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        import asyncpg

        while True:
            connection = None
            try:
                connection = await asyncpg.connect(
                    host=self._url.host,
                    port=self._url.port or 5432,
                    user=self._url.username,
                    password=self._url.password,
                    database=self._url.database,
                )
                lost = asyncio.Event()
                connection.add_termination_listener(lambda _connection: lost.set())
                await connection.add_listener(NOTIFY_CHANNEL, self._heard)
                self.connected.set()
                self._on_free()  # releases may have been missed while we were away
                await lost.wait()
                log.warning("lost the database notification connection; polling until it is back")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect means: poll, and try again
                log.warning("cannot listen for pool notifications (%s); polling meanwhile", exc)
            finally:
                self.connected.clear()
                if connection is not None and not connection.is_closed():
                    await asyncio.shield(connection.close(timeout=2))
            await asyncio.sleep(RECONNECT_DELAY)

    def _heard(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, _, rest = payload.partition(":")
        if origin == self._origin:
            return
        kind, _, argument = rest.partition(":")
        if kind == "free":
            self._on_free()
        elif kind == "suspect":
            try:
                self._on_suspect(uuid.UUID(argument))
            except ValueError:
                log.warning("ignoring a malformed pool notification %r", payload)

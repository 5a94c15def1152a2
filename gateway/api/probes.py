"""`/livez` and `/readyz` on the generation listener, for Kubernetes probes and Compose healthchecks.

`/livez` says only that the process answers (a restart would not mend a database outage). `/readyz` says the
gateway can do its work: the database answers a query and the engine a list of the fleet's instances. Like
`/health`, this port may be public: the answers name what is down, never the drivers' or the engine's words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy import text

from gateway.runtime.base import RuntimeUnavailable

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 3.0  # below the probes' own timeout in the manifests (5 s)
ENGINE_CHECK_EVERY = 5.0  # one list call per this per gateway, however often the probes come


class ProbesController(Controller):
    tags = ["health"]

    @get("/livez", operation_id="getLivez", summary="The process answers")
    async def livez(self) -> dict[str, str]:
        return {"status": "alive"}

    @get("/readyz", operation_id="getReadyz", summary="The database and the engine answer")
    async def readyz(self, state: State) -> Response[dict[str, Any]]:
        database, engine = await asyncio.gather(_database_ok(state), _engine_ok(state))
        body = {"status": "ready" if database and engine else "not ready",
                "database": "ok" if database else "unavailable", "engine": "ok" if engine else "unavailable"}
        return Response(body, status_code=200 if database and engine else 503)


async def _database_ok(state: State) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            async with state.fleet.db.connect() as connection:
                await connection.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; the log has the words
        log.warning("readyz: database: %s", str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        return False


async def _engine_ok(state: State) -> bool:
    """Asks the engine at most every ENGINE_CHECK_EVERY seconds; between asks, the last answer stands."""
    checked = state.get("readyz_engine")
    if checked is not None and time.monotonic() - checked[0] < ENGINE_CHECK_EVERY:
        return checked[1]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await state.fleet.runtime.list_managed()
        ok = True
    except RuntimeUnavailable as exc:
        log.warning("readyz: %s", exc)
        ok = False
    except Exception as exc:  # noqa: BLE001 - a timeout or an engine error: not ready
        log.warning("readyz: engine: %s", exc)
        ok = False
    state["readyz_engine"] = (time.monotonic(), ok)
    return ok

"""`GET /health` on the generation listener, in the old system's shape plus a few keys."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy.exc import SQLAlchemyError

from gateway.api.errors import DATABASE_RETRY_AFTER
from gateway.db.outage import DatabaseUnreachable, database_unreachable

log = logging.getLogger(__name__)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", operation_id="getHealth", summary="Pool health, as the old system reported it")
    async def health(self, state: State) -> Response[dict[str, Any]]:
        try:
            await state.fleet.dispatcher.settled()  # answers already sent are counted as done
            stats = await state.fleet.instances.stats()
        except (SQLAlchemyError, OSError, DatabaseUnreachable) as exc:
            down = database_unreachable(exc)
            log.error("health: database %s: %s", "unreachable" if down else "error", str(exc).splitlines()[0][:200])
            # The public port says what, never the driver's words (host names, ports, SQL).
            body = {"status": "unhealthy", "database": "unavailable" if down else "error",
                    "unwritten": state.fleet.dispatcher.unwritten}
            return Response(body, status_code=503, headers={"Retry-After": DATABASE_RETRY_AFTER})
        body = {
            "status": "healthy",
            "browser_instances": {
                "total": stats.total_instances,
                "running": stats.running_instances,
                "available": stats.available_instances,
                "busy": stats.busy_instances,
            },
            "concurrency_capacity": stats.concurrency_capacity,
            "active_tasks": stats.active_tasks,
            "queued_tasks": stats.queued_tasks,
            "cooling_down": stats.cooling_down_instances,
            "needs_login": stats.needs_login_instances,
            "database": "ok",
            "unwritten": state.fleet.dispatcher.unwritten,  # bookkeeping still waiting after an outage
            "engine": {"name": stats.engine.name, "ok": stats.engine.ok, "reason": _public_reason(stats.engine.reason),
                       "egress_fence": stats.engine.egress_fence},
        }
        return Response(body)


def _public_reason(reason: str) -> str:
    """The engine's own words (socket paths, daemon errors) stay on the admin API: this port may be public."""
    return "unavailable" if reason else ""

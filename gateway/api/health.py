"""`GET /health` on the generation listener, in the old system's shape plus a few keys."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, Response, get
from litestar.datastructures import State
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/", operation_id="getHealth", summary="Pool health, as the old system reported it")
    async def health(self, state: State) -> Response[dict[str, Any]]:
        try:
            await state.fleet.dispatcher.settled()  # answers already sent are counted as done
            stats = await state.fleet.instances.stats()
        except (SQLAlchemyError, OSError) as exc:
            log.error("health: database unavailable: %s", exc)
            return Response({"status": "unhealthy", "database": "error"}, status_code=503)
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
            "engine": {"name": stats.engine.name, "ok": stats.engine.ok, "reason": stats.engine.reason},
        }
        return Response(body)

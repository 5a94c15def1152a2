"""Prometheus `/metrics` on the generation listener: the dispatcher's counters plus the pool by status."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get

from gateway.api.keys import require_api_key
from gateway.db.models import Status
from gateway.dispatcher.metrics import CONTENT_TYPE


class MetricsController(Controller):
    path = "/metrics"
    tags = ["metrics"]
    guards = [require_api_key]  # scrapers send the key as a bearer token when keys are set

    @get("/", operation_id="getMetrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        fleet = request.app.state.fleet
        await fleet.dispatcher.settled()
        stats = await fleet.instances.stats()
        known = {
            Status.RUNNING: stats.running_instances,
            Status.STARTING: stats.starting_instances,
            Status.STOPPED: stats.stopped_instances,
            Status.ERROR: stats.error_instances,
        }
        by_status = {str(status): count for status, count in known.items()}
        by_status[Status.STOPPING] = max(0, stats.total_instances - sum(known.values()))
        fleet.dispatcher.metrics.set_instances(
            by_status,
            available=stats.available_instances,
            cooling_down=stats.cooling_down_instances,
            needs_login=stats.needs_login_instances,
        )
        views = await fleet.instances.list()
        expiries = {v.name: v.session_expires_at.timestamp() if v.session_expires_at else None for v in views}
        fleet.dispatcher.metrics.set_sessions(expiries, sum(v.session_expiring for v in views))
        return Response(fleet.dispatcher.metrics.exposition(), media_type=CONTENT_TYPE)

"""Prometheus `/metrics` on the generation listener: the dispatcher's counters, the pool by status, and the
account ledger per account and model (read from the database at each scrape, like the pool)."""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from litestar import Controller, Request, Response, get
from prometheus_client import CollectorRegistry, Gauge

from gateway.accounts.usage import UsageReport
from gateway.api.keys import require_api_key
from gateway.canary import RunView
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
        gauges = account_gauges(fleet.dispatcher.metrics.registry)
        gauges.show(await fleet.usage.report())
        gauges.show_canary(await fleet.canary.latest())
        return Response(fleet.dispatcher.metrics.exposition(), media_type=CONTENT_TYPE)


class AccountGauges:
    """The ledger's figures as gauges, labelled by instance name and model; refilled whole at each scrape, so an
    account deleted or a block ended leaves no stale series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        account = ["instance", "model"]
        self.made_today = Gauge(
            "aistudio_account_made_today", "Images an account made of a model today (Pacific day)", account,
            registry=registry,
        )
        self.remaining = Gauge(
            "aistudio_account_remaining",
            "Images an account has left of a model today, where its capacity is known (learned, lowered to its cap)",
            account, registry=registry,
        )
        self.blocked = Gauge(
            "aistudio_account_blocked", "1 while a model is blocked on an account, by why (quota, cap, rate_limit, unavailable)",
            [*account, "kind"], registry=registry,
        )
        self.canary_ok = Gauge(
            "aistudio_canary_ok", "1 when a model's last canary run of a kind (generation, check) passed, 0 when it failed",
            ["model", "kind"], registry=registry,
        )
        self.canary_last_run = Gauge(
            "aistudio_canary_last_run_timestamp", "When a model's last decided canary run of a kind started (Unix time)",
            ["model", "kind"], registry=registry,
        )
        self.pool_remaining = Gauge(
            "aistudio_pool_remaining",
            "Images known to be left of a model today on the accounts meant to run and not blocked", ["model"],
            registry=registry,
        )

    def show_canary(self, runs: list[RunView]) -> None:
        self.canary_ok.clear()
        self.canary_last_run.clear()
        for run in runs:
            self.canary_ok.labels(run.model, run.kind).set(1 if run.ok else 0)
            self.canary_last_run.labels(run.model, run.kind).set(run.started_at.timestamp())

    def show(self, report: UsageReport) -> None:
        for gauge in (self.made_today, self.remaining, self.blocked, self.pool_remaining):
            gauge.clear()
        for account in report.accounts:
            for cell in account.models:
                self.made_today.labels(account.name, cell.model).set(cell.made_today)
                if cell.remaining is not None:
                    self.remaining.labels(account.name, cell.model).set(cell.remaining)
                if cell.blocked:
                    self.blocked.labels(account.name, cell.model, cell.block_kind or "unknown").set(1)
        for total in report.pool:
            self.pool_remaining.labels(total.model).set(total.remaining)


# One set per registry (one registry per Fleet): a metric name may be registered only once in it.
_GAUGES: WeakKeyDictionary[CollectorRegistry, AccountGauges] = WeakKeyDictionary()


def account_gauges(registry: CollectorRegistry) -> AccountGauges:
    if registry not in _GAUGES:
        _GAUGES[registry] = AccountGauges(registry)
    return _GAUGES[registry]

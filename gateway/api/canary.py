"""The canary on the management API: which models it watches, their last results and history, "run now"."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from gateway.api.management import DEPENDENCIES
from gateway.canary import KINDS, Canary, ModelCanary, known_model, run_out
from gateway.errors import Invalid


def provide_canary(state: State) -> Canary:
    return state.fleet.canary


class CanaryToggle(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool


class CanaryModelOut(msgspec.Struct, kw_only=True):
    model: str
    name: str
    enabled: bool
    last: dict[str, dict[str, Any] | None]
    history: list[dict[str, Any]]


class CanaryListOut(msgspec.Struct, kw_only=True):
    success: bool = True
    interval_hours: float
    check_interval_minutes: float
    alert_webhook: bool  # whether alerts are sent (the URL itself is not shown)
    note: str
    models: list[CanaryModelOut]


class CanaryToggled(msgspec.Struct, kw_only=True):
    success: bool = True
    model: str
    enabled: bool


class CanaryRunOut(msgspec.Struct, kw_only=True):
    success: bool = True
    model: str
    runs: list[dict[str, Any]]


NOTE = "Each canary generation spends one image of the chosen account's daily allowance; the page check is free."


def model_out(found: ModelCanary) -> CanaryModelOut:
    return CanaryModelOut(
        model=found.model, name=found.name, enabled=found.enabled,
        last={kind: run_out(run) if run else None for kind, run in found.last.items()},
        history=[run_out(run) for run in found.history],
    )


class CanaryController(Controller):
    path = "/api/canary"
    tags = ["canary"]
    dependencies = {**DEPENDENCIES, "canary": Provide(provide_canary, sync_to_thread=False)}

    @get("/", operation_id="getCanary", summary="Every model's canary: on or off, last results, recent runs")
    async def list_canary(self, canary: NamedDependency[Canary]) -> CanaryListOut:
        settings = canary.settings
        return CanaryListOut(
            interval_hours=settings.canary_interval, check_interval_minutes=settings.canary_check_interval,
            alert_webhook=bool(settings.alert_webhook), note=NOTE,
            models=[model_out(m) for m in await canary.overview()],
        )

    @put("/{model:str}", operation_id="putCanary", summary="Turn a model's canary on or off")
    async def toggle(self, model: FromPath[str], data: JSONBody[CanaryToggle], canary: NamedDependency[Canary]) -> CanaryToggled:
        enabled = await canary.set_enabled(model, data.enabled)
        return CanaryToggled(model=model, enabled=enabled)

    @post("/{model:str}/run", operation_id="runCanary", status_code=200,
          summary="Run a model's canary now: `kind` check (free), generation (spends one image), or both (default)")
    async def run_now(self, model: FromPath[str], canary: NamedDependency[Canary], kind: FromQuery[str | None] = None) -> CanaryRunOut:
        known_model(model)
        if kind is not None and kind not in KINDS:
            raise Invalid("canary_kind_unknown", value=kind[:20], choices=", ".join(KINDS))
        kinds = [kind] if kind else ["check", "generation"]
        runs = [run_out(await canary.run(model, k)) for k in kinds]
        return CanaryRunOut(model=model, runs=runs)


CANARY_CONTROLLERS = [CanaryController]

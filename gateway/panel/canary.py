"""The panel's Canary page: each model's canary on or off, its last results and recent runs, and "run now"."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from gateway.canary import Canary, known_model
from gateway.panel.controllers import DEPENDENCIES, page


def provide_canary(state: State) -> Canary:
    return state.fleet.canary


class CanaryPanelController(Controller):
    dependencies = {**DEPENDENCIES, "canary": Provide(provide_canary, sync_to_thread=False)}
    include_in_schema = False

    @get("/canary", name="panel:canary")
    async def canary_page(self, request: HTMXRequest, canary: NamedDependency[Canary]) -> Template:
        return await _page(request, canary)

    @post("/canary/{model:str}/toggle", name="panel:canary-toggle")
    async def toggle(self, request: HTMXRequest, model: FromPath[str], canary: NamedDependency[Canary]) -> Template:
        form = await request.form()
        await canary.set_enabled(model, str(form.get("enabled", "")).lower() in ("1", "true", "on"))
        return await _page(request, canary)

    @post("/canary/{model:str}/run", name="panel:canary-run")
    async def run_now(self, request: HTMXRequest, model: FromPath[str], canary: NamedDependency[Canary]) -> Template:
        form = await request.form()
        kind = str(form.get("kind") or "check")
        known_model(model)
        await canary.run(model, kind)
        return await _page(request, canary)


async def _page(request: HTMXRequest, canary: Canary) -> Template:
    values = {"models": await canary.overview(history=10), "settings": canary.settings}
    return page(request, "canary.html", values, block="models")


CANARY_PANEL_CONTROLLERS = [CanaryPanelController]

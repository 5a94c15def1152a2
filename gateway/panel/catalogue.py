"""The panel's catalogue page: the models the fleet serves now (packaged, the operator's edit, learned from the
accounts' pages, and how many signed-in accounts' pages offer each), retired models, and the operator's edit."""

from __future__ import annotations

import json
from typing import Any

from jinja2_fragments.litestar import HTMXBlockTemplate
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from gateway.api.errors import request_language
from gateway.errors import FleetError
from gateway.i18n import translate
from gateway.panel.controllers import DEPENDENCIES, context, page
from gateway.services.catalogue import CatalogueService

EXAMPLE = {"models": [{"id": "gemini-nano-banana-2.2", "name": "Nano Banana 2.2", "aspect_ratios": ["1:1", "16:9"],
                       "image_sizes": ["1K", "2K"]}]}


def provide_catalogue(state: State) -> CatalogueService:
    return state.fleet.catalogue


class CataloguePanelController(Controller):
    dependencies = {**DEPENDENCIES, "catalogue": Provide(provide_catalogue, sync_to_thread=False)}
    include_in_schema = False

    @get("/catalogue", name="panel:catalogue")
    async def catalogue_page(self, request: HTMXRequest, catalogue: NamedDependency[CatalogueService]) -> Template:
        view = await catalogue.current()
        values = {"view": view, "document_text": _pretty(view.override or EXAMPLE), "message": None, "error": None}
        return page(request, "catalogue.html", values, block="result")

    @post("/catalogue", name="panel:catalogue-save")
    async def save(self, request: HTMXRequest, catalogue: NamedDependency[CatalogueService]) -> Template:
        form = await request.form()
        try:
            await catalogue.replace(str(form.get("document") or "").encode())
        except FleetError as exc:
            # Shown beside the textarea, which keeps what was typed; nothing was stored.
            said = translate(exc.key, request_language(request), **exc.params)
            return await _result(request, catalogue, error=said, status=exc.status_code)
        return await _result(request, catalogue, key="catalogue_saved")

    @post("/catalogue/reset", name="panel:catalogue-reset")
    async def reset(self, request: HTMXRequest, catalogue: NamedDependency[CatalogueService]) -> Template:
        await catalogue.remove()
        return await _result(request, catalogue, key="catalogue_removed")


async def _result(
    request: Request[Any, Any, Any], catalogue: CatalogueService, *, key: str | None = None, error: str | None = None,
    status: int = 200,
) -> Template:
    message = translate(key, request_language(request)) if key else None
    values = context(request, view=await catalogue.current(), message=message, error=error)
    return HTMXBlockTemplate(template_name="catalogue.html", block_name="result", context=values, status_code=status)


def _pretty(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2)


CATALOGUE_PANEL_CONTROLLERS = [CataloguePanelController]

"""The panel's page check (per instance) and selectors override page; the same services as the management API."""

from __future__ import annotations

import json
from typing import Any

from jinja2_fragments.litestar import HTMXBlockTemplate
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from gateway.api.errors import request_language
from gateway.api.selectors import push_message
from gateway.errors import FleetError
from gateway.i18n import translate
from gateway.panel.controllers import DEPENDENCIES, context, page
from gateway.services.instances import InstanceService
from gateway.services.selectors import PushResult, SelectorsService


def provide_selectors(state: State) -> SelectorsService:
    return state.fleet.selectors


class SelectorsPanelController(Controller):
    dependencies = {**DEPENDENCIES, "selectors": Provide(provide_selectors, sync_to_thread=False)}
    include_in_schema = False

    @get("/instances/{instance_id:str}/pagecheck", name="panel:pagecheck")
    async def pagecheck(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Template:
        report = await instances.diagnose(instance_id)
        return HTMXBlockTemplate(template_name="instance.html", block_name="pagecheck", context=context(request, report=report))

    @get("/selectors", name="panel:selectors")
    async def selectors_page(self, request: HTMXRequest, selectors: NamedDependency[SelectorsService]) -> Template:
        view = await selectors.current()
        values = {
            "view": view, "results": None,
            "document_text": _pretty(view.override) if view.override else _pretty({"roles": {}}),
            "packaged_text": _pretty(view.packaged),
        }
        return page(request, "selectors.html", values, block="result")

    @post("/selectors", name="panel:selectors-save")
    async def save(self, request: HTMXRequest, selectors: NamedDependency[SelectorsService]) -> Template:
        form = await request.form()
        text = str(form.get("document") or "")
        try:
            _document, results = await selectors.replace(text.encode())
        except FleetError as exc:
            # Shown beside the textarea, which keeps what was typed; nothing was stored.
            return await _result(request, selectors, error=_said(request, exc), status=exc.status_code)
        return await _result(request, selectors, results=results, key="selectors_saved")

    @post("/selectors/reset", name="panel:selectors-reset")
    async def reset(self, request: HTMXRequest, selectors: NamedDependency[SelectorsService]) -> Template:
        _removed, results = await selectors.remove()
        return await _result(request, selectors, results=results, key="selectors_removed")


async def _result(
    request: Request[Any, Any, Any], selectors: SelectorsService, *, results: list[PushResult] | None = None,
    key: str | None = None, error: str | None = None, status: int = 200,
) -> Template:
    language = request_language(request)
    message = push_message(key, language, results) if key and results is not None else None
    values = context(request, view=await selectors.current(), results=results, message=message, error=error)
    return HTMXBlockTemplate(template_name="selectors.html", block_name="result", context=values, status_code=status)


def _said(request: Request[Any, Any, Any], exc: FleetError) -> str:
    return translate(exc.key, request_language(request), **exc.params)


def _pretty(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2)


SELECTORS_PANEL_CONTROLLERS = [SelectorsPanelController]

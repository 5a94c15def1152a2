"""The panel's playground: an operator tries a prompt without a client, and browses the results still kept.

A generation here is an asynchronous task like `POST /tasks` (api "panel": history and the account ledger count
it), so it queues, runs on any idle account and keeps its result for GATEWAY_TASK_RESULT_TTL. Its card polls
until the task ends, then shows the images, the timings and the account that made them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from litestar import Controller, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from fleet_contract.catalogue import ModelSpec
from gateway.accounts import page_catalogue
from gateway.api.faces import mime_of
from gateway.api.openai_images import image_count
from gateway.db.types import utcnow
from gateway.dispatcher import form_request
from gateway.dispatcher.durable import TaskMeta
from gateway.dispatcher.inputs import InputLimits, generation_options
from gateway.errors import NotFound, TooLarge
from gateway.panel.controllers import DEPENDENCIES, page
from gateway.services.history import TaskHistoryService, TaskView

GALLERY_SHOWN = 24
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class PlaygroundController(Controller):
    dependencies = DEPENDENCIES
    include_in_schema = False

    @get("/playground", name="panel:playground")
    async def playground(self, request: HTMXRequest, history: NamedDependency[TaskHistoryService]) -> Template:
        spec = _models()[0]
        values = {**_form_values(request, spec), "models": _models(), "cards": [],
                  "gallery": await _gallery(request, history)}
        return page(request, "playground.html", values)

    @get("/playground/options", name="panel:playground-options")
    async def options(self, request: HTMXRequest, model: FromQuery[str] = "") -> Template:
        """The ratio and size choices of the model just picked."""
        return page(request, "playground.html", _form_values(request, _spec(request, model)), block="options")

    @post("/playground/generate", name="panel:playground-generate")
    async def generate(self, request: HTMXRequest, history: NamedDependency[TaskHistoryService]) -> Template:
        form = await request.form()
        limits = InputLimits.from_settings(request.app.state.settings.inputs)
        references = [await _reference(upload, index, limits) for index, upload in
                      enumerate(u for u in form.getall("references", []) if isinstance(u, UploadFile) and u.filename)]
        spec = _spec(request, str(form.get("model") or ""))
        generation = form_request(
            str(form.get("prompt") or ""), form.get("aspect_ratio") or None, references, limits, model=spec.id,
            image_size=form.get("image_size") or None,
        )
        count = _count(request, form.get("count"))
        dispatcher = request.app.state.fleet.dispatcher
        started = [await dispatcher.submit(generation, meta=TaskMeta(api="panel")) for _ in range(count)]
        cards = [view for result in started if (view := await history.one(str(result.task_id))) is not None]
        return page(request, "playground.html", {"cards": cards}, block="cards", status=201)

    @get("/playground/tasks/{task_id:str}", name="panel:playground-task")
    async def card(self, request: HTMXRequest, task_id: FromPath[str], history: NamedDependency[TaskHistoryService]) -> Template:
        """A task's card; an unfinished one polls this again (htmx)."""
        view = await history.one(task_id)
        if view is None:
            raise NotFound("task_not_found", task_id=task_id[:80])
        return page(request, "playground.html", {"cards": [view]}, block="cards")

    @get("/playground/tasks/{task_id:str}/images/{index:int}", name="panel:playground-image")
    async def image(self, request: HTMXRequest, task_id: FromPath[str], index: FromPath[int], download: FromQuery[bool] = False) -> Response[bytes]:
        image = await request.app.state.fleet.dispatcher.image(task_id, index)  # this one alone, from the store
        data = image.first + b"".join([chunk async for chunk in image.rest])
        mime = mime_of(data)
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if download:
            headers["Content-Disposition"] = f'attachment; filename="{task_id}-{index + 1}.{EXTENSIONS.get(mime, "png")}"'
        return Response(data, media_type=mime, headers=headers)


def _models() -> list[ModelSpec]:
    """Today's servable models, the default first."""
    specs = [spec for spec, _offered, _packaged in page_catalogue.servable_models()]
    default = generation_options(None, None, None).spec
    return sorted(specs, key=lambda spec: spec.id != default.id)


def _spec(request: HTMXRequest, model: str) -> ModelSpec:
    limits = InputLimits.from_settings(request.app.state.settings.inputs)
    return generation_options(model or None, None, None, limits.model_aliases).spec


def _form_values(request: HTMXRequest, spec: ModelSpec) -> dict[str, Any]:
    settings = request.app.state.settings
    return {"spec": spec, "max_count": settings.faces.max_images_per_request,
            "max_references": settings.inputs.max_reference_images if spec.references else 0}


def _count(request: HTMXRequest, value: Any) -> int:
    """How many tasks (images) at once: 1 to GATEWAY_MAX_IMAGES_PER_REQUEST, as OpenAI's `n`."""
    text = str(value or "1").strip()
    return image_count(int(text) if text.isdigit() and len(text) < 4 else text, request.app.state.settings.faces)


async def _reference(upload: UploadFile, index: int, limits: InputLimits) -> bytes:
    data = await upload.read(limits.max_reference_bytes + 1)
    if len(data) > limits.max_reference_bytes:
        raise TooLarge("reference_too_large", index=index + 1, limit=limits.max_reference_bytes)
    return data  # its format is checked with the others by the one check


async def _gallery(request: HTMXRequest, history: TaskHistoryService) -> list[TaskView]:
    kept_for = request.app.state.settings.faces.task_result_ttl
    return await history.with_kept_images(since=utcnow() - timedelta(seconds=kept_for), limit=GALLERY_SHOWN)


PLAYGROUND_PANEL_CONTROLLERS = [PlaygroundController]

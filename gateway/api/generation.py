"""The generation API on :8812, in the old system's shapes: POST /generate, /generate-with-file, /tasks.

Handlers parse, call the dispatcher, and shape the answer. A generation that fails is `200` with
`success: false` (what the old clients read); a task that cannot be run at all is an HTTP error from the one
error mapping (429 queue full, 503 nothing to run it, with `Retry-After`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Controller, Request, Response, Router, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import FromPath

from gateway.api.errors import request_language
from gateway.api.generation_schemas import (
    GenerateFormIn,
    GenerateIn,
    TaskAcceptedOut,
    TaskOut,
    documented_body,
    form_schema,
    json_schema,
)
from gateway.api.keys import require_api_key
from gateway.api.task_options import task_meta
from gateway.dispatcher import Dispatcher, InputLimits, TaskResult, form_request, parse_json_request
from gateway.dispatcher.inputs import body_request, json_object
from gateway.errors import BadRequest, Invalid
from gateway.i18n import catalog, translate
from gateway.settings import InputSettings

FILE_FIELD = "reference_images"


class GenerationController(Controller):
    tags = ["generation"]

    @post(
        "/generate", operation_id="generate", status_code=200, summary="Generate, waiting for the result (old API)",
        operation_class=documented_body(json_schema(GenerateIn)),
    )
    async def generate(self, request: Request[Any, Any, Any]) -> Response[TaskOut]:
        generation = parse_json_request(await request.body(), _limits(request))
        meta = await task_meta(request, "generate")
        result = await _dispatcher(request).generate(generation, client_left=_disconnect_of(request), meta=meta)
        return Response(task_body(result, request_language(request)))

    @post(
        "/generate-with-file",
        operation_id="generateWithFile",
        status_code=200,
        summary="Generate from a multipart form with reference image files (old API)",
        operation_class=documented_body(
            form_schema(GenerateFormIn, {FILE_FIELD: "Reference images (PNG, JPEG, GIF or WebP)"}), "multipart/form-data"
        ),
    )
    async def generate_with_file(self, request: Request[Any, Any, Any]) -> Response[TaskOut]:
        generation = await _form_generation(request)
        meta = await task_meta(request, "generate")
        result = await _dispatcher(request).generate(generation, client_left=_disconnect_of(request), meta=meta)
        return Response(task_body(result, request_language(request)))


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @post(
        "/", operation_id="submitTask", status_code=202, summary="Queue a generation; answers at once with its id",
        operation_class=documented_body(json_schema(GenerateIn)),
    )
    async def submit(self, request: Request[Any, Any, Any]) -> Response[TaskAcceptedOut]:
        body = json_object(await request.body(), _limits(request))
        generation = body_request(body, _limits(request))
        meta = await task_meta(request, "tasks", callback_url=body.get("callback_url"))
        result = await _dispatcher(request).submit(generation, meta=meta)
        language = request_language(request)
        location = f"/tasks/{result.task_id}"
        body = TaskAcceptedOut(
            success=True,
            task_id=str(result.task_id),
            status=result.status,
            message=translate("task_accepted", language, task_id=result.task_id),
            status_url=location,
        )
        return Response(body, status_code=202, headers={"Location": location})

    @get("/{task_id:str}", operation_id="getTask", summary="A task's status, and its images once it succeeded")
    async def get_task(self, request: Request[Any, Any, Any], task_id: FromPath[str]) -> Response[TaskOut]:
        result = await _dispatcher(request).task(task_id)
        return Response(task_body(result, request_language(request)))


def generation_router(settings: InputSettings) -> Router:
    """The generation handlers behind the API keys, with the body limit the settings give."""
    return Router(
        path="/",
        route_handlers=[GenerationController, TaskController],
        guards=[require_api_key],
        request_max_body_size=settings.max_body_bytes,
    )


def task_body(result: TaskResult, language: str) -> TaskOut:
    """The old answer (`success`, `task_id`, `message`, `generated_images`, `ai_text_response`) plus what helps."""
    return TaskOut(
        success=result.status != "failed",
        task_id=str(result.task_id),
        message=task_message(result, language),
        generated_images=result.images_b64,
        ai_text_response=result.text,
        status=result.status,
        done=result.status in ("succeeded", "failed"),
        error_code=result.error_code,
        error_message=result.error_message,
        instance=result.instance_name,
        instance_id=str(result.instance_id) if result.instance_id else None,
        attempts=result.attempts,
        model=result.model,
        image_size=result.image_size,
        timings=result.timings,
        mode=result.mode,
        created_at=result.created_at.isoformat() if result.created_at else None,
        finished_at=result.finished_at.isoformat() if result.finished_at else None,
        output_format=result.output_format,
        image_hashes=result.image_hashes,
    )


def task_message(result: TaskResult, language: str) -> str:
    """What a person reads about a task: its status, or why it failed."""
    if result.status != "failed":
        return translate(f"task_{result.status}", language)
    code = result.error_code or "internal_error"
    detail = result.error_message or code
    specific = f"task_error_{code}"
    if specific in catalog(language) or specific in catalog("en"):
        return translate(specific, language, detail=detail)
    return translate("task_failed", language, code=code, detail=detail)


def _dispatcher(request: Request[Any, Any, Any]) -> Dispatcher:
    return request.app.state.fleet.dispatcher


def _limits(request: Request[Any, Any, Any]) -> InputLimits:
    return InputLimits.from_settings(request.app.state.settings.inputs)


async def _form_generation(request: Request[Any, Any, Any]) -> Any:
    content_type, _ = request.content_type
    if content_type == RequestEncodingType.JSON:
        return parse_json_request(await request.body(), _limits(request))  # lenient: the JSON form works too
    if content_type not in (RequestEncodingType.MULTI_PART, RequestEncodingType.URL_ENCODED):
        raise BadRequest("multipart_expected")
    form = await request.form()
    uploads = form.getall(FILE_FIELD, [])
    try:
        files = []
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                raise Invalid("field_type", field=FILE_FIELD, expected="file")
            files.append(await upload.read())
    finally:
        for upload in uploads:
            if isinstance(upload, UploadFile):
                await upload.close()
    return form_request(
        form.get("prompt"), form.get("aspect_ratio"), files, _limits(request),
        model=form.get("model"), image_size=form.get("image_size"),
        output_format=form.get("output_format"), output_quality=form.get("output_quality"),
    )


def _disconnect_of(request: Request[Any, Any, Any]) -> Callable[[], Awaitable[None]]:
    """Returns once the client has disconnected. The body is read already, so the only message the server
    can still send is `http.disconnect` (when the client leaves, or once our answer is complete)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return disconnected

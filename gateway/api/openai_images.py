"""OpenAI's image API on :8812: GET /v1/models, POST /v1/images/generations and /v1/images/edits.

A thin translation: OpenAI's `size` becomes a ratio and an image size of the catalogue, `n` becomes n tasks
side by side, and the answer is `{created, data: [{b64_json | url, revised_prompt}]}` with the model's text as
`revised_prompt`. Every field is checked (by the catalogue and `gateway.dispatcher.inputs`, as for /generate)
before anything is dispatched; errors come in OpenAI's shape.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import FromPath, JSONBody

from fleet_contract import catalogue
from fleet_contract.catalogue import ModelSpec
from gateway.accounts import page_catalogue
from gateway.api.errors import request_language
from gateway.api.faces import run_all, succeeded_or_raise
from gateway.api.generation_schemas import ImageEditFormIn, documented_body, form_schema
from gateway.api.image_urls import image_url
from gateway.api.openai_requests import model_spec, openai_request
from gateway.api.task_options import task_meta
from gateway.dispatcher import GenerationRequest
from gateway.errors import BadRequest, Invalid
from gateway.settings import FaceSettings

RESPONSE_FORMATS = ("b64_json", "url")


# Bodies ----------------------------------------------------------------------------------------------


class ModelOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "google"
    name: str = ""
    aspect_ratios: list[str] = []
    image_sizes: list[str] = []
    references: bool = True
    # False: a packaged model no signed-in account's page offers any more; None: no page has told its picker yet.
    offered_by_pages: bool | None = None
    packaged: bool = True  # False: learned from the pages (the packaged catalogue lacks it)


class ModelListOut(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelOut]


class ImageGenerationIn(msgspec.Struct, kw_only=True):
    """OpenAI's body; fields it has that AI Studio cannot honour (quality, style, background, user) are ignored."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None  # 1024x1024, 1536x1024, 1024x1536, 1792x1024, 1024x1792, auto, any WxH, or a ratio ("16:9")
    response_format: str | None = None  # b64_json (default) or url
    output_format: str | None = None  # png (default), jpeg or webp
    output_compression: int | None = None  # 0-100, for jpeg and webp


class ImageOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesOut(msgspec.Struct, kw_only=True):
    created: int
    data: list[ImageOut]
    model: str  # the model that ran (an alias answered under its model's id); beyond OpenAI's fields


# The mapping of OpenAI's options onto the catalogue ----------------------------------------------------


def response_format(value: Any, settings: FaceSettings) -> str:
    if value is None or value == "":
        return "b64_json"
    if value not in RESPONSE_FORMATS:
        raise Invalid("response_format_unknown", value=str(value)[:40], choices=", ".join(RESPONSE_FORMATS))
    if value == "url" and not settings.store_sync_results:
        raise Invalid("response_format_url_unavailable")
    return value


def image_count(value: Any, settings: FaceSettings) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= settings.max_images_per_request:
        raise Invalid("n_out_of_range", value=str(value)[:20], limit=settings.max_images_per_request)
    return value


async def images_answer(request: Request[Any, Any, Any], generation: GenerationRequest, n: int, fmt: str) -> ImagesOut:
    """Runs n tasks side by side and answers with their images (at most n), each with its task's text."""
    language = request_language(request)
    meta = await task_meta(request, "openai")
    results = succeeded_or_raise(await run_all(request, [generation] * n, meta), language)
    data: list[ImageOut] = []
    for result in results:
        for index, image in enumerate(result.images_b64):
            if fmt == "url":
                data.append(ImageOut(url=image_url(request, result.task_id, index, image), revised_prompt=result.text))
            else:
                data.append(ImageOut(b64_json=image, revised_prompt=result.text))
    return ImagesOut(created=int(time.time()), data=data[:n], model=generation.model)


# Handlers --------------------------------------------------------------------------------------------


class OpenAIImagesController(Controller):
    path = "/v1"
    tags = ["openai"]

    @get("/models", operation_id="openaiListModels", summary="The image models (OpenAI's model list)")
    async def list_models(self) -> ModelListOut:
        return ModelListOut(data=[_model_out(spec, offered, packaged) for spec, offered, packaged in page_catalogue.servable_models()])

    @get("/models/{model:str}", operation_id="openaiGetModel", summary="One image model")
    async def get_model(self, request: Request[Any, Any, Any], model: FromPath[str]) -> ModelOut:
        return _model_out(model_spec(request, model))

    @post("/images/generations", operation_id="openaiCreateImage", status_code=200, summary="Generate images (OpenAI)")
    async def generations(self, request: Request[Any, Any, Any], data: JSONBody[ImageGenerationIn]) -> ImagesOut:
        settings: FaceSettings = request.app.state.settings.faces
        n = image_count(data.n, settings)
        fmt = response_format(data.response_format, settings)
        generation = openai_request(
            request, prompt=data.prompt, model=data.model, size=data.size, images=[],
            output_format=data.output_format, output_compression=data.output_compression,
        )
        return await images_answer(request, generation, n, fmt)

    @post(
        "/images/edits", operation_id="openaiEditImage", status_code=200, summary="Generate from reference images (OpenAI)",
        operation_class=documented_body(
            form_schema(ImageEditFormIn, {"image": "Reference image(s)", "image[]": "Reference images (OpenAI's list form)"}),
            "multipart/form-data",
        ),
    )
    async def edits(self, request: Request[Any, Any, Any]) -> ImagesOut:
        settings: FaceSettings = request.app.state.settings.faces
        content_type, _ = request.content_type
        if content_type != RequestEncodingType.MULTI_PART:
            raise BadRequest("multipart_expected")
        form = await request.form()
        uploads = [*form.getall("image", []), *form.getall("image[]", [])]
        try:
            if form.getall("mask", []):
                raise BadRequest("mask_not_supported")
            if not uploads:
                raise Invalid("reference_missing")
            images = [await _read_upload(upload) for upload in uploads]
        finally:
            for upload in [*uploads, *form.getall("mask", [])]:
                if isinstance(upload, UploadFile):
                    await upload.close()
        n = image_count(_form_int(form.get("n"), "n", 1), settings)
        fmt = response_format(form.get("response_format"), settings)
        generation = openai_request(
            request, prompt=form.get("prompt"), model=form.get("model"), size=form.get("size"), images=images,
            output_format=form.get("output_format"), output_compression=form.get("output_compression"),
        )
        return await images_answer(request, generation, n, fmt)


def _model_out(spec: ModelSpec, offered: bool | None = None, packaged: bool | None = None) -> ModelOut:
    if packaged is None:
        packaged = catalogue.load().find(spec.id) is not None
        offered = page_catalogue.still_offered(spec.id) if packaged else True
    return ModelOut(
        id=spec.id, name=spec.name, aspect_ratios=list(spec.aspect_ratios), image_sizes=list(spec.image_sizes),
        references=spec.references, offered_by_pages=offered, packaged=packaged,
    )


async def _read_upload(upload: Any) -> bytes:
    if not isinstance(upload, UploadFile):
        raise Invalid("field_type", field="image", expected="file")
    return await upload.read()


def _form_int(value: Any, name: str, default: int) -> Any:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Invalid("field_type", field=name, expected="integer") from None

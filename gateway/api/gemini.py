"""Google's Gemini API on :8812: POST /v1beta/models/{model}:generateContent and :streamGenerateContent,
GET /v1beta/models (the list) and /v1beta/models/{model} (one model).

Also at /v1/models/{model}:generateContent, where the google-genai SDK sends it when told api_version v1.
The last user turn of `contents` is the prompt (its text parts) and its references (its `inline_data` parts);
`generationConfig.imageConfig` gives the `aspectRatio` and `imageSize`. The answer is Gemini's: one candidate
whose parts are the model's text and the images as `inlineData`. streamGenerateContent answers once the image
is made (the page gives nothing partial), as server-sent events with `?alt=sse` (what google-genai asks for) or
as a JSON array otherwise (Google's default): the text, then each image, in chunks of their own, the last with
the finish reason; a refusal before any byte is sent is an HTTP error as for generateContent. Keys come as
`x-goog-api-key` (what the google-genai SDK sends), as `?key=` (Google's REST form) or as for the other faces;
errors in Gemini's shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from fleet_contract import catalogue
from gateway.api import conversation
from gateway.api.errors import request_language
from gateway.api.faces import TaskFailed, exception_handlers, failure, gemini_error, limits_of, mime_of_b64, run_all
from gateway.api.keys import require_api_key
from gateway.api.openai_requests import model_spec
from gateway.api.task_options import task_meta
from fleet_contract.catalogue import ModelSpec
from gateway.accounts import page_catalogue
from gateway.dispatcher import GenerationRequest, TaskResult, form_request, generation_options
from gateway.dispatcher.inputs import decoded_reference, refuse_control_characters
from gateway.errors import Invalid, NotFound
from gateway.settings import InputSettings

ACTION = "generateContent"
STREAM_ACTION = "streamGenerateContent"
ACTIONS = (ACTION, STREAM_ACTION)


class Blob(msgspec.Struct, kw_only=True):
    data: str
    mime_type: str | None = None


class Part(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A part as the REST API takes it: snake_case (`inline_data`) or camelCase (`inlineData`), both accepted."""

    text: str | None = None
    inline_data: Blob | None = None
    inlineData: Blob | None = None  # noqa: N815 - the REST API's camelCase spelling


class Content(msgspec.Struct, kw_only=True):
    parts: list[Part] = []
    role: str | None = None


class ImageConfig(msgspec.Struct, kw_only=True):
    aspectRatio: str | None = None  # noqa: N815
    imageSize: str | None = None  # noqa: N815
    outputMimeType: str | None = None  # noqa: N815 - image/png, image/jpeg or image/webp
    outputCompressionQuality: int | None = None  # noqa: N815


class GenerationConfig(msgspec.Struct, kw_only=True):
    imageConfig: ImageConfig | None = None  # noqa: N815
    responseModalities: list[str] | None = None  # noqa: N815 - accepted; the page always answers with both


class GenerateContentIn(msgspec.Struct, kw_only=True):
    contents: list[Content] | Content
    generationConfig: GenerationConfig | None = None  # noqa: N815
    generation_config: GenerationConfig | None = None


class BlobOut(msgspec.Struct, kw_only=True):
    mimeType: str  # noqa: N815
    data: str


class PartOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    text: str | None = None
    inlineData: BlobOut | None = None  # noqa: N815


class ContentOut(msgspec.Struct, kw_only=True):
    role: str = "model"
    parts: list[PartOut]


class CandidateOut(msgspec.Struct, kw_only=True):
    content: ContentOut
    finishReason: str = "STOP"  # noqa: N815
    index: int = 0


class UsageOut(msgspec.Struct, kw_only=True):
    promptTokenCount: int = 0  # noqa: N815
    candidatesTokenCount: int = 0  # noqa: N815
    totalTokenCount: int = 0  # noqa: N815


class GenerateContentOut(msgspec.Struct, kw_only=True):
    candidates: list[CandidateOut]
    usageMetadata: UsageOut = msgspec.field(default_factory=UsageOut)  # noqa: N815
    modelVersion: str = ""  # noqa: N815
    responseId: str = ""  # noqa: N815


class GeminiModelOut(msgspec.Struct, kw_only=True):
    name: str
    displayName: str  # noqa: N815
    supportedGenerationMethods: list[str]  # noqa: N815
    # False: a packaged model no signed-in account's page offers any more; None: no page has told its picker yet.
    offeredByPages: bool | None = None  # noqa: N815


class GeminiModelListOut(msgspec.Struct, kw_only=True):
    models: list[GeminiModelOut]


async def gemini_request(request: Request[Any, Any, Any], model: str, body: GenerateContentIn) -> GenerationRequest:
    """The one checked request behind a generateContent call: the last user turn, with the conversation's earlier
    images as references and its earlier requests as context (gateway/api/conversation.py)."""
    contents = body.contents if isinstance(body.contents, list) else [body.contents]
    config = body.generationConfig or body.generation_config
    image_config = config.imageConfig if config and config.imageConfig else ImageConfig()
    limits = limits_of(request)
    spec = generation_options(model, None, None, limits.model_aliases).spec
    talk = conversation.read(
        [_turn(content) for content in contents], max_references=limits.max_reference_images,
        takes_references=spec.references, context_chars=request.app.state.settings.faces.chat_context_chars,
        max_prompt_chars=limits.max_prompt_chars, no_user="contents_no_user",
    )
    images = [decoded_reference(data, index, limits) for index, data in enumerate(talk.images)]
    refuse_control_characters({"prompt": talk.prompt, "model": model, "aspectRatio": image_config.aspectRatio,
                               "imageSize": image_config.imageSize})
    generation = form_request(
        talk.prompt, image_config.aspectRatio, images, limits, model=spec.id, image_size=image_config.imageSize,
        output_format=_format_of(image_config.outputMimeType), output_quality=image_config.outputCompressionQuality,
    )
    return await conversation.as_chat_turn(request, generation, talk, images)


def _turn(content: Content) -> conversation.Turn:
    """A turn of `contents`: the user's (role absent or `user`) or the model's, its texts and inline images."""
    images = [blob.data for p in content.parts if (blob := p.inline_data or p.inlineData) is not None]
    role = "user" if content.role in (None, "user") else content.role
    return conversation.Turn(role, [p.text for p in content.parts if p.text], images)


def _format_of(mime_type: str | None) -> str | None:
    """Gemini names the format by its MIME type; anything else than image/... is left to the one check."""
    if mime_type is None:
        return None
    return mime_type[len("image/"):] if mime_type.startswith("image/") else mime_type


def gemini_answer(result: TaskResult, model: str, language: str) -> GenerateContentOut:
    if not (result.succeeded and result.images_b64):
        if result.error_code == "blocked" and result.text:  # text and no image: Gemini answers just that
            parts = [PartOut(text=result.text)]
            return GenerateContentOut(candidates=[CandidateOut(content=ContentOut(parts=parts))], modelVersion=model,
                                      responseId=str(result.task_id))
        raise TaskFailed(failure(result, language))
    parts = [PartOut(text=result.text)] if result.text else []
    parts += [PartOut(inlineData=BlobOut(mimeType=mime_of_b64(image), data=image)) for image in result.images_b64]
    return GenerateContentOut(
        candidates=[CandidateOut(content=ContentOut(parts=parts))], modelVersion=model, responseId=str(result.task_id)
    )


def gemini_chunks(answer: GenerateContentOut) -> list[GenerateContentOut]:
    """The streamed form of one answer: a chunk per part (text first, then each image); the last carries the
    finish reason and the usage, as Gemini's own streams end."""
    (candidate,) = answer.candidates
    parts = candidate.content.parts or [PartOut(text="")]
    chunks = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        chunk_candidate = msgspec.structs.replace(candidate, content=ContentOut(parts=[part]),
                                                  finishReason=candidate.finishReason if last else "")
        chunks.append(msgspec.structs.replace(answer, candidates=[chunk_candidate],
                                              usageMetadata=answer.usageMetadata if last else UsageOut()))
    return chunks


def _chunk_json(chunk: GenerateContentOut) -> bytes:
    body = msgspec.to_builtins(chunk)
    if not body["candidates"][0]["finishReason"]:
        del body["candidates"][0]["finishReason"]  # only the last chunk says why the answer ended
    return json.dumps(body, ensure_ascii=False).encode()


def _streamed(answer: GenerateContentOut, sse: bool) -> Stream:
    chunks = [_chunk_json(c) for c in gemini_chunks(answer)]

    async def sse_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + chunk + b"\r\n\r\n"

    async def array_body() -> AsyncIterator[bytes]:
        for index, chunk in enumerate(chunks):
            yield (b"[" if index == 0 else b",\r\n") + chunk
        yield b"]"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if sse:
        return TypedStream(sse_body(), media_type="text/event-stream", headers=headers)
    return TypedStream(array_body(), media_type="application/json", headers=headers)


class TypedStream(Stream):
    """A stream that keeps its own media type (a plain `Stream` takes its handler's)."""

    def to_asgi_response(self, *args: Any, media_type: Any = None, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, media_type=self.media_type, **kwargs)


def _split(model_action: str) -> tuple[str, str]:
    model, sep, action = model_action.partition(":")
    if not sep:
        raise NotFound("route_not_found", path=f"models/{model_action[:80]}")
    return model, action


def _model_out(spec: ModelSpec, offered: bool | None = None) -> GeminiModelOut:
    return GeminiModelOut(name=f"models/{spec.id}", displayName=spec.name, supportedGenerationMethods=list(ACTIONS),
                          offeredByPages=offered)


class GeminiController(Controller):
    path = "/"
    tags = ["gemini"]

    @get("/v1beta/models", operation_id="geminiListModels", summary="The image models (Gemini's model list)")
    async def list_models(self) -> GeminiModelListOut:
        return GeminiModelListOut(models=[_model_out(spec, offered) for spec, offered, _ in page_catalogue.servable_models()])

    @get("/v1beta/models/{model:str}", operation_id="geminiGetModel", summary="One image model (Gemini's models.get)")
    async def get_model(self, request: Request[Any, Any, Any], model: FromPath[str]) -> GeminiModelOut:
        return _model_out(model_spec(request, model))

    @post(
        "/v1beta/models/{model_action:str}", operation_id="geminiGenerateContent", status_code=200,
        summary="models/{model}:generateContent or :streamGenerateContent (Gemini)",
        responses={200: ResponseSpec(data_container=GenerateContentOut, description=(
            "The answer; for streamGenerateContent the same chunked, as server-sent events with ?alt=sse "
            "or a JSON array otherwise"))},
    )
    async def generate_content(
        self, request: Request[Any, Any, Any], model_action: FromPath[str], data: JSONBody[GenerateContentIn]
    ) -> Any:
        return await _generate_content(request, model_action, data)

    # The google-genai SDK says v1 when told api_version="v1".
    @post("/v1/models/{model_action:str}", status_code=200, include_in_schema=False)
    async def generate_content_v1(
        self, request: Request[Any, Any, Any], model_action: FromPath[str], data: JSONBody[GenerateContentIn]
    ) -> Any:
        return await _generate_content(request, model_action, data)


async def _generate_content(request: Request[Any, Any, Any], model_action: str, data: GenerateContentIn) -> Any:
    model, action = _split(model_action)
    if action not in ACTIONS:
        raise NotFound("route_not_found", path=f"models/{model_action[:80]}")
    generation = await gemini_request(request, model, data)
    (result,) = await run_all(request, [generation], await task_meta(request, "gemini"))
    answer = gemini_answer(result, generation.model, request_language(request))
    if action == STREAM_ACTION:
        return _streamed(answer, sse=request.query_params.get("alt") == "sse")
    return answer


def gemini_router(settings: InputSettings) -> Router:
    return Router(
        path="/",
        route_handlers=[GeminiController],
        guards=[require_api_key],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers=exception_handlers(gemini_error),
    )


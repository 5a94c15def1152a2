"""Anthropic's Messages API on :8812: POST /v1/messages, for agent tools and chat apps that speak it.

A thin translation like the chat face: `messages` is a conversation (gateway/api/conversation.py), its last user
turn's `text` blocks the prompt and its `image` blocks (`source` base64 or url) the references, earlier turns'
images and requests carried into it. `system`, `max_tokens` and the sampling and tool fields are accepted and
ignored (the page has none); an extra `size` picks the ratio as on the chat face.

Anthropic's answers have no image block (the `anthropic` client reads an unknown block as a text block without
text), so the image goes out where the API allows: a `text` block with the model's text, then a text block per
image holding it as Markdown, whose target is a signed link of this gateway (as for `response_format: url`; a data
URL when results are not kept, GATEWAY_STORE_SYNC_RESULTS off). Those Markdown images, sent back as history, are
the model's images of that turn. A text-only answer of the page (AI Studio's refusal) is a text answer with
`stop_reason: refusal`. `stream: true` answers in Anthropic's server-sent events, an `event: ping` every
GATEWAY_SSE_KEEPALIVE_INTERVAL seconds while the task waits or runs; a refusal before the stream starts is an
HTTP error, a failure after it an `event: error`. Errors come in Anthropic's shape, our code under
`error.details.error_code` (what the client reads as `error_code`).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Router, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.response import Stream

from gateway.api import conversation
from gateway.api.errors import request_language
from gateway.api.faces import (
    FaceError,
    TaskFailed,
    data_url,
    dispatcher_of,
    exception_handlers,
    face_error,
    failure,
    run_all,
)
from gateway.api.image_urls import image_url
from gateway.api.keys import require_api_key
from gateway.api.task_options import task_meta
from gateway.dispatcher import GenerationRequest, TaskResult
from gateway.errors import Invalid
from gateway.settings import InputSettings

TEXT_ANSWER = "blocked"  # the model answered with text and no image: that text is the answer
IMAGE_SOURCES = ("base64", "url")


# Bodies ----------------------------------------------------------------------------------------------


class ImageSource(msgspec.Struct, kw_only=True):
    type: str  # base64 or url; others (file) are refused
    media_type: str | None = None  # told by the bytes themselves here
    data: str | None = None
    url: str | None = None


class ContentBlockIn(msgspec.Struct, kw_only=True):
    type: str  # text or image; others (document, tool_use, tool_result, ...) are refused in the new turn
    text: str | None = None
    source: ImageSource | str | None = None  # a string for blocks such as search_result, passed over


class MessageIn(msgspec.Struct, kw_only=True):
    role: str  # user or assistant
    content: str | list[ContentBlockIn]


class SystemBlockIn(msgspec.Struct, kw_only=True):
    type: str = "text"
    text: str = ""


class MessagesIn(msgspec.Struct, kw_only=True):
    """Anthropic's body; sampling and tool fields (temperature, stop_sequences, tools, thinking, ...) are ignored."""

    messages: list[MessageIn]
    model: str | None = None
    max_tokens: int | None = None  # required by Anthropic; accepted and ignored: an image is not counted in tokens
    system: str | list[SystemBlockIn] | None = None  # ignored, as system messages are on the chat face
    stream: bool = False
    size: str | None = None  # an extension: as for images (a ratio such as "16:9", or WxH)


class TextBlockOut(msgspec.Struct, kw_only=True):
    type: str = "text"
    text: str


class MessageUsageOut(msgspec.Struct, kw_only=True):
    input_tokens: int = 0
    output_tokens: int = 0


class MessageOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[TextBlockOut]
    stop_reason: str | None = "end_turn"  # end_turn, or refusal for the page's text-only answer
    stop_sequence: str | None = None
    usage: MessageUsageOut = msgspec.field(default_factory=MessageUsageOut)


# Errors ----------------------------------------------------------------------------------------------

# Anthropic's error types by HTTP status (413 and 504 as its own API names them); others: api_error for 5xx, else
# invalid_request_error.
_ERROR_TYPES = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 503: "overloaded_error", 504: "timeout_error",
}


def anthropic_error(error: FaceError) -> dict[str, Any]:
    """Anthropic's shape: {"type": "error", "error": {"type", "message"}}, our code as `details.error_code`."""
    kind = _ERROR_TYPES.get(error.status_code, "api_error" if error.status_code >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message, "details": {"error_code": error.code}}}


# The request -----------------------------------------------------------------------------------------


async def messages_request(request: Request[Any, Any, Any], body: MessagesIn) -> GenerationRequest:
    """The conversation as one generation, as on the chat face: the last user message's text and images, the
    earlier messages' images as references and their requests as context."""
    last_user = max((i for i, m in enumerate(body.messages) if m.role == "user"), default=-1)
    turns = [turn for index, message in enumerate(body.messages)
             if (turn := _turn(message, strict=index == last_user)) is not None]
    return await conversation.openai_style_generation(request, turns, body.model, body.size)


def _turn(message: MessageIn, *, strict: bool) -> conversation.Turn | None:
    """A user or assistant message as a turn. Blocks this face cannot use are refused in the new turn and
    passed over in earlier ones (an agent's own history: tool calls, documents)."""
    if message.role not in ("user", "assistant"):
        return None
    blocks = [ContentBlockIn(type="text", text=message.content)] if isinstance(message.content, str) else message.content
    texts: list[str] = []
    images: list[str] = []
    for block in blocks:
        if block.type == "text":
            text = block.text or ""
            if message.role == "assistant":
                text, pictures = conversation.markdown_images(text)  # our answers carry their images as Markdown
                images += pictures
            texts.append(text)
        elif block.type == "image":
            image = _image_of(block.source, len(images) + 1, strict=strict)
            if image is not None:
                images.append(image)
        elif strict:
            raise Invalid("content_block_unsupported", type=block.type[:40])
    return conversation.Turn("user" if message.role == "user" else "model", texts, images)


def _image_of(source: ImageSource | str | None, index: int, *, strict: bool) -> str | None:
    """An image block's base64 data or URL, as conversation takes it; None for one passed over."""
    if not isinstance(source, ImageSource) or source.type not in IMAGE_SOURCES:
        if strict:
            kind = source.type if isinstance(source, ImageSource) else "none" if source is None else "string"
            raise Invalid("image_source_unsupported", index=index, type=kind[:40], choices=", ".join(IMAGE_SOURCES))
        return None
    kind = source.type
    value = source.data if kind == "base64" else source.url
    if not value:
        if strict:
            raise Invalid("image_source_empty", index=index, field="data" if kind == "base64" else "url")
        return None
    return value


# Answers ---------------------------------------------------------------------------------------------


def _text_only(result: TaskResult) -> bool:
    return result.error_code == TEXT_ANSWER and bool(result.text)


def answer_of(request: Request[Any, Any, Any], result: TaskResult, model: str, message_id: str) -> MessageOut:
    """The message for a task's result; a task that failed (other than with text) raises its error."""
    if not (result.succeeded and result.images_b64) and not _text_only(result):
        raise TaskFailed(failure(result, request_language(request)))
    blocks = [TextBlockOut(text=result.text)] if result.text else []
    blocks += [TextBlockOut(text=f"![image {n}]({_image_target(request, result, n - 1)})")
               for n in range(1, len(result.images_b64) + 1)]
    return MessageOut(id=message_id, model=model, content=blocks,
                      stop_reason="end_turn" if result.succeeded else "refusal")


def _image_target(request: Request[Any, Any, Any], result: TaskResult, index: int) -> str:
    """A signed link to the kept result, short enough to send back in a conversation; a data URL when
    results are not kept."""
    image = result.images_b64[index]
    if request.app.state.settings.faces.store_sync_results:
        return image_url(request, result.task_id, index, image)
    return data_url(image)


def _stream(request: Request[Any, Any, Any], task: asyncio.Task[TaskResult], model: str) -> Stream:
    interval = request.app.state.settings.faces.sse_keepalive_interval
    message_id = f"msg_{uuid.uuid4().hex}"

    async def events() -> AsyncIterator[bytes]:
        start = MessageOut(id=message_id, model=model, content=[], stop_reason=None)
        yield _event("message_start", {"type": "message_start", "message": msgspec.to_builtins(start)})
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=interval)
            if not done:
                yield _event("ping", {"type": "ping"})  # Anthropic's own keep-alive, which its clients pass over
        try:
            answer = answer_of(request, task.result(), model, message_id)
        except Exception as exc:  # noqa: BLE001 - a failure after the stream started: told in it, as Anthropic does
            yield _event("error", anthropic_error(face_error(request, exc)))
            return
        for index, block in enumerate(answer.content):
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}})
            yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                 "delta": {"type": "text_delta", "text": block.text}})
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _event("message_delta", {"type": "message_delta", "usage": {"output_tokens": 0},
                                       "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None}})
        yield _event("message_stop", {"type": "message_stop"})

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStream(events(), media_type="text/event-stream", headers=headers)


class EventStream(Stream):
    """A stream that keeps its own media type (a plain `Stream` takes its handler's, here JSON)."""

    def to_asgi_response(self, *args: Any, media_type: Any = None, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, media_type=self.media_type, **kwargs)


def _event(name: str, body: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


# Handlers --------------------------------------------------------------------------------------------


class AnthropicMessagesController(Controller):
    path = "/v1"
    tags = ["anthropic"]

    @post(
        "/messages", operation_id="anthropicCreateMessage", status_code=200, summary="Create a message (Anthropic)",
        responses={200: ResponseSpec(data_container=MessageOut, description=(
            "The message: the model's text, then each image as a Markdown image in a text block; with "
            "stream: true, Anthropic's server-sent events"))},
    )
    async def create_message(self, request: Request[Any, Any, Any], data: JSONBody[MessagesIn]) -> Any:
        generation = await messages_request(request, data)
        meta = await task_meta(request, "anthropic")
        if data.stream:
            task = await dispatcher_of(request).begin(generation, meta=meta)  # a 429/503 still comes as a status
            return _stream(request, task, generation.model)
        (result,) = await run_all(request, [generation], meta)
        return answer_of(request, result, generation.model, f"msg_{result.task_id.hex}")


def anthropic_router(settings: InputSettings) -> Router:
    return Router(
        path="/",
        route_handlers=[AnthropicMessagesController],
        guards=[require_api_key],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers=exception_handlers(anthropic_error),
    )

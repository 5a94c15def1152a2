"""OpenAI's chat completions on :8812, for chat front-ends (Open WebUI, LobeChat, Cherry Studio).

The last user message is the prompt: its text parts joined, its images (data URLs, or http(s) URLs the gateway
fetches under limits) the references. The answer carries the images twice: as
`choices[0].message.images[].image_url.url` data URLs, and as Markdown images in `content` for front-ends that
only render Markdown. `stream: true` answers in server-sent events: a role chunk at once, a comment every
GATEWAY_SSE_KEEPALIVE_INTERVAL seconds while the task waits or runs, then the content, the finish and
`data: [DONE]`. A prompt the model answered with text only (AI Studio's refusal) is a text answer here.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.response import Stream

from gateway.api.errors import request_language
from gateway.api.faces import (
    TaskFailed,
    data_url,
    dispatcher_of,
    face_error,
    failure,
    openai_error,
    run_all,
)
from gateway.api import conversation
from gateway.api.task_options import task_meta
from gateway.dispatcher import GenerationRequest, TaskResult
from gateway.errors import Invalid
from gateway.settings import FaceSettings
TEXT_ANSWER = "blocked"  # the model answered with text and no image: in a chat, that text is the answer


class ImageURL(msgspec.Struct, kw_only=True):
    url: str
    detail: str | None = None


class ImageContent(msgspec.Struct, kw_only=True):
    url: str


class ImagePart(msgspec.Struct, kw_only=True):
    type: str = "image_url"
    image_url: ImageContent


class ContentPart(msgspec.Struct, kw_only=True):
    type: str  # text or image_url; others (input_audio, file) are refused
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[ContentPart] | None = None
    images: list[ImagePart] | None = None  # an assistant message of ours, sent back with the conversation


class ChatCompletionIn(msgspec.Struct, kw_only=True):
    """OpenAI's body; sampling fields (temperature, max_tokens, tools, ...) are ignored: the page has none."""

    messages: list[ChatMessage]
    model: str | None = None
    stream: bool = False
    size: str | None = None  # an extension: as for images (a ratio such as "16:9", or WxH)


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str
    images: list[ImagePart] = []


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str = "stop"


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionOut(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage = msgspec.field(default_factory=Usage)


class OpenAIChatController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post("/chat/completions", operation_id="openaiChatCompletion", status_code=200, summary="Chat completion (OpenAI)")
    async def completions(self, request: Request[Any, Any, Any], data: JSONBody[ChatCompletionIn]) -> Any:
        generation = await chat_request(request, data)
        meta = await task_meta(request, "openai")
        if data.stream:
            task = await dispatcher_of(request).begin(generation, meta=meta)  # a 429/503 still comes as a status
            return _stream(request, task, generation.model)
        (result,) = await run_all(request, [generation], meta)
        return _completion(result, generation.model, request_language(request))


async def chat_request(request: Request[Any, Any, Any], body: ChatCompletionIn) -> GenerationRequest:
    """The conversation as one generation: the last user message's text and images, the earlier messages'
    images as references and their requests as context (gateway/api/conversation.py)."""
    last = _last_user_index(body.messages)
    turns = [turn for index, message in enumerate(body.messages) if (turn := _turn(message, strict=index == last)) is not None]
    return await conversation.openai_style_generation(request, turns, body.model, body.size)


def _last_user_index(messages: list[ChatMessage]) -> int:
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise Invalid("messages_no_user")
    return users[-1]


def _turn(message: ChatMessage, *, strict: bool) -> conversation.Turn | None:
    """A user or assistant message as a turn (others, such as system, say nothing to an image page). Parts this
    face cannot use are refused in the new turn, and passed over in earlier ones (a chat app's own history)."""
    if message.role not in ("user", "assistant"):
        return None
    texts: list[str] = []
    images: list[str] = []
    for part in _parts(message):
        if part.type == "text":
            text = part.text or ""
            if message.role == "assistant":
                text, pictures = conversation.markdown_images(text)  # our own answers carry their images so too
                images += pictures
            texts.append(text)
        elif part.type == "image_url":
            url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
            if not url:
                raise Invalid("image_url_missing", index=len(images) + 1)
            images.append(url)
        elif strict:
            raise Invalid("messages_part_unsupported", type=part.type[:40])
    images += [image.image_url.url for image in message.images or []]
    return conversation.Turn("user" if message.role == "user" else "model", texts, images)


def _parts(message: ChatMessage) -> list[ContentPart]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [ContentPart(type="text", text=message.content)]
    return message.content


# Answers ---------------------------------------------------------------------------------------------


def markdown(result: TaskResult) -> str:
    """The model's text, then each image as a Markdown data-URL image."""
    pictures = [f"![image {n}]({data_url(image)})" for n, image in enumerate(result.images_b64, 1)]
    return "\n\n".join(filter(None, [result.text or "", *pictures]))


def assistant_message(result: TaskResult) -> AssistantMessage:
    images = [ImagePart(image_url=ImageContent(url=data_url(image))) for image in result.images_b64]
    return AssistantMessage(content=markdown(result), images=images)


def _text_only(result: TaskResult) -> bool:
    return result.error_code == TEXT_ANSWER and bool(result.text)


def _completion(result: TaskResult, model: str, language: str) -> ChatCompletionOut:
    if not (result.succeeded and result.images_b64) and not _text_only(result):
        raise TaskFailed(failure(result, language))
    reason = "stop" if result.succeeded else "content_filter"
    choice = Choice(message=assistant_message(result), finish_reason=reason)
    return ChatCompletionOut(id=f"chatcmpl-{result.task_id}", created=int(time.time()), model=model, choices=[choice])


def _stream(request: Request[Any, Any, Any], task: asyncio.Task[TaskResult], model: str) -> EventStream:
    settings: FaceSettings = request.app.state.settings.faces
    language = request_language(request)
    chunk_id = f"chatcmpl-{uuid.uuid4()}"
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return _event(body)

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        while not task.done():
            done, _ = await asyncio.wait({task}, timeout=settings.sse_keepalive_interval)
            if not done:
                yield b": keep-alive\n\n"  # a comment: proxies and clients see the connection alive
        try:
            result = task.result()
        except Exception as exc:  # noqa: BLE001 - a 503 after the wait: told in the stream, whose status is sent
            yield _event(openai_error(face_error(request, exc)))
            yield b"data: [DONE]\n\n"
            return
        if not (result.succeeded and result.images_b64) and not _text_only(result):
            yield _event(openai_error(failure(result, language)))
        else:
            message = assistant_message(result)
            images = [msgspec.to_builtins(image) for image in message.images]
            yield chunk({"content": message.content, "images": images})
            yield chunk({}, "stop" if result.succeeded else "content_filter")
        yield b"data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return EventStream(events(), media_type="text/event-stream", headers=headers)


class EventStream(Stream):
    """A stream that keeps its own media type (a plain `Stream` takes its handler's, here JSON)."""

    def to_asgi_response(self, *args: Any, media_type: Any = None, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, media_type=self.media_type, **kwargs)


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"


"""A chat conversation as one generation, for the OpenAI chat, Gemini generateContent and Anthropic Messages faces.

Chat apps edit in conversation ("a cat on a sofa", then "now make it red"): the page makes one image per task,
so the new turn carries what the conversation already has.
- References: the new user turn's own images first (as sent; more than the limit is a 422), then the images of
  earlier turns, the user's and the model's own, newest first, without repeats, up to the limit
  (GATEWAY_MAX_REFERENCE_IMAGES); none for a model that takes no references.
- Prompt: the new turn's text; when earlier user turns said something, it is followed by those requests, oldest
  first, at most GATEWAY_CHAT_CONTEXT_CHARS characters of them (the newest kept) and never past the prompt
  limit. The model's own words ("Here is your image") are not repeated to it.
An image is a data URL, base64 (Gemini's inline data), an http(s) URL fetched under the fetch limits, or a
signed link this gateway made (read from the kept result, not fetched). The chat and Anthropic faces answer with
Markdown images; sent back as history, those are the model's images of that turn.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from litestar import Request

from gateway.api.faces import dispatcher_of, limits_of
from gateway.api.image_urls import FILES_PATH, own_image
from gateway.api.openai_requests import model_spec, openai_request
from gateway.api.remote_images import fetch_image
from gateway.dispatcher import GenerationRequest
from gateway.dispatcher.inputs import decoded_reference
from gateway.errors import Invalid, TooLarge
from gateway.settings import FaceSettings

CONTEXT_HEADER = "Earlier requests in this conversation, oldest first:"
# A Markdown image whose target is a data URL or an http(s) URL: the images of an answer sent back as history.
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*((?:data:image/|https?://)[^)\s]+)\s*\)")


@dataclass(frozen=True)
class Turn:
    """One message: who said it (`user`, or `model` for the assistant), its texts and its images in order."""

    role: str
    texts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Conversation:
    """What the generation gets from a conversation: the prompt and the images to send as references."""

    prompt: str
    images: list[str]
    from_history: int  # how many of `images` came from earlier turns
    words: str = ""  # the new turn's own text, without the earlier requests

    @property
    def own_images(self) -> int:
        return len(self.images) - self.from_history


def read(turns: Sequence[Turn], *, max_references: int, takes_references: bool, context_chars: int,
         max_prompt_chars: int, no_user: str = "messages_no_user") -> Conversation:
    """The prompt and references of the last user turn, given the turns before it."""
    users = [i for i, turn in enumerate(turns) if turn.role == "user"]
    if not users:
        raise Invalid(no_user)
    last = users[-1]
    current, earlier = turns[last], turns[:last]
    if len(current.images) > max_references:
        raise Invalid("too_many_references", limit=max_references)
    history = _history_images(earlier, exclude=current.images) if takes_references else []
    room = max(0, max_references - len(current.images))
    text = "\n".join(t for t in current.texts if t.strip())
    prompt = with_context(text, [t for turn in earlier if turn.role == "user" for t in turn.texts if t.strip()],
                          context_chars, max_prompt_chars)
    return Conversation(prompt, [*current.images, *history[:room]], min(room, len(history)), text)


def _history_images(earlier: Sequence[Turn], exclude: Sequence[str]) -> list[str]:
    """Earlier turns' images, newest turn first (a turn's own images keep their order), each once."""
    seen = set(exclude)
    found = []
    for turn in reversed(earlier):
        for image in turn.images:
            if image not in seen:
                seen.add(image)
                found.append(image)
    return found


def with_context(text: str, earlier: Sequence[str], context_chars: int, max_prompt_chars: int) -> str:
    """`text`, then the earlier requests that fit in `context_chars` and the prompt limit, newest kept."""
    budget = min(context_chars, max_prompt_chars - len(text) - len(CONTEXT_HEADER) - 2)
    kept: list[str] = []
    for request in reversed(earlier):
        line = "- " + " ".join(request.split())
        if budget - len(line) - 1 < 0:
            break
        budget -= len(line) + 1
        kept.append(line)
    if not kept:
        return text
    return "\n".join([text, "", CONTEXT_HEADER, *reversed(kept)])


def signed_link_of(url: str) -> tuple[str, int, str, str] | None:
    """(task id, index, expires, signature) when `url` is an image link this gateway signs, else None."""
    parts = urlsplit(url)
    if not parts.path.startswith(FILES_PATH + "/"):
        return None
    task_id, _, name = parts.path[len(FILES_PATH) + 1:].partition("/")
    stem = name.split(".", 1)[0]
    query = parse_qs(parts.query)
    if not task_id or not stem.isdigit() or len(stem) > 3:
        return None
    return task_id, int(stem), query.get("expires", [""])[0], query.get("signature", [""])[0]


async def resolve(images: Sequence[str], *, decode: Callable[[str, int], bytes],
                  own_link: Callable[[tuple[str, int, str, str]], Awaitable[bytes | None]],
                  fetch: Callable[[str, int], Awaitable[bytes]]) -> list[bytes]:
    """The bytes of each reference: our own signed links from the kept results, other URLs fetched, data decoded."""
    found = []
    for index, image in enumerate(images):
        if image.startswith(("http://", "https://")):
            link = signed_link_of(image)
            own = await own_link(link) if link is not None else None
            found.append(own if own is not None else await fetch(image, index))
        else:
            found.append(decode(image, index))
    return found


async def openai_style_generation(request: Request[Any, Any, Any], turns: Sequence[Turn], model: Any,
                                  size: Any) -> GenerationRequest:
    """The chat and Anthropic faces' one generation: `turns` read as a conversation, its references resolved,
    `model` and OpenAI's `size` as for images."""
    limits = limits_of(request)
    faces: FaceSettings = request.app.state.settings.faces
    talk = read(
        turns, max_references=limits.max_reference_images, takes_references=model_spec(request, model).references,
        context_chars=faces.chat_context_chars, max_prompt_chars=limits.max_prompt_chars,
    )
    images = await references(request, talk.images)
    generation = openai_request(request, prompt=talk.prompt, model=model, size=size, images=images)
    return await as_chat_turn(request, generation, talk, images)


async def as_chat_turn(request: Request[Any, Any, Any], generation: GenerationRequest, talk: Conversation,
                       images: Sequence[bytes]) -> GenerationRequest:
    """The generation as a conversation's turn: the instance keeps its chat for the next turn, and continues the
    chat of the task that made the conversation's newest earlier image when its page still holds it."""
    if not talk.words.strip():
        return generation  # a turn of pictures alone: a new chat with the context as its prompt
    after = None
    if talk.from_history:
        newest = images[talk.own_images]
        after = await dispatcher_of(request).task_that_made(hashlib.sha256(newest).hexdigest())
    return replace(generation, chat_turn=talk.words, turn_references=talk.own_images,
                   continue_chat=str(after) if after is not None else None)


async def references(request: Request[Any, Any, Any], images: Sequence[str]) -> list[bytes]:
    """`resolve` as the faces use it: data checked under the reference limits, other URLs fetched under the
    fetch limits, our own signed links read from the kept results."""
    limits = limits_of(request)
    return await resolve(
        images, decode=lambda image, index: decoded_reference(image, index, limits),
        own_link=lambda link: own_image(request, link), fetch=lambda url, index: _fetched(request, url, index),
    )


async def _fetched(request: Request[Any, Any, Any], url: str, index: int) -> bytes:
    settings: FaceSettings = request.app.state.settings.faces
    limit = request.app.state.settings.inputs.max_reference_bytes
    data = await fetch_image(
        url, max_bytes=limit, timeout=settings.fetch_timeout,
        allow_private=settings.fetch_private_addresses,
    )
    if len(data) > limit:
        raise TooLarge("reference_too_large", index=index + 1, limit=limit)
    return data  # its format is checked with the others by the one check


def markdown_images(text: str) -> tuple[str, list[str]]:
    """An answer of ours sent back as history: its text without the Markdown images, and their targets."""
    return MARKDOWN_IMAGE.sub("", text).strip(), MARKDOWN_IMAGE.findall(text)

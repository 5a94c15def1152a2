"""Image URLs the gateway hands out (OpenAI's `response_format: url`): signed, expiring, no API key needed.

A URL names a task's image by index and carries its expiry and an HMAC of both, keyed from the gateway's
secret (GATEWAY_SECRET_KEY, or the key kept in the database on Postgres, else in the data folder), so every
gateway sharing that secret serves it. The image itself is the task's kept result (GATEWAY_TASK_RESULT_TTL,
in the database on Postgres: every replica reads it): a URL outlives neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.response import Stream
from litestar.params import FromPath, FromQuery

from gateway.api.faces import dispatcher_of, exception_handlers, mime_of, openai_error
from gateway.dispatcher.results import ImageStream
from gateway.errors import Forbidden, Gone, Invalid, NotFound
from gateway.settings import FaceSettings

FILES_PATH = "/v1/images/files"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


class ImageSigner:
    def __init__(self, key: bytes, ttl: float) -> None:
        self._key = key
        self.ttl = ttl

    @classmethod
    def from_settings(cls, settings: FaceSettings, secret: str) -> ImageSigner:
        """`secret`: the fleet's signing key (gateway/signing.py), the same on every gateway of one database."""
        # Derived, so a leaked URL signature says nothing about the key that signs the panel's cookies.
        key = hmac.new(secret.encode(), b"aistudio-fleet image urls", hashlib.sha256).digest()
        return cls(key, min(settings.image_url_ttl, settings.task_result_ttl))

    def signature(self, task_id: str, index: int, expires: int) -> str:
        message = f"{task_id}/{index}/{expires}".encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, message, hashlib.sha256).digest()).decode().rstrip("=")

    def path(self, task_id: uuid.UUID, index: int, mime: str, *, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.ttl)
        name = f"{index}.{_EXTENSIONS.get(mime, 'png')}"
        return f"{FILES_PATH}/{task_id}/{name}?expires={expires}&signature={self.signature(str(task_id), index, expires)}"

    def check(self, task_id: str, index: int, expires: str, signature: str, *, now: float | None = None) -> None:
        """Forbidden unless the signature is ours; Gone (410, like its expired result) once the URL has expired."""
        if not expires.isdigit() or not hmac.compare_digest(signature.encode(), self.signature(task_id, index, int(expires)).encode()):
            raise Forbidden("image_url_invalid")
        if int(expires) < (now if now is not None else time.time()):
            raise Gone("image_url_expired")


def signer_of(request: Request[Any, Any, Any]) -> ImageSigner:
    state = request.app.state
    signer = state.get("image_signer")
    if signer is None:  # made once per app from the injected settings
        signer = state["image_signer"] = ImageSigner.from_settings(state.settings.faces, state.fleet.secret)
    return signer


def image_url(request: Request[Any, Any, Any], task_id: uuid.UUID, index: int, image_b64: str) -> str:
    settings: FaceSettings = request.app.state.settings.faces
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    mime = mime_of(base64.b64decode(image_b64[:24]))
    return base + signer_of(request).path(task_id, index, mime)


class ImageFilesController(Controller):
    """Outside the API keys: the signature is the credential."""

    path = FILES_PATH
    tags = ["openai"]
    exception_handlers = exception_handlers(openai_error)

    @get("/{task_id:str}/{name:str}", operation_id="getImageFile", summary="An image a signed URL points at")
    async def image_file(
        self, request: Request[Any, Any, Any], task_id: FromPath[str], name: FromPath[str], expires: FromQuery[str] = "", signature: FromQuery[str] = ""
    ) -> Response[bytes]:
        stem = name.split(".", 1)[0]
        if not stem.isdigit() or len(stem) > 3:
            raise NotFound("image_not_found")
        index = int(stem)
        signer_of(request).check(task_id, index, expires, signature)
        image = await dispatcher_of(request).image(task_id, index)  # this one alone, not the task's others
        # The URL names one immutable image until it expires.
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        if len(image.first) >= image.size:
            return Response(image.first, media_type=mime_of(image.first), headers=headers)
        # Streamed as the store reads it (a bucket's object), with its length known up front.
        return Stream(_chunks(image), media_type=mime_of(image.first), headers={**headers, "Content-Length": str(image.size)})


async def _chunks(image: ImageStream) -> AsyncIterator[bytes]:
    yield image.first
    async for chunk in image.rest:
        yield chunk


async def signed_image(request: Request[Any, Any, Any], task_id: str, index: int, expires: str, signature: str) -> bytes:
    """The image a signed URL names, whole: 403 for a signature that is not ours, 410 expired or gone, 404 none."""
    signer_of(request).check(task_id, index, expires, signature)
    image = await dispatcher_of(request).image(task_id, index)
    return image.first + b"".join([chunk async for chunk in image.rest])


async def own_image(request: Request[Any, Any, Any], link: tuple[str, int, str, str]) -> bytes | None:
    """A conversation's reference that is one of our signed links, read from the kept result rather than
    fetched; None when the signature is not ours (another server's link of the same shape: fetched)."""
    try:
        return await signed_image(request, *link)
    except Forbidden:
        return None
    except (NotFound, Gone):
        raise Invalid("reference_link_expired") from None

"""The OpenAI face: the images and chat controllers behind the API keys, the signed image URLs beside them."""

from __future__ import annotations

from litestar import Router

from gateway.api.faces import exception_handlers, openai_error
from gateway.api.image_urls import ImageFilesController
from gateway.api.keys import require_api_key
from gateway.api.openai_chat import OpenAIChatController
from gateway.api.openai_images import OpenAIImagesController
from gateway.settings import InputSettings


def openai_router(settings: InputSettings) -> Router:
    """OpenAI's image API behind the API keys; the signed image URLs beside it, outside them."""
    guarded = Router(
        path="/",
        route_handlers=[OpenAIImagesController, OpenAIChatController],
        guards=[require_api_key],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers=exception_handlers(openai_error),
    )
    return Router(path="/", route_handlers=[guarded, ImageFilesController])

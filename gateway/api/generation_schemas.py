"""Typed bodies of the old generation API, so the OpenAPI document at /schema describes them.

The old endpoints keep parsing their bodies themselves (`gateway.dispatcher.inputs`: its 400/413/422 messages
in Chinese and English are what old clients see), so their request schemas are given to the OpenAPI document
through `documented_body`, not through a `data` parameter. The choices of `model`, `aspect_ratio` and
`image_size` in every schema come from the one catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

from fleet_contract import catalogue


class GenerateIn(msgspec.Struct, kw_only=True):
    """POST /generate and POST /tasks."""

    prompt: Annotated[str, msgspec.Meta(description="What to draw or change")]
    aspect_ratio: Annotated[str | None, msgspec.Meta(description="A ratio the model offers, or Auto")] = None
    model: Annotated[str | None, msgspec.Meta(description="A catalogue model id or alias; default: the catalogue's")] = None
    image_size: Annotated[str | None, msgspec.Meta(description="1K, 2K or 4K where the model offers sizes")] = None
    reference_image_b64: Annotated[str | None, msgspec.Meta(description="One reference image, base64 or a data URL")] = None
    reference_images_b64: Annotated[list[str] | None, msgspec.Meta(description="Reference images, base64 or data URLs")] = None
    output_format: Annotated[str | None, msgspec.Meta(description="png (default), jpeg or webp")] = None
    output_quality: Annotated[int, msgspec.Meta(ge=1, le=100, description="jpeg/webp quality")] | None = None
    callback_url: Annotated[str | None, msgspec.Meta(description="POST /tasks: where the result is sent, signed")] = None


class GenerateFormIn(msgspec.Struct, kw_only=True):
    """POST /generate-with-file (multipart); files under `reference_images`."""

    prompt: str
    aspect_ratio: str | None = None
    model: str | None = None
    image_size: str | None = None
    output_format: str | None = None
    output_quality: int | None = None


class ImageEditFormIn(msgspec.Struct, kw_only=True):
    """POST /v1/images/edits (multipart, OpenAI's fields); files under `image` or `image[]`; `mask` is refused."""

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None


class TaskOut(msgspec.Struct, kw_only=True):
    """The old answer (`success`, `task_id`, `message`, `generated_images`, `ai_text_response`) plus what helps."""

    success: bool
    task_id: str
    message: str
    generated_images: list[str]
    ai_text_response: str | None
    status: str
    done: bool
    error_code: str | None
    error_message: str | None
    instance: str | None
    instance_id: str | None
    attempts: int
    model: str | None
    image_size: str | None
    timings: dict[str, Any]
    mode: str
    created_at: str | None
    finished_at: str | None
    output_format: str | None = None
    image_hashes: list[str] = []  # sha256 (hex) of each image, in order


class TaskAcceptedOut(msgspec.Struct, kw_only=True):
    success: bool
    task_id: str
    status: str
    message: str
    status_url: str


def json_schema(struct: type) -> dict[str, Any]:
    """A struct's JSON schema, inlined (no $defs), with the catalogue's choices filled in."""
    schema = msgspec.json.schema(struct)
    defs = schema.pop("$defs", {})
    resolved = _inline(schema, defs)
    _catalogue_choices(resolved)
    return resolved


def form_schema(struct: type, files: dict[str, str]) -> dict[str, Any]:
    """A multipart form's schema: the struct's fields, plus file fields (name → description) as binary arrays."""
    schema = json_schema(struct)
    for name, description in files.items():
        schema["properties"][name] = {"type": "array", "items": {"type": "string", "format": "binary"}, "description": description}
    return schema


def documented_body(schema: dict[str, Any], media_type: str = "application/json") -> type[Operation]:
    """An operation class that documents a request body the handler reads itself."""

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if self.request_body is None:
                self.request_body = RequestBody(required=True, content={media_type: OpenAPIMediaType(schema=schema)})  # type: ignore[arg-type]

    return DocumentedOperation


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def _catalogue_choices(schema: dict[str, Any]) -> None:
    offered = catalogue.load().driven
    choices = {
        "model": [name for m in offered for name in (m.id, *m.aliases)],
        "aspect_ratio": list(dict.fromkeys([catalogue.AUTO, *(r for m in offered for r in m.aspect_ratios)])),
        "image_size": list(dict.fromkeys(s for m in offered for s in m.image_sizes)),
        "output_format": ["png", "jpeg", "webp"],
    }
    for name, values in choices.items():
        field = schema.get("properties", {}).get(name)
        if field is not None:
            field["examples"] = values[:20]
            field["description"] = (field.get("description", "") + " (one of: " + ", ".join(values) + ")").strip()

"""What the OpenAI images and chat faces share: OpenAI's options (model, size, output) mapped onto the catalogue
and checked into one `GenerationRequest`. Both faces import this; neither imports the other."""

from __future__ import annotations

import math
import re
from typing import Any

from litestar import Request

from fleet_contract.catalogue import ModelSpec
from gateway.api.faces import limits_of
from gateway.dispatcher import GenerationRequest, form_request, generation_options
from gateway.dispatcher.inputs import refuse_control_characters
from gateway.errors import Invalid

# OpenAI's sizes (DALL·E 2 and 3, gpt-image-1); any other WxH is mapped the same way, to the nearest ratio.
OPENAI_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792", "auto")
_WXH = re.compile(r"^(\d{2,5})x(\d{2,5})$")
_RATIO = re.compile(r"^(\d{1,2}):(\d{1,2})$")
_SIZE_STEPS = ((1024, "1K"), (2048, "2K"), (4096, "4K"))  # the longer side up to this → the page's size


def model_spec(request: Request[Any, Any, Any], model: Any) -> ModelSpec:
    """The catalogue's model (an earlier name or the operator's alias resolves to its id); 422 naming the
    choices for an unknown one, or the successor of a retired one."""
    return generation_options(model, None, None, limits_of(request).model_aliases).spec


def ratio_and_size(size: Any, spec: ModelSpec) -> tuple[str | None, str | None]:
    """OpenAI's `size` as (aspect ratio, image size): the model's nearest ratio, and the page's size whose
    longer side covers the asked one where the model offers sizes; a ratio passes as it is."""
    if size is None or size == "" or size == "auto":
        return None, None
    if not isinstance(size, str):
        raise Invalid("field_type", field="size", expected="string")
    text = size.strip().lower()
    if _RATIO.match(text):
        return text, None  # checked against the model's ratios by the one check
    match = _WXH.match(text)
    if match is None:
        raise Invalid("size_unknown", value=size[:40], choices=", ".join(OPENAI_SIZES))
    width, height = int(match.group(1)), int(match.group(2))
    if width == 0 or height == 0:
        raise Invalid("size_unknown", value=size[:40], choices=", ".join(OPENAI_SIZES))
    return nearest_ratio(width / height, spec.aspect_ratios), _page_size(max(width, height), spec)


def nearest_ratio(wanted: float, ratios: tuple[str, ...]) -> str:
    """By distance in log space, so 2:1 is as far from 1:1 as 1:2 is."""

    def distance(ratio: str) -> float:
        w, h = (int(part) for part in ratio.split(":"))
        return abs(math.log(wanted) - math.log(w / h))

    return min(ratios, key=distance)


def _page_size(longer_side: int, spec: ModelSpec) -> str | None:
    if not spec.image_sizes:
        return None
    for limit, name in _SIZE_STEPS:
        if longer_side <= limit and name in spec.image_sizes:
            return name
    return spec.image_sizes[-1]


def openai_request(
    request: Request[Any, Any, Any],
    *,
    prompt: Any,
    model: Any,
    size: Any,
    images: list[bytes],
    output_format: Any = None,
    output_compression: Any = None,
) -> GenerationRequest:
    """The one checked request behind an OpenAI call (prompt, model, ratio and size, references, output)."""
    refuse_control_characters({"prompt": prompt, "model": model, "size": size})
    spec = model_spec(request, model)
    aspect_ratio, image_size = ratio_and_size(size, spec)
    quality = max(1, output_compression) if isinstance(output_compression, int) and not isinstance(output_compression, bool) else output_compression
    return form_request(
        prompt, aspect_ratio, images, limits_of(request), model=spec.id, image_size=image_size,
        output_format=output_format, output_quality=quality,
    )

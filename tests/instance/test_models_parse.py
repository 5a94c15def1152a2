"""The instance's reading of model, ratio and size against the catalogue (no browser needed), and that the
gateway reads it through the same reader."""

from __future__ import annotations

from typing import Any

import pytest

from fleet_contract import catalogue
from instance.app import parse_generation
from instance.errors import BadInput
from instance.settings import InstanceSettings

# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
SETTINGS = InstanceSettings()


def parse(**body: Any):
    return parse_generation({"prompt": "a cat", **body}, SETTINGS)


def test_an_old_request_keeps_its_meaning() -> None:
    request = parse(aspect_ratio="16:9", reference_images_b64=[PNG], task_id="t1")
    assert (request.model, request.aspect_ratio, request.image_size) == ("gemini-nano-banana-2.1", "16:9", None)
    assert request.task_id == "t1" and len(request.references) == 1
    assert parse().aspect_ratio == "Auto"


def test_the_instance_default_model_is_its_setting() -> None:
    request = parse_generation({"prompt": "p"}, InstanceSettings(model="gemini-3-pro-image-preview"))
    assert request.model == "gemini-3-pro-image"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "gemini-3-pro-image-preview", "image_size": "4K"}, ("gemini-3-pro-image", "Auto", "4K")),
        ({"model": "gemini-nano-banana-2.1", "aspect_ratio": "8:1", "image_size": "2k"}, ("gemini-nano-banana-2.1", "8:1", "2K")),
        ({"aspect_ratio": "1:4", "image_size": "4K"}, ("gemini-nano-banana-2.1", "1:4", "4K")),
        ({"model": "gemini-3.1-flash-lite-image", "aspect_ratio": "4:1", "image_size": "1K"}, ("gemini-3.1-flash-lite-image", "4:1", "1K")),
        ({"model": "gemini-2.5-flash-image-preview", "aspect_ratio": "21:9"}, ("gemini-2.5-flash-image", "21:9", None)),
    ],
)
def test_models_ratios_and_sizes_it_offers(body: dict[str, Any], expected: tuple[str, str, str | None]) -> None:
    request = parse(**body)
    assert (request.model, request.aspect_ratio, request.image_size) == expected


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "gemini-9"}, ["gemini-9", "gemini-nano-banana-2.1", "gemini-3-pro-image", "gemini-3.1-flash-lite-image"]),
        ({"model": "gemini-3-pro-image", "aspect_ratio": "1:4"}, ["1:4", "21:9", "Auto"]),
        ({"model": "gemini-2.5-flash-image", "aspect_ratio": "8:1"}, ["8:1", "gemini-2.5-flash-image"]),
        ({"model": "gemini-3-pro-image", "image_size": "8K"}, ["8K", "1K, 2K, 4K"]),
        ({"model": "gemini-2.5-flash-image", "image_size": "1K"}, ["1K", "none"]),
        ({"model": "gemini-3.1-flash-lite-image", "image_size": "2K"}, ["2K", "offered: 1K"]),
        ({"image_size": "512"}, ["512", "1K, 2K, 4K"]),
        ({"model": ["x"]}, ["model"]),
        ({"model": "gemini-3-pro-image", "image_size": 4}, ["image_size"]),
        ({"model": "imagen-4.0-fast-generate-001"}, ["shut down", "2026-08-17", "gemini-3.1-flash-lite-image"]),
        ({"model": "gemini-3.1-flash-image"}, ["shut down", "2026-10-29", "gemini-nano-banana-2.1"]),
        ({"model": "gemini-3.1-flash-image-preview"}, ["shut down", "gemini-nano-banana-2.1"]),
    ],
)
def test_what_the_model_lacks_is_422_naming_what_is_allowed(body: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        parse(**body)
    assert caught.value.status_code == 422
    for word in words:
        assert word in caught.value.message


def test_gateway_and_instance_read_one_catalogue_through_one_reader() -> None:
    from gateway.dispatcher import inputs as gateway_inputs
    from instance import app as instance_app

    assert instance_app.load_catalogue is catalogue.load
    assert gateway_inputs.catalogue is catalogue
    assert catalogue.load().default_model == SETTINGS.model

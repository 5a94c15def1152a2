"""Generation requests as clients send them, checked at the gateway before anything is dispatched.

The limits mirror the instance's own (docs/instance-api.md), so a request the gateway accepts is one an
instance accepts; the gateway never imports the instance package, it only shares the contract.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from fleet_contract import catalogue
from fleet_contract.catalogue import ModelSpec
from fleet_contract.messages import GenerateRequest, ModelOptions
from gateway.errors import BadRequest, Invalid, TooLarge
from gateway.accounts import page_catalogue
from gateway.settings import InputSettings

# C0 and C1 control characters but tab, newline and carriage return; lone surrogates (no UTF-8 form). Postgres
# refuses NUL in text, and none of them belongs in a prompt or a name: they are refused, not stripped.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

# Magic numbers of the formats AI Studio's upload accepts.
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


@dataclass(frozen=True)
class InputLimits:
    max_prompt_chars: int
    max_reference_images: int
    max_reference_bytes: int
    max_body_bytes: int
    # The operator's GATEWAY_MODEL_ALIASES: a name a client sends -> the id of the current model that runs it.
    model_aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_settings(cls, settings: InputSettings) -> InputLimits:
        return cls(
            settings.max_prompt_chars,
            settings.max_reference_images,
            settings.max_reference_bytes,
            settings.max_body_bytes,
            MappingProxyType(dict(settings.model_aliases)),
        )


@dataclass(frozen=True)
class GenerationRequest:
    """A checked request: reference images are base64 without any data-URL prefix, ready for an instance."""

    prompt: str
    aspect_ratio: str
    references_b64: tuple[str, ...] = ()
    model: str = field(default_factory=lambda: catalogue.load().default_model)  # an id of the catalogue, never an alias
    image_size: str | None = None  # None: the page's default size
    output_format: str = "png"  # what the gateway answers with: png (the page's own), jpeg or webp
    output_quality: int | None = None  # jpeg and webp, 1-100; None: the converter's default
    # A conversation's turn (the chat faces): its own words and how many of the references are its own; the task
    # that made the conversation's last image, whose chat the instance may still hold (continued when it does).
    chat_turn: str | None = None
    turn_references: int = 0
    continue_chat: str | None = None

    @property
    def after_task(self) -> uuid.UUID | None:
        """The task whose instance this turn would rather have (it may hold the conversation's chat)."""
        try:
            return uuid.UUID(self.continue_chat) if self.continue_chat else None
        except ValueError:
            return None

    def instance_payload(self, task_id: str) -> GenerateRequest:
        # the operator's entry, or a model the packaged data lacks: the instance is told the options checked here
        offered = page_catalogue.operator_spec(self.model) or (
            None if catalogue.load().find(self.model) is not None else page_catalogue.offered_spec(self.model))
        return GenerateRequest(
            model_options=None if offered is None else ModelOptions(
                ratios=list(offered.aspect_ratios), sizes=list(offered.image_sizes), label=offered.name),
            prompt=self.prompt,
            aspect_ratio=self.aspect_ratio,
            model=self.model,
            reference_images_b64=list(self.references_b64),
            task_id=task_id,
            image_size=self.image_size,
            keep_chat=self.chat_turn is not None,
            continue_chat=self.continue_chat if self.chat_turn is not None else None,
            turn_prompt=self.chat_turn,
            turn_references=self.turn_references if self.chat_turn is not None else 0,
        )


def parse_json_request(raw: bytes, limits: InputLimits) -> GenerationRequest:
    """POST /generate and POST /tasks: the old JSON body, with one or several reference images."""
    return body_request(json_object(raw, limits), limits)


def json_object(raw: bytes, limits: InputLimits) -> dict[str, Any]:
    if len(raw) > limits.max_body_bytes:
        raise TooLarge("body_too_large", limit=limits.max_body_bytes)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body_not_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    return body


def body_request(body: dict[str, Any], limits: InputLimits) -> GenerationRequest:
    """The old JSON body, already parsed into an object."""
    refuse_control_characters({name: body.get(name) for name in _TEXT_FIELDS})
    prompt = _prompt(body.get("prompt"), limits)
    options = generation_options(body.get("model"), body.get("aspect_ratio"), body.get("image_size"), limits.model_aliases)
    encoded = _reference_strings(body.get("reference_image_b64"), body.get("reference_images_b64"), limits)
    options.check_references(len(encoded))
    references = tuple(_checked_base64(text, index, limits) for index, text in enumerate(encoded))
    output_format, output_quality = output_options(body.get("output_format"), body.get("output_quality"))
    return replace(options.request(prompt, references), output_format=output_format, output_quality=output_quality)


def form_request(
    prompt: Any,
    aspect_ratio: Any,
    files: list[bytes],
    limits: InputLimits,
    *,
    model: Any = None,
    image_size: Any = None,
    output_format: Any = None,
    output_quality: Any = None,
) -> GenerationRequest:
    """POST /generate-with-file: form fields and uploaded files (already read) under `reference_images`."""
    refuse_control_characters({"prompt": prompt, "model": model, "aspect_ratio": aspect_ratio, "image_size": image_size})
    checked_prompt = _prompt(prompt, limits)
    options = generation_options(model, aspect_ratio, image_size, limits.model_aliases)
    if len(files) > limits.max_reference_images:
        raise Invalid("too_many_references", limit=limits.max_reference_images)
    options.check_references(len(files))
    references = tuple(_checked_image(data, index, limits) for index, data in enumerate(files))
    checked_format, checked_quality = output_options(output_format, output_quality)
    request = options.request(checked_prompt, tuple(base64.b64encode(data).decode("ascii") for data in references))
    return replace(request, output_format=checked_format, output_quality=checked_quality)


_TEXT_FIELDS = ("prompt", "model", "aspect_ratio", "image_size")


def refuse_control_characters(fields: dict[str, Any]) -> None:
    """422 naming every text field that holds a control character (tab, newline and CR are text)."""
    bad = [name for name, value in fields.items() if isinstance(value, str) and _CONTROL.search(value)]
    if bad:
        raise Invalid("control_characters", fields=", ".join(bad))


@dataclass(frozen=True)
class GenerationOptions:
    """The model and what it was asked for, checked against the catalogue."""

    spec: ModelSpec
    aspect_ratio: str
    image_size: str | None

    def check_references(self, count: int) -> None:
        if count and not self.spec.references:
            raise Invalid("model_takes_no_references", model=self.spec.id)

    def request(self, prompt: str, references_b64: tuple[str, ...]) -> GenerationRequest:
        return GenerationRequest(prompt, self.aspect_ratio, references_b64, self.spec.id, self.image_size)


def generation_options(
    model: Any, aspect_ratio: Any, image_size: Any, aliases: Mapping[str, str] | None = None
) -> GenerationOptions:
    """The one check of model, ratio and size for every face: 422 naming what the model offers.
    Absent fields keep the old behaviour: the default model, the page's default ratio and size.
    `aliases` is the operator's GATEWAY_MODEL_ALIASES (InputLimits.model_aliases)."""
    spec = resolve_model(model, aliases)
    return GenerationOptions(spec, _aspect_ratio(aspect_ratio, spec), _image_size(image_size, spec))


def resolve_model(value: Any, aliases: Mapping[str, str] | None = None) -> ModelSpec:
    """The current model a request's `model` names: the default when absent; a current model by its id or an
    earlier name; else the operator's alias; else a 422 (model_retired naming the successor, model_unknown)."""
    known = catalogue.load()
    if value is None or value == "":
        return known.default
    if not isinstance(value, str):
        raise Invalid("field_type", field="model", expected="string")
    name = value.strip()
    spec = known.find(name)
    if spec is not None:
        spec = page_catalogue.operator_spec(spec.id) or spec  # the operator's edit of a packaged model
    elif (edited := page_catalogue.operator_spec(name)) is not None:
        spec = edited  # a model the operator added
    if spec is None and aliases and name in aliases:
        spec = known.find(aliases[name])  # checked at start: a current, driven model
    if spec is None and known.find_retired(name) is None:
        # a model the packaged data lacks that a signed-in account's page offers, with the options it showed
        spec = page_catalogue.offered_spec(name)
    choices = ", ".join(m.id for m in known.driven)
    if spec is None:
        retired = known.find_retired(name)
        if retired is not None:
            raise Invalid("model_retired", value=name[:80], date=retired.retired_on, successor=retired.successor)
        raise Invalid("model_unknown", value=value[:80], choices=choices)
    if not spec.driven:
        raise Invalid("model_not_driven", value=spec.id, choices=choices)
    return spec


def _prompt(value: Any, limits: InputLimits) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Invalid("prompt_missing")
    if not isinstance(value, str):
        raise Invalid("field_type", field="prompt", expected="string")
    if len(value) > limits.max_prompt_chars:
        raise Invalid("prompt_too_long", limit=limits.max_prompt_chars, length=len(value))
    return value


def _aspect_ratio(value: Any, spec: ModelSpec) -> str:
    if value is None or value == "":
        return catalogue.AUTO
    if not isinstance(value, str):
        raise Invalid("field_type", field="aspect_ratio", expected="string")
    if value not in spec.ratio_choices:
        raise Invalid("aspect_ratio_unknown", value=value[:40], model=spec.id, choices=", ".join(spec.ratio_choices))
    return value


def _image_size(value: Any, spec: ModelSpec) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid("field_type", field="image_size", expected="string")
    size = spec.size(value)
    if size is None and not spec.image_sizes:
        raise Invalid("image_size_not_offered", value=value[:16], model=spec.id)
    if size is None:
        raise Invalid("image_size_unknown", value=value[:16], model=spec.id, choices=", ".join(spec.image_sizes))
    return size


def _reference_strings(single: Any, several: Any, limits: InputLimits) -> list[str]:
    """`reference_image_b64` (the old single field) and `reference_images_b64` (a list), in that order."""
    found: list[Any] = []
    if single is not None and single != "":
        found.append(single)
    if several is not None:
        if not isinstance(several, list):
            raise Invalid("field_type", field="reference_images_b64", expected="list of base64 strings")
        found.extend(several)
    if len(found) > limits.max_reference_images:
        raise Invalid("too_many_references", limit=limits.max_reference_images)
    for index, item in enumerate(found):
        if not isinstance(item, str):
            raise Invalid("reference_not_string", index=index + 1)
    return found


def _checked_base64(text: str, index: int, limits: InputLimits) -> str:
    payload = text.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or ";base64" not in header:
            raise Invalid("reference_not_base64", index=index + 1)
    payload = _standard_alphabet("".join(payload.split()))
    if not payload:
        raise Invalid("reference_empty", index=index + 1)
    # Bounded before decoding, so a huge string is refused without allocating its bytes.
    if len(payload) * 3 // 4 > limits.max_reference_bytes + 3:
        raise TooLarge("reference_too_large", index=index + 1, limit=limits.max_reference_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("reference_not_base64", index=index + 1) from None
    _checked_image(data, index, limits)
    return payload


# The URL-safe alphabet's two letters: what pydantic's clients (google-genai) send back in a chat's history.
_URL_SAFE = str.maketrans("-_", "+/")


def _standard_alphabet(payload: str) -> str:
    """Base64 in the standard alphabet: URL-safe base64 (RFC 4648 §5, padding optional) is read as Google's API
    reads it; a mix of both alphabets stays invalid."""
    if ("-" in payload or "_" in payload) and not ("+" in payload or "/" in payload):
        payload = payload.translate(_URL_SAFE)
        payload += "=" * (-len(payload) % 4)
    return payload


def _checked_image(data: bytes, index: int, limits: InputLimits) -> bytes:
    if not data:
        raise Invalid("reference_empty", index=index + 1)
    if len(data) > limits.max_reference_bytes:
        raise TooLarge("reference_too_large", index=index + 1, limit=limits.max_reference_bytes)
    if not _is_image(data):
        raise Invalid("reference_not_image", index=index + 1)
    return data


def _is_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def decoded_reference(text: str, index: int, limits: InputLimits) -> bytes:
    """One reference image sent as base64 or a data URL (the OpenAI and Gemini faces), checked, as bytes."""
    return base64.b64decode(_checked_base64(text, index, limits))


OUTPUT_FORMATS = ("png", "jpeg", "webp")


def output_options(output_format: Any, quality: Any) -> tuple[str, int | None]:
    """The answer's image format and quality, for every face: 422 naming the choices."""
    if output_format is None or output_format == "":
        fmt = "png"
    elif not isinstance(output_format, str):
        raise Invalid("field_type", field="output_format", expected="string")
    else:
        fmt = {"jpg": "jpeg"}.get(output_format.strip().lower(), output_format.strip().lower())
        if fmt not in OUTPUT_FORMATS:
            raise Invalid("output_format_unknown", value=output_format[:20], choices=", ".join(OUTPUT_FORMATS))
    if quality is None or quality == "":
        return fmt, None
    if isinstance(quality, str) and quality.strip().isdigit():
        quality = int(quality.strip())  # a form field
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise Invalid("output_quality_out_of_range", value=str(quality)[:20])
    return fmt, quality

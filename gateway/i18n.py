"""Messages in Simplified Chinese and English, chosen by `Accept-Language`."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

LANGUAGES = ("zh", "en")


@cache
def catalog(language: str) -> dict[str, str]:
    text = resources.files("gateway").joinpath("locales", f"{language}.json").read_text("utf-8")
    return json.loads(text)


def translate(key: str, language: str, **params: Any) -> str:
    """The message for `key`; a missing key or parameter falls back rather than failing an error response."""
    template = catalog(language).get(key) or catalog("en").get(key) or key
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template


def pick_language(accept_language: str | None, default: str) -> str:
    """The best of our languages for an `Accept-Language` header, by q-value; `default` when none fits."""
    if not accept_language:
        return default
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept_language.split(",")):
        tag, _, options = part.strip().partition(";")
        quality = 1.0
        if options.strip().startswith("q="):
            try:
                quality = float(options.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            choices.append((-quality, position, primary))
    return min(choices)[2] if choices else default

"""The panel's own words (labels, buttons) in Chinese and English; error messages come from gateway/locales."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from gateway.i18n import translate


@cache
def panel_catalog(language: str) -> dict[str, str]:
    text = resources.files("gateway.panel").joinpath("locales", f"{language}.json").read_text("utf-8")
    return json.loads(text)


def panel_text(key: str, language: str, **params: Any) -> str:
    """A panel label, else an API message by the same key; never fails on a missing parameter."""
    template = panel_catalog(language).get(key)
    if template is None:
        return translate(key, language, **params)
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template

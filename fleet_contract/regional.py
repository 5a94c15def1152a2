"""An instance's time zone and locale: the grammar both sides accept (IANA time zone names, BCP 47 language tags),
and the Accept-Language list a locale implies.

Pure functions: the gateway checks what operators give it, the instance reads INSTANCE_TIMEZONE and
INSTANCE_LOCALE with the same rules.
"""

from __future__ import annotations

import re
import zoneinfo
from functools import cache

MAX_LENGTH = 64
# A BCP 47 language tag as browsers use them: language, optional script, optional region, optional variants.
_LANGUAGE_TAG = re.compile(
    r"(?P<language>[a-z]{2,3})(?:-(?P<script>[a-z]{4}))?(?:-(?P<region>[a-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*)", re.IGNORECASE | re.ASCII)


class RegionalError(ValueError):
    """Why a time zone or a locale is refused; `field` is `timezone` or `locale` (message key <field>_invalid)."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"invalid {field}: {value[:MAX_LENGTH]!r}")
        self.field = field


@cache
def _zones() -> dict[str, str]:
    # Case-insensitive lookup of the canonical spelling: "asia/tokyo" is taken as Asia/Tokyo.
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def normalize_timezone(value: str | None) -> str | None:
    """An IANA time zone name in its canonical spelling (Asia/Tokyo); None or blank: none given."""
    if value is None or not value.strip():
        return None
    name = _zones().get(value.strip().lower()) if len(value) <= MAX_LENGTH else None
    if name is None:
        raise RegionalError("timezone", value)
    return name


def normalize_locale(value: str | None) -> str | None:
    """A language tag in its usual case (ja-JP, zh-Hans-CN); `_` is read as `-`; None or blank: none given."""
    if value is None or not value.strip():
        return None
    found = _LANGUAGE_TAG.fullmatch(value.strip().replace("_", "-")) if len(value) <= MAX_LENGTH else None
    if found is None:
        raise RegionalError("locale", value)
    parts = [found["language"].lower()]
    if found["script"]:
        parts.append(found["script"].title())
    if found["region"]:
        parts.append(found["region"].upper())
    return "-".join(parts) + found["variants"].lower()


def accept_languages_for(locale: str) -> str:
    """The Accept-Language list (and navigator.languages) a browser with this locale sends, English first: the
    selectors read AI Studio's English labels, so a non-English locale comes after en-US, as on a desktop whose
    person prefers English pages (ja-JP: en-US,en,ja-JP,ja)."""
    language = locale.split("-")[0]
    if language == "en":
        return ",".join(dict.fromkeys((locale if "-" in locale else "en-US", "en")))
    return ",".join(dict.fromkeys(("en-US", "en", locale, language)))

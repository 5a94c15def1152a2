"""The selectors file (selectors.json beside this module) and the one shape check of an override.

The check returns a problem as a code with its parameters, never a sentence: the gateway words it in the
operator's language, the instance in its own English, and both refuse the same documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

SELECTORS_FILE = "selectors.json"
OVERRIDE_KEYS = ("version", "roles", "texts")
MAX_BYTES = 256 * 1024  # an override's body, on both sides
# The query parameter of PUT/DELETE /selectors that carries the change's revision: a counter the gateways keep in
# their database, so an instance applies a change only when it is newer than the one it applied last.
REVISION_PARAM = "revision"


@dataclass(frozen=True)
class OverrideProblem:
    """Why an override is refused: `code` is a message key (selectors_*), `params` fill it in."""

    code: str
    params: dict[str, str] = field(default_factory=dict)


def packaged_text() -> str:
    return resources.files(__package__).joinpath(SELECTORS_FILE).read_text(encoding="utf-8")


def load_packaged() -> dict[str, Any]:
    """The packaged document as data (read on every call: callers that need speed keep their own copy)."""
    document = json.loads(packaged_text())
    return document if isinstance(document, dict) else {}


def check_override(document: Any, packaged: dict[str, Any]) -> OverrideProblem | None:
    """selectors.json's shape: known roles and texts only, each a non-empty list of non-empty strings."""
    if not isinstance(document, dict):
        return OverrideProblem("selectors_not_object")
    unknown = sorted(set(document) - set(OVERRIDE_KEYS))
    if unknown:
        return OverrideProblem("selectors_unknown_key", {"keys": ", ".join(unknown)})
    version = document.get("version")
    if version is not None and not (isinstance(version, str) and version.strip()):
        return OverrideProblem("selectors_version_invalid")
    for section in ("roles", "texts"):
        problem = _check_section(section, document.get(section, {}), packaged.get(section, {}))
        if problem is not None:
            return problem
    if not document.get("roles") and not document.get("texts"):
        return OverrideProblem("selectors_nothing")
    return None


def read_revision(value: str | None) -> int | None:
    """The revision parameter as sent (None: an unrevisioned change, always applied); ValueError when malformed."""
    if value is None or value == "":
        return None
    revision = int(value)
    if revision < 1:
        raise ValueError("the revision must be a positive integer")
    return revision


def is_stale(revision: int | None, applied: int | None) -> bool:
    """Whether a change with `revision` is not newer than the one applied (an unrevisioned change never is)."""
    return revision is not None and applied is not None and revision <= applied


def _check_section(section: str, entries: Any, known: dict[str, Any]) -> OverrideProblem | None:
    if not isinstance(entries, dict):
        return OverrideProblem("selectors_section_invalid", {"section": section})
    for name, values in entries.items():
        if name not in known:
            return OverrideProblem(f"selectors_unknown_{section[:-1]}", {"name": name, "known": ", ".join(sorted(known))})
        if not isinstance(values, list) or not values:
            return OverrideProblem("selectors_empty_list", {"entry": f"{section}.{name}"})
        for index, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                return OverrideProblem("selectors_empty_string", {"entry": f"{section}.{name}[{index}]"})
    return None

"""Selectors are data: a packaged JSON file, overridable by a mounted file, reloadable at run time."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fleet_contract import selectors as selectors_contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectorBook:
    version: str
    roles: dict[str, tuple[str, ...]]
    texts: dict[str, tuple[str, ...]]
    source: str
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # button names, e.g. of dialogs to dismiss

    def names_of(self, group: str) -> tuple[str, ...]:
        return self.names.get(group, ())

    def candidates(self, role: str) -> tuple[str, ...]:
        return self.roles.get(role, ())

    def css_union(self, role: str) -> str:
        """All candidates as one CSS selector list, for polling inside the page."""
        return ", ".join(self.candidates(role))

    def classify(self, message: str) -> str | None:
        """Which known failure (quota_exhausted, rate_limited, ...) a page message is, if any."""
        lowered = message.lower()
        for kind, needles in self.texts.items():
            if any(needle.lower() in lowered for needle in needles):
                return kind
        return None


def _parse(raw: dict, source: str) -> SelectorBook:
    roles = raw.get("roles")
    if not isinstance(roles, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in roles.values()
    ):
        raise ValueError(f"{source}: 'roles' must map role names to lists of selectors")
    texts = raw.get("texts", {})
    names = raw.get("names", {})
    return SelectorBook(
        version=str(raw.get("version", "unknown")),
        roles={k: tuple(v) for k, v in roles.items()},
        texts={k: tuple(v) for k, v in texts.items()},
        source=source,
        names={k: tuple(v) for k, v in names.items()},
    )


def load_packaged() -> SelectorBook:
    return _parse(json.loads(selectors_contract.packaged_text()), "package")


def load_selectors(override: Path | None) -> SelectorBook:
    """The override file's roles replace the packaged ones role by role; a broken override is ignored."""
    packaged = load_packaged()
    if override is None or not override.is_file():
        return packaged
    try:
        book = _parse(json.loads(override.read_text(encoding="utf-8")), str(override))
    except (OSError, ValueError) as exc:
        log.error("ignoring selectors override %s: %s", override, exc)
        return packaged
    return SelectorBook(
        version=book.version,
        roles={**packaged.roles, **book.roles},
        texts={**packaged.texts, **book.texts},
        source=str(override),
        names={**packaged.names, **book.names},
    )

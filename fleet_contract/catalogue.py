"""The model catalogue: which models the page serves and what each offers, read from models.json beside this.

One reader for both sides, so a request the gateway accepts is one the instance accepts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

AUTO = "Auto"  # the page's default ratio, accepted for every model
CATALOGUE_FILE = "models.json"
CATALOGUE_PATH = Path(__file__).resolve().parent / CATALOGUE_FILE  # for readers that want the file itself


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    page: str  # "chat" (Gemini image chat) or "imagen"
    aliases: tuple[str, ...]
    aspect_ratios: tuple[str, ...]
    image_sizes: tuple[str, ...]  # empty: the page offers no size choice
    references: bool
    driven: bool  # on a page the instance's driver can run (the catalogue's pages_driven)

    @property
    def ratio_choices(self) -> tuple[str, ...]:
        return (AUTO, *self.aspect_ratios)

    def size(self, value: str) -> str | None:
        """The size as the page names it ("2k" -> "2K"), or None when this model does not offer it."""
        wanted = value.strip().upper()
        return next((s for s in self.image_sizes if s.upper() == wanted), None)


@dataclass(frozen=True)
class Catalogue:
    version: str
    default_model: str
    models: tuple[ModelSpec, ...]

    def find(self, name: str) -> ModelSpec | None:
        """A model by its id or one of its retired aliases."""
        return next((m for m in self.models if name == m.id or name in m.aliases), None)

    @property
    def default(self) -> ModelSpec:
        spec = self.find(self.default_model)
        if spec is None:
            raise ValueError(f"models.json: the default model {self.default_model!r} is not listed")
        return spec

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    @property
    def driven(self) -> tuple[ModelSpec, ...]:
        """The models a request may name: those on a page the driver can run."""
        return tuple(m for m in self.models if m.driven)


def parse(raw: dict) -> Catalogue:
    pages_driven = tuple(raw.get("pages_driven", ("chat",)))
    models = tuple(
        ModelSpec(
            id=m["id"],
            name=m.get("name", m["id"]),
            page=m.get("page", "chat"),
            aliases=tuple(m.get("aliases", ())),
            aspect_ratios=tuple(m.get("aspect_ratios", ())),
            image_sizes=tuple(m.get("image_sizes", ())),
            references=bool(m.get("references", True)),
            driven=m.get("page", "chat") in pages_driven,
        )
        for m in raw["models"]
    )
    catalogue = Catalogue(str(raw.get("version", "unknown")), raw["default_model"], models)
    catalogue.default  # noqa: B018 - a file without its default model fails here, at load
    return catalogue


@cache
def load() -> Catalogue:
    text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    return parse(json.loads(text))

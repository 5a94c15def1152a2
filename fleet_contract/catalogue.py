"""The model catalogue: which models the page serves and what each offers, read from models.json beside this.

One reader for both sides, so a request the gateway accepts is one the instance accepts. The file also lists
the models Google shut down (`retired`), each with its date and its successor, so that a request naming one is
refused naming the model to use instead; and it reads the operator's own mapping of names onto today's models
(`GATEWAY_MODEL_ALIASES`), checked against the catalogue at start.
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
class RetiredModel:
    """A model Google shut down: a request naming it (or one of its aliases) is told to use `successor`."""

    id: str
    name: str
    aliases: tuple[str, ...]
    retired_on: str  # ISO date of the shutdown
    successor: str  # the id of a current model


class AliasError(ValueError):
    """An operator's model-alias setting that cannot be used."""


@dataclass(frozen=True)
class Catalogue:
    version: str
    default_model: str
    models: tuple[ModelSpec, ...]
    retired: tuple[RetiredModel, ...] = ()

    def find(self, name: str) -> ModelSpec | None:
        """A current model by its id or one of its earlier names (aliases); None for a retired or unknown one."""
        return next((m for m in self.models if name == m.id or name in m.aliases), None)

    def find_retired(self, name: str) -> RetiredModel | None:
        """A model that was shut down, by its id or one of its aliases."""
        return next((r for r in self.retired if name == r.id or name in r.aliases), None)

    def operator_aliases(self, text: str) -> dict[str, str]:
        """`GATEWAY_MODEL_ALIASES`: "name=model,name=model" -> {name: id of a current model}.

        A name may be a retired model (clients that cannot change their model name) or any other name that is
        not a current model's; the target must be a current model (an id or one of its aliases). Anything else
        raises AliasError saying which part is wrong."""
        aliases: dict[str, str] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, target = (s.strip() for s in part.partition("="))
            if not sep or not name or not target:
                raise AliasError(f"{part!r}: write name=model, e.g. gemini-3.1-flash-image={self.default_model}")
            if self.find(name) is not None:
                raise AliasError(f"{name!r} is a current model; it cannot be mapped onto another")
            if name in aliases:
                raise AliasError(f"{name!r} is mapped twice")
            spec = self.find(target)
            if spec is None:
                retired = self.find_retired(target)
                if retired is not None:
                    raise AliasError(
                        f"{part!r}: {target!r} was shut down on {retired.retired_on}; map onto {retired.successor!r} instead"
                    )
                raise AliasError(f"{part!r}: unknown model {target!r}; use one of {', '.join(self.ids)}")
            if not spec.driven:
                raise AliasError(f"{part!r}: model {spec.id!r} is on a page the driver cannot run yet")
            aliases[name] = spec.id
        return aliases

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
    retired = tuple(
        RetiredModel(
            id=r["id"],
            name=r.get("name", r["id"]),
            aliases=tuple(r.get("aliases", ())),
            retired_on=str(r["retired_on"]),
            successor=r["successor"],
        )
        for r in raw.get("retired", ())
    )
    catalogue = Catalogue(str(raw.get("version", "unknown")), raw["default_model"], models, retired)
    catalogue.default  # noqa: B018 - a file without its default model fails here, at load
    _check_names(catalogue)
    return catalogue


def _check_names(catalogue: Catalogue) -> None:
    """Every name means one model, and every retired model's successor is a current one: checked at load."""
    seen: set[str] = set()
    for names in [(m.id, *m.aliases) for m in catalogue.models] + [(r.id, *r.aliases) for r in catalogue.retired]:
        for name in names:
            if name in seen:
                raise ValueError(f"models.json: the name {name!r} is listed twice")
            seen.add(name)
    for retired in catalogue.retired:
        successor = catalogue.find(retired.successor)
        if successor is None or successor.id != retired.successor:
            raise ValueError(f"models.json: {retired.id!r} names {retired.successor!r} as its successor, not a current model's id")


@cache
def load() -> Catalogue:
    text = resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8")
    return parse(json.loads(text))

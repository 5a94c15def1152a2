"""The catalogue as the accounts' pages see it: what each instance's page offered its account (from /status).

The reconciler's probe records each instance's `offered_models` / `offered_options` here (and in the instance's
row, `instances.offered_models`, for the panel and a restarted gateway). The one check of model, ratio and size
(gateway/dispatcher/inputs.py) asks `offered_spec` for a model the packaged catalogue lacks: it is served when a
signed-in account's page offers it, with the ratios and sizes the page showed. Kept per process: a replica whose
reconciler does not probe learns the offers from the rows (`load_rows`).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from fleet_contract import catalogue
from fleet_contract.catalogue import ModelSpec


@dataclass(frozen=True)
class AccountOffer:
    signed_in: bool
    models: tuple[dict[str, Any], ...]  # {id, label, available}
    options: dict[str, dict[str, Any]]  # model -> {ratios, sizes, label}


_lock = threading.Lock()
_offers: dict[uuid.UUID, AccountOffer] = {}


def document(status: Any) -> dict[str, Any] | None:
    """What an instance's /status says its page offers, as stored in its row; None when not read yet."""
    if getattr(status, "offered_models", None) is None:
        return None
    return {
        "models": [{"id": m.id, "label": m.label, "available": m.available} for m in status.offered_models],
        "options": {k: {"ratios": list(v.ratios), "sizes": list(v.sizes), "label": v.label}
                    for k, v in (status.offered_options or {}).items()},
        "read_at": status.offered_read_at,
    }


def record(instance_id: uuid.UUID, doc: dict[str, Any] | None, signed_in: bool) -> None:
    with _lock:
        if doc is None:
            previous = _offers.get(instance_id)
            if previous is not None:
                _offers[instance_id] = AccountOffer(signed_in, previous.models, previous.options)
            return
        _offers[instance_id] = AccountOffer(signed_in, tuple(doc.get("models") or ()), dict(doc.get("options") or {}))


def forget(instance_id: uuid.UUID) -> None:
    with _lock:
        _offers.pop(instance_id, None)


def clear() -> None:
    with _lock:
        _offers.clear()


def load_rows(rows: list[tuple[uuid.UUID, dict[str, Any] | None, bool]]) -> None:
    """(instance id, stored document, signed in) for every instance: replaces what this process knew."""
    with _lock:
        _offers.clear()
        for instance_id, doc, signed_in in rows:
            if doc:
                _offers[instance_id] = AccountOffer(signed_in, tuple(doc.get("models") or ()), dict(doc.get("options") or {}))


def _signed_in() -> list[tuple[uuid.UUID, AccountOffer]]:
    with _lock:
        return [(i, o) for i, o in _offers.items() if o.signed_in]


def accounts_offering(model: str) -> set[uuid.UUID]:
    """Signed-in instances whose page lists `model` as available to their account."""
    return {i for i, o in _signed_in() if any(m.get("id") == model and m.get("available", True) for m in o.models)}


def knows_offers() -> bool:
    """Whether any signed-in page has told its picker yet (before that, nothing is marked as gone)."""
    return any(o.models for _, o in _signed_in())


def offered_spec(name: str) -> ModelSpec | None:
    """A model the packaged catalogue lacks that a signed-in account's page offers, with the options its page
    showed (the union over accounts); None when no page offers it or no page showed its ratios."""
    offering = accounts_offering(name)
    if not offering:
        return None  # (an operator's entry for it is asked first, by resolve_model)
    ratios: list[str] = []
    sizes: list[str] = []
    label = None
    for instance_id, offer in _signed_in():
        if instance_id not in offering:
            continue
        shown = offer.options.get(name) or {}
        ratios += [r for r in shown.get("ratios") or () if r not in ratios]
        sizes += [s for s in shown.get("sizes") or () if s not in sizes]
        label = label or shown.get("label") or next((m.get("label") for m in offer.models if m.get("id") == name), None)
    if not ratios:
        return None  # listed, but no page has shown its run settings yet: nothing to check a request against
    return ModelSpec(id=name, name=label or name, page="chat", aliases=(), aspect_ratios=tuple(ratios),
                     image_sizes=tuple(sizes), references=True, driven=True)


def offered_models() -> list[ModelSpec]:
    """Every model signed-in pages offer that the packaged catalogue lacks (and that can be checked)."""
    known = catalogue.load()
    seen: list[str] = []
    for _, offer in _signed_in():
        for entry in offer.models:
            model_id = entry.get("id")
            if model_id and model_id not in seen and known.find(model_id) is None and known.find_retired(model_id) is None:
                seen.append(model_id)
    return [spec for spec in (offered_spec(m) for m in seen) if spec is not None]


def offer_counts() -> dict[str, int]:
    """model id -> how many signed-in accounts' pages offer it."""
    counts: dict[str, int] = {}
    for _, offer in _signed_in():
        for entry in offer.models:
            if entry.get("id") and entry.get("available", True):
                counts[entry["id"]] = counts.get(entry["id"], 0) + 1
    return counts


def still_offered(model: str) -> bool | None:
    """Whether any signed-in page offers a packaged model; None when no page has told its picker yet."""
    if not knows_offers():
        return None
    return bool(accounts_offering(model))


def not_offering(model: str | None) -> frozenset[uuid.UUID]:
    """For a model the packaged catalogue lacks: the instances whose page told its picker without it (the lease
    does not send the model there). Empty for a packaged model: its accounts are chosen as before."""
    if not model or catalogue.load().find(model) is not None or not accounts_offering(model):
        return frozenset()  # packaged, or (an operator's entry) no page lists it: every account may be tried
    with _lock:
        return frozenset(i for i, o in _offers.items()
                         if not any(m.get("id") == model and m.get("available", True) for m in o.models))


def servable_models() -> list[tuple[ModelSpec, bool | None, bool]]:
    """What the model lists show: (spec, offered by pages now, packaged). Packaged models first, each marked
    False when signed-in pages told their pickers and none lists it any more (None before any page told);
    then the models pages offer that the packaged data lacks."""
    packaged = [(operator_spec(spec.id) or spec, still_offered(spec.id), True) for spec in catalogue.load().driven]
    listed = {spec.id for spec, _, _ in packaged}
    added = [(operator_spec(m), bool(accounts_offering(m)) if knows_offers() else None, False)
             for m in operator_ids() if m not in listed]
    listed |= {spec.id for spec, _, _ in added}
    return packaged + added + [(spec, True, False) for spec in offered_models() if spec.id not in listed]


# ---- the operator's catalogue edit ------------------------------------------------------------------------

EDIT_KEYS = ("version", "models")
EDIT_MODEL_KEYS = ("id", "name", "aspect_ratios", "image_sizes", "references")
EDIT_SIZES = ("512", "1K", "2K", "4K")
_ID_SHAPE = __import__("re").compile(r"^[a-z0-9][a-z0-9.\-]{0,63}$")
_RATIO_SHAPE = __import__("re").compile(r"^\d{1,2}:\d{1,2}$")
_operator: dict[str, ModelSpec] = {}
_operator_revision: list[int | None] = [None]  # the revision of the installed edit (gateway.db.revisions)


class EditProblem(ValueError):
    """Why an operator's catalogue edit is refused: `code` is a message key, `params` fill it in."""

    def __init__(self, code: str, **params: Any) -> None:
        super().__init__(code)
        self.code, self.params = code, {k: str(v) for k, v in params.items()}


def check_edit(document: Any) -> dict[str, Any]:
    """{"version"?, "models": [{id, name?, aspect_ratios, image_sizes?, references?}]}: each entry adds a model or
    replaces a packaged one's options. Unknown fields, a model without a ratio, a retired id: refused."""
    if not isinstance(document, dict):
        raise EditProblem("catalogue_not_object")
    unknown = sorted(set(document) - set(EDIT_KEYS))
    if unknown:
        raise EditProblem("catalogue_unknown_field", fields=", ".join(unknown), known=", ".join(EDIT_KEYS))
    version = document.get("version")
    if version is not None and not (isinstance(version, str) and version.strip()):
        raise EditProblem("catalogue_version_invalid")
    models = document.get("models")
    if not isinstance(models, list) or not models:
        raise EditProblem("catalogue_models_missing")
    seen: set[str] = set()
    for index, entry in enumerate(models):
        where = f"models[{index}]"
        if not isinstance(entry, dict):
            raise EditProblem("catalogue_entry_not_object", entry=where)
        unknown = sorted(set(entry) - set(EDIT_MODEL_KEYS))
        if unknown:
            raise EditProblem("catalogue_unknown_field", fields=", ".join(f"{where}.{k}" for k in unknown),
                              known=", ".join(EDIT_MODEL_KEYS))
        model_id = entry.get("id")
        if not isinstance(model_id, str) or not _ID_SHAPE.match(model_id):
            raise EditProblem("catalogue_id_invalid", entry=where)
        where = f"{where} ({model_id})"
        if model_id in seen:
            raise EditProblem("catalogue_id_twice", model=model_id)
        seen.add(model_id)
        retired = catalogue.load().find_retired(model_id)
        if retired is not None:
            raise EditProblem("catalogue_id_retired", model=model_id, successor=retired.successor)
        ratios = entry.get("aspect_ratios")
        if not isinstance(ratios, list) or not ratios:
            raise EditProblem("catalogue_no_ratio", entry=where)
        if not all(isinstance(r, str) and _RATIO_SHAPE.match(r) for r in ratios):
            raise EditProblem("catalogue_ratio_invalid", entry=where)
        sizes = entry.get("image_sizes", [])
        if not isinstance(sizes, list) or not all(s in EDIT_SIZES for s in sizes):
            raise EditProblem("catalogue_size_invalid", entry=where, choices=", ".join(EDIT_SIZES))
        name = entry.get("name", model_id)
        if not isinstance(name, str) or not name.strip():
            raise EditProblem("catalogue_name_invalid", entry=where)
        if not isinstance(entry.get("references", True), bool):
            raise EditProblem("catalogue_references_invalid", entry=where)
    return document


def install_edit(document: dict[str, Any] | None, revision: int | None = None, *, force: bool = False) -> bool:
    """The stored edit as this process uses it (None: none); False when `revision` is not newer than the installed
    one (a read that crossed a newer change), and nothing changes. `force`: at start, whatever was installed."""
    specs = {}
    for entry in (document or {}).get("models") or ():
        specs[entry["id"]] = ModelSpec(
            id=entry["id"], name=entry.get("name") or entry["id"], page="chat", aliases=(),
            aspect_ratios=tuple(entry["aspect_ratios"]), image_sizes=tuple(entry.get("image_sizes") or ()),
            references=bool(entry.get("references", True)), driven=True,
        )
    with _lock:
        installed = _operator_revision[0]
        if not force and revision is not None and installed is not None and revision <= installed:
            return False
        _operator.clear()
        _operator.update(specs)
        _operator_revision[0] = revision
    return True


def installed_revision() -> int | None:
    with _lock:
        return _operator_revision[0]


def operator_spec(name: str) -> ModelSpec | None:
    with _lock:
        return _operator.get(name)


def operator_ids() -> list[str]:
    with _lock:
        return list(_operator)

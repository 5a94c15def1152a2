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
        return None
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
    if not model or catalogue.load().find(model) is not None:
        return frozenset()
    with _lock:
        return frozenset(i for i, o in _offers.items()
                         if not any(m.get("id") == model and m.get("available", True) for m in o.models))


def servable_models() -> list[tuple[ModelSpec, bool | None, bool]]:
    """What the model lists show: (spec, offered by pages now, packaged). Packaged models first, each marked
    False when signed-in pages told their pickers and none lists it any more (None before any page told);
    then the models pages offer that the packaged data lacks."""
    packaged = [(spec, still_offered(spec.id), True) for spec in catalogue.load().driven]
    return packaged + [(spec, True, False) for spec in offered_models()]

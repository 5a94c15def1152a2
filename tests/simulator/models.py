"""The models the simulated page offers: what Google's page shows, not the fleet's own catalogue."""

from __future__ import annotations

from typing import Any

STANDARD_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTREME_RATIOS = ("1:4", "4:1", "1:8", "8:1")
DEFAULT_MODEL = "gemini-nano-banana-2.1"  # what a new chat opens on without ?model= (the newest image model)
# Where the page lands when the URL's model is ignored: a text model, so Run answers without an image.
TEXT_MODEL = "gemini-2.5-flash"

# The picker as of December 2026 (AISTUDIO.md): gemini-3.1-flash-image (shut down 2026-10-29) and the Imagen 4
# models (shut down 2026-08-17) are gone from it; an id the page does not list still opens like a plain image model.
MODELS: dict[str, dict[str, Any]] = {
    "gemini-nano-banana-2.1": {
        "title": "Nano Banana 2.1", "images": True, "ratios": STANDARD_RATIOS + EXTREME_RATIOS, "sizes": ("1K", "2K", "4K"),
    },
    "gemini-3-pro-image": {"title": "Nano Banana Pro", "images": True, "ratios": STANDARD_RATIOS, "sizes": ("1K", "2K", "4K")},
    "gemini-3.1-flash-lite-image": {
        "title": "Nano Banana 2 Lite", "images": True, "ratios": STANDARD_RATIOS + EXTREME_RATIOS, "sizes": ("1K",),
    },
    "gemini-2.5-flash-image": {"title": "Nano Banana", "images": True, "ratios": STANDARD_RATIOS, "sizes": ()},
    TEXT_MODEL: {"title": "Gemini 2.5 Flash", "images": False, "ratios": (), "sizes": ()},
}


def _extra(extra_models: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """The config's `extra_models` in MODELS' shape (they come after, and may not replace, the built-in ones)."""
    return {
        m["id"]: {"title": m.get("label") or m["id"], "images": True, "ratios": tuple(m.get("ratios", ())),
                  "sizes": tuple(m.get("sizes", ()))}
        for m in extra_models or () if m["id"] not in MODELS
    }


def describe(model: str, extra_models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The page's view of a model; an id it does not list behaves like a plain image model (old tests' ids)."""
    known = MODELS.get(model) or _extra(extra_models).get(model)
    if known is not None:
        return {"id": model, **known}
    return {"id": model, "title": model, "images": True, "ratios": STANDARD_RATIOS, "sizes": ()}


def picker_entries(extra_models: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What the model picker lists, in order, for the page's JavaScript (the config's extra models last)."""
    return [{"id": model_id, **{k: list(v) if isinstance(v, tuple) else v for k, v in info.items()}}
            for model_id, info in {**MODELS, **_extra(extra_models)}.items()]

"""The catalogue as this account's page sees it: the model picker's entries, and the run settings' ratios and sizes.

AI Studio's own picker is the only list that is always current for an account (AISTUDIO.md). Read at start and by
`GET /diagnose` while the instance is idle: it opens the picker and the run-settings selects, reads their options
and closes them with Escape, choosing nothing. Every element is found through selectors.json roles
(`model_selector`, `model_option`, `model_option_id`, `model_option_label`, `aspect_ratio_select`,
`aspect_ratio_option`, `image_size_select`, `image_size_option`, `run_settings_toggle`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from fleet_contract.catalogue import AUTO
from instance.selectors import SelectorBook

log = logging.getLogger(__name__)

# A model id inside an option's text when no id element matches ("Nano Banana 2.2 gemini-nano-banana-2.2").
MODEL_ID_IN_TEXT = re.compile(r"\b((?:gemini|imagen|veo|nano)-[a-z0-9][a-z0-9.\-]*[a-z0-9])\b", re.IGNORECASE)
# The id shape accepted from a page (and from a gateway's request for a model the catalogue lacks).
MODEL_ID_SHAPE = re.compile(r"^[a-z0-9][a-z0-9.\-]{0,79}$")
RATIO_SHAPE = re.compile(r"^\d{1,2}:\d{1,2}$")
SIZE_SHAPE = re.compile(r"^(?:\d{3,4}|\d[Kk])$")

_OPTIONS_JS = """
(elements, [idSelectors, labelSelectors]) => elements.map((option) => {
  const first = (selectors) => {
    for (const selector of selectors) {
      try { const found = option.querySelector(selector); if (found && found.textContent.trim()) return found.textContent.trim(); }
      catch (e) { /* a Playwright-only selector: skipped here */ }
    }
    return null;
  };
  return {
    id: first(idSelectors),
    label: first(labelSelectors),
    text: (option.textContent || "").replace(/\\s+/g, " ").trim(),
    disabled: option.getAttribute("aria-disabled") === "true" || option.hasAttribute("disabled"),
  };
})
"""


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def read_page_catalogue(page: Page, book: SelectorBook, url_model: str | None, *, timeout_s: float) -> dict[str, Any]:
    """{offered_models, offered_options, offered_read_at}; a part the page does not show is left out (None / {})."""
    result: dict[str, Any] = {"offered_models": None, "offered_options": {}, "offered_read_at": _now()}
    try:
        async with asyncio.timeout(timeout_s * 3):
            result["offered_models"] = await _picker_entries(page, book, timeout_s)
            selected = await _selected_model(page, book, result["offered_models"] or [], url_model)
            if selected:
                options = await _run_settings_options(page, book, timeout_s)
                if options is not None:
                    label = next((m["label"] for m in result["offered_models"] or () if m["id"] == selected), None)
                    result["offered_options"][selected] = {**options, "label": label}
    except (PlaywrightError, TimeoutError) as exc:
        log.warning("reading the page's model picker failed: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else "timeout")
        await _escape(page)
    return result


async def _picker_entries(page: Page, book: SelectorBook, timeout_s: float) -> list[dict[str, Any]] | None:
    trigger = await _first_present(page, book, "model_selector")
    if trigger is None:
        return None  # no picker on this page (older markup): the URL chooses the model
    await trigger.click(timeout=timeout_s * 1000)
    options = page.locator(book.css_union("model_option"))
    try:
        await options.first.wait_for(timeout=timeout_s * 1000)
        raw = await options.evaluate_all(
            _OPTIONS_JS, [list(book.candidates("model_option_id")), list(book.candidates("model_option_label"))]
        )
    finally:
        await _escape(page)
    entries: list[dict[str, Any]] = []
    for option in raw:
        model_id = (option.get("id") or "").strip()
        if not MODEL_ID_SHAPE.match(model_id):
            found = MODEL_ID_IN_TEXT.search(option.get("text") or "")
            model_id = found.group(1).lower() if found else ""
        if not MODEL_ID_SHAPE.match(model_id) or any(e["id"] == model_id for e in entries):
            continue
        entries.append({"id": model_id, "label": option.get("label") or None, "available": not option.get("disabled")})
    return entries


async def _selected_model(page: Page, book: SelectorBook, entries: list[dict[str, Any]], url_model: str | None) -> str | None:
    """The model the page has selected now: its id as the page names it, or the entry whose label it shows."""
    shown = None
    for selector in book.candidates("model_name") or ('[data-test-id="model-name"]', ".model-selector-trigger .title"):
        try:
            locator = page.locator(selector).first
            if await locator.count():
                shown = " ".join((await locator.inner_text()).split())
                if shown:
                    break
        except PlaywrightError:
            continue
    if shown:
        for entry in entries:
            if shown.lower() == entry["id"] or (entry["label"] and shown.lower() == entry["label"].lower()):
                return entry["id"]
        found = MODEL_ID_IN_TEXT.search(shown)
        if found:
            return found.group(1).lower()
    return url_model


async def _run_settings_options(page: Page, book: SelectorBook, timeout_s: float) -> dict[str, list[str]] | None:
    """The ratios and sizes the run settings offer for the page's current model; None when the page shows no ratio."""
    ratios = await _select_options(page, book, "aspect_ratio_select", "aspect_ratio_option", timeout_s)
    if ratios is None:
        return None
    sizes = await _select_options(page, book, "image_size_select", "image_size_option", timeout_s) or []
    return {
        "ratios": [r for r in ratios if r != AUTO and RATIO_SHAPE.match(r)],
        "sizes": [s.upper() for s in sizes if SIZE_SHAPE.match(s)],
    }


async def _select_options(page: Page, book: SelectorBook, select_role: str, option_role: str, timeout_s: float) -> list[str] | None:
    select = await _first_present(page, book, select_role)
    if select is None:
        toggle = await _first_present(page, book, "run_settings_toggle")
        if toggle is not None:
            await toggle.click(timeout=timeout_s * 1000)
            await asyncio.sleep(0.2)
            select = await _first_present(page, book, select_role)
    if select is None:
        return None
    await select.click(timeout=timeout_s * 1000)
    options = page.locator(book.css_union(option_role))
    try:
        await options.first.wait_for(timeout=timeout_s * 1000)
        texts = await options.all_inner_texts()
    finally:
        await _escape(page)
    values: list[str] = []
    for text in texts:
        value = " ".join(text.split())
        if value and value not in values:
            values.append(value)
    return values


async def _first_present(page: Page, book: SelectorBook, role: str):
    for selector in book.candidates(role):
        locator = page.locator(selector).first
        try:
            if await locator.count() and await locator.is_visible():
                return locator
        except PlaywrightError:
            continue
    return None


async def _escape(page: Page) -> None:
    try:
        await page.keyboard.press("Escape")
    except PlaywrightError:
        pass


def options_spec(model_id: str, options: Any) -> dict[str, Any] | None:
    """A gateway's `model_options` (or the page's own) for a model the catalogue lacks, checked; None if unusable."""
    if not isinstance(options, dict) or not MODEL_ID_SHAPE.match(model_id):
        return None
    ratios, sizes = options.get("ratios"), options.get("sizes", [])
    if not isinstance(ratios, list) or not ratios or not all(isinstance(r, str) and RATIO_SHAPE.match(r) for r in ratios):
        return None
    if not isinstance(sizes, list) or not all(isinstance(s, str) and SIZE_SHAPE.match(s) for s in sizes):
        return None
    label = options.get("label")
    return {"ratios": ratios, "sizes": [s.upper() for s in sizes], "label": label if isinstance(label, str) else None}

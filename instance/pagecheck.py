"""The page check and the selectors override: read-only looks at the live page, and run-time selector changes.

`GET /diagnose` tells an operator which selector candidates match the page now; `PUT /selectors` installs an
override (validated, syntax-checked in the browser, written atomically) and reloads it without a restart.
Neither navigates, so both may run beside a task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from fleet_contract import selectors as selectors_contract
from instance import page_scripts
from instance.browser import BrowserHost
from instance.selectors import SelectorBook, load_packaged

log = logging.getLogger(__name__)

# Roles an idle, signed-in new-chat page always shows; a miss there is what `ui_changed` looks like.
# The other roles (dialogs, toasts, spinners, results) come and go with what the page is doing.
EXPECTED_ON_IDLE_PAGE = ("prompt_textarea", "run_button", "run_settings_toggle", "add_media_button")
# Where the page names its model (AISTUDIO.md); a `model_name` role in selectors.json takes precedence.
MODEL_NAME_SELECTORS = ('[data-test-id="model-name"]', ".model-selector-trigger .title")
# Elements looked at per candidate when deciding whether any of them is visible.
VISIBILITY_SAMPLE = 20

# One round trip for every role (scripts/probe.js); Playwright-syntax candidates get a second look.
_PROBE_JS = page_scripts.script("probe")


class OverrideInvalid(ValueError):
    """An override document the instance refuses; the message says why (shown to the operator)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code  # 400: not JSON at all; 422: JSON of the wrong shape


# ---- the page check ------------------------------------------------------------------------------


async def diagnose(host: BrowserHost, *, busy: bool, timeout_s: float) -> dict[str, Any]:
    """Every role of the current SelectorBook against the page as it is now, with the page's URL, login and model."""
    book = host.selectors
    report: dict[str, Any] = {
        "checked_at": datetime.now(UTC).isoformat(),
        "url": host.page_url,
        "login_state": host.login_state,
        "browser": host.browser_state,
        "busy": busy,
        "model": None,
        "model_source": None,
        "selectors_version": book.version,
        "selectors_source": book.source,
        "roles": [],
        "missing_expected": [],
        "error": None,
    }
    if host.browser_state != "up":
        report["error"] = f"the browser is {host.browser_state}"
        return report
    try:
        probed = await probe(host.page, dict(book.roles), _model_selectors(book), timeout_s=timeout_s)
    except (PlaywrightError, TimeoutError) as exc:
        report["error"] = _first_line(exc) or f"the page did not answer within {timeout_s:g}s"
        report["model"], report["model_source"] = _model_from_url(host.page_url)
        return report
    report["roles"] = [_role_result(role, probed["roles"].get(role, [])) for role in book.roles]
    report["missing_expected"] = [r["role"] for r in report["roles"] if r["expected"] and r["matched"] is None]
    if probed["model"]:
        report["model"], report["model_source"] = probed["model"], "page"
    else:
        report["model"], report["model_source"] = _model_from_url(host.page_url)
    return report


async def probe(page: Page, roles: dict[str, Any], model_selectors: list[str], *, timeout_s: float) -> dict[str, Any]:
    """Counts and visibility of every candidate: one evaluate, plus one locator look per non-CSS candidate."""
    args = [{role: list(candidates) for role, candidates in roles.items()}, model_selectors, VISIBILITY_SAMPLE]
    async with asyncio.timeout(timeout_s):
        try:
            probed = await page.evaluate(_PROBE_JS, args)
        except PlaywrightError as exc:
            if "context was destroyed" not in str(exc):
                raise
            await asyncio.sleep(0.2)  # the page was navigating by itself: look at the new document
            probed = await page.evaluate(_PROBE_JS, args)
        for candidates in probed["roles"].values():
            for candidate in candidates:
                if "css_error" in candidate:
                    await _playwright_look(page, candidate)
    return probed


async def _playwright_look(page: Page, candidate: dict[str, Any]) -> None:
    """A candidate in Playwright's selector syntax: counted by Playwright, which also says if it is malformed."""
    locator = page.locator(candidate["selector"])
    try:
        count = await locator.count()
        visible = False
        for index in range(min(count, 5)):
            if await locator.nth(index).is_visible():
                visible = True
                break
    except PlaywrightError as exc:
        candidate["error"] = _first_line(exc).removeprefix("Locator.count: ")
        return
    candidate.pop("css_error", None)
    candidate.update(count=count, visible=visible)


def _role_result(role: str, candidates: list[dict[str, Any]]) -> dict[str, Any]:
    first = next((c for c in candidates if c.get("count")), None)
    return {
        "role": role,
        "expected": role in EXPECTED_ON_IDLE_PAGE,
        "matched": first["selector"] if first else None,
        "index": candidates.index(first) if first else None,
        "count": first["count"] if first else 0,
        "visible": bool(first and first["visible"]),
        "candidates": [
            {"selector": c["selector"], "count": c.get("count", 0), "visible": bool(c.get("visible")),
             "error": c.get("error")}
            for c in candidates
        ],
    }


def _model_selectors(book: SelectorBook) -> list[str]:
    return list(book.candidates("model_name")) or list(MODEL_NAME_SELECTORS)


def _model_from_url(url: str | None) -> tuple[str | None, str | None]:
    models = parse_qs(urlsplit(url or "").query).get("model")
    return (models[0], "url") if models and models[0] else (None, None)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else ""


# ---- the override --------------------------------------------------------------------------------


# The instance's own words for the contract's problem codes (the gateway words them in the operator's language).
_OVERRIDE_MESSAGES = {
    "selectors_not_object": 'the override must be a JSON object shaped like selectors.json: {{"roles": {{...}}}}',
    "selectors_unknown_key": "unknown key(s) {keys}: an override has 'roles', 'texts' and 'version' "
    "(role names go under 'roles')",
    "selectors_version_invalid": "'version' must be a non-empty string",
    "selectors_section_invalid": "'{section}' must be an object mapping names to lists of strings",
    "selectors_unknown_role": "unknown role {name!r}; known roles: {known}",
    "selectors_unknown_text": "unknown text {name!r}; known texts: {known}",
    "selectors_empty_list": "{entry} must be a non-empty list of strings",
    "selectors_empty_string": "{entry} must be a non-empty string",
    "selectors_nothing": "the override changes nothing: give at least one role under 'roles' (DELETE removes it)",
}


def parse_override(raw: bytes) -> dict[str, Any]:
    """The request body as an override document, checked against the roles the packaged file knows now."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OverrideInvalid(f"the override is not valid JSON: {exc}", 400) from None
    return check_override(document, load_packaged())


def check_override(document: Any, packaged: SelectorBook) -> dict[str, Any]:
    """The contract's shape check against the packaged roles and texts, worded here."""
    problem = selectors_contract.check_override(document, {"roles": packaged.roles, "texts": packaged.texts})
    if problem is not None:
        raise OverrideInvalid(_OVERRIDE_MESSAGES[problem.code].format(**problem.params))
    return document


async def check_syntax(host: BrowserHost, document: dict[str, Any], timeout_s: float) -> None:
    """Each role selector parsed by the browser; skipped (not refused) when the browser is not up."""
    roles = document.get("roles") or {}
    if not roles or host.browser_state != "up":
        return
    try:
        probed = await probe(host.page, roles, [], timeout_s=timeout_s)
    except (PlaywrightError, TimeoutError) as exc:
        log.warning("selectors syntax check skipped: %s", _first_line(exc) or "timeout")
        return
    for role, candidates in probed["roles"].items():
        for index, candidate in enumerate(candidates):
            if candidate.get("error"):
                raise OverrideInvalid(f"roles.{role}[{index}] is not a valid selector: {candidate['error']}")


def with_version(document: dict[str, Any]) -> dict[str, Any]:
    """An override without a version gets one from its content, so /status tells overrides apart."""
    if document.get("version"):
        return document
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:12]
    return {"version": f"override-{digest}", **document}


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Written beside the target, flushed, then renamed over it: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(document, file, ensure_ascii=False, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def revision_path(override: Path) -> Path:
    """Where the revision of the last applied change is kept: beside the override, so it outlives a removal."""
    return override.with_name(f"{override.name}.revision")


def applied_revision(override: Path) -> int | None:
    """The revision of the last change applied here; None when none carried one (or the file is unreadable)."""
    try:
        value = json.loads(revision_path(override).read_text(encoding="utf-8")).get("revision")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def record_revision(override: Path, revision: int | None) -> None:
    """Keep a change's revision; an unrevisioned change forgets it (an older gateway took over)."""
    if revision is None:
        revision_path(override).unlink(missing_ok=True)
    else:
        write_atomically(revision_path(override), {"revision": revision})

"""The simulator's knobs: defaults, validation and merging of partial updates."""

from __future__ import annotations

import copy
from typing import Any, Callable

MODES = ("ok", "quota", "rate_limit", "internal", "blocked", "hang", "logout", "region", "free_limit")
DIALOGS = ("autosave", "preference_vote", "consent", "consent_checkbox", "whats_new", "drive_offer", "announcement")
# Moments of a task at which `event_dialogs` show (each once per page load).
DIALOG_EVENTS = ("ratio", "upload", "run")
SELECT_APPLY = ("now", "late", "never")
UPLOAD_SIGNALS = ("chip", "media_container", "blob_img", "token_count", "none")
RUN_BUTTONS = ("normal", "covered", "keyboard_only")
FAILURE_DISPLAYS = ("page", "none")
MARKUPS = ("current", "legacy")
MISSABLE_ROLES = ("prompt_textarea", "run_button", "add_media_button", "aspect_ratio_select")

DEFAULT_CONFIG: dict[str, Any] = {
    "latency_ms": 300,  # server-side wait before each GenerateContent answer
    "page_delay_ms": 0,  # server-side wait before each app page (the real app takes seconds to come up)
    "upload_delay_ms": 0,  # an attached file's chip shows this long after it was chosen (the real page uploads it)
    "mode": "ok",  # outcome of the next generations, one of MODES
    "mode_times": None,  # apply `mode` to the next N generations only, then back to "ok"; None = always
    "dialogs": [],  # dialogs covering the page on load, shown one after the other (DIALOGS)
    "copyright_dialog": True,  # copyright acknowledgement after the first upload of a page
    "markup": "current",  # "legacy" renders the older selectors' markup
    "missing_roles": [],  # roles whose element is left out of the page (MISSABLE_ROLES)
    "image_count": 1,  # images per successful generation
    "text": "Here is your image.",  # model text beside the images; "" or None for none
    "signin_required": True,  # False: pages and generations work without a SID cookie
    "image_stagger_ms": 100,  # delay between two images of one answer appearing in the page
    "hang_ms": 600_000,  # how long mode "hang" keeps a request open before answering 504
    "dialog_delay_ms": 0,  # delay before the load dialogs show up
    "event_dialogs": {},  # {event: [dialog, ...]}: dialogs arriving mid-task (DIALOG_EVENTS)
    "copyright_delay_ms": 0,  # the copyright dialog shows this long after the upload's chip
    "select_apply": "now",  # when a ratio/size choice shows: "now", "late" (after the overlay closed), "never"
    "select_apply_delay_ms": 300,  # how late "late" is
    "upload_signal": "chip",  # what shows a finished upload in the prompt box (UPLOAD_SIGNALS)
    "run_button": "normal",  # "covered": a layer takes pointer clicks; "keyboard_only": only Ctrl+Enter runs
    "harmless_toast": False,  # a notice toast shows at Run and stays, beside a successful answer
    "stale_callout": False,  # an error callout left from an earlier task, on the page before Run
    "failure_display": "page",  # "none": a failed GenerateContent shows nothing on the page
    "thinking_image": False,  # the model turn starts with a thought chunk holding a draft image
    "model_from_url": True,  # False: the page ignores ?model= and opens on a text model
    "model_picker": True,  # False: no model picker in the page
    "unavailable_models": [],  # model ids this account may not use
    "app_path": False,  # /prompts/... redirects to /app/prompts/...
    "region_redirect": False,  # pages redirect to the "available regions" page
    "temporary_chat": True,  # the toolbar has a Temporary chat toggle
    "signin_refused": False,  # the sign-in's e-mail step leads to Google's "This browser or app may not be secure"
    # Google renews __Secure-1PSIDTS while a page is open; here the SIDTS cookie is renewed on every app page load
    # ("page_load") or never ("off"), and a stale value is refused (the visitor counts as signed out).
    "rotate_cookie": "page_load",
    "refuse_stale_cookie": True,
    # The value just replaced still passes this long: requests already in flight when a load renewed it.
    "stale_grace_ms": 2000,
    # "redirect": a signed-out visitor is sent to the sign-in page; "link": AI Studio opens signed out and only
    # shows a "Sign in" link (the real page does both).
    "signed_out_page": "redirect",
    # {model: successful generations a day}: the real page's unpublished allowance per account and model, renewed
    # at midnight Pacific (simulator clock); a spent one answers like mode "quota". A model left out is unlimited.
    "allowances": {},
    # Models the picker lists beyond the built-in ones (a model the fleet's packaged catalogue lacks):
    # [{"id": ..., "label": ..., "ratios": [...], "sizes": [...]}]; the run settings offer those ratios and sizes.
    "extra_models": [],
}


class ConfigError(ValueError):
    """A config update the simulator refuses (unknown key or bad value)."""


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _optional_int(value: Any) -> bool:
    return value is None or _non_negative_int(value)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: value in choices


def _list_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, list) and all(item in choices for item in value)


def _bool(value: Any) -> bool:
    return isinstance(value, bool)


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _event_dialogs(value: Any) -> bool:
    return isinstance(value, dict) and all(
        event in DIALOG_EVENTS and _list_of(DIALOGS)(names) for event, names in value.items()
    )


def _allowances(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(model, str) and _non_negative_int(n) for model, n in value.items())


EXTRA_MODEL_KEYS = {"id", "label", "ratios", "sizes"}
EXTRA_MODEL_SIZES = ("512", "1K", "2K", "4K")
EXTRA_MODEL_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "1:4", "4:1", "1:8", "8:1")


def _extra_models(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and set(m) <= EXTRA_MODEL_KEYS and isinstance(m.get("id"), str) and m["id"].strip() != ""
        and isinstance(m.get("label", ""), str) and _list_of(EXTRA_MODEL_RATIOS)(m.get("ratios", [])) and _list_of(EXTRA_MODEL_SIZES)(m.get("sizes", []))
        for m in value
    )


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "latency_ms": _non_negative_int,
    "page_delay_ms": _non_negative_int,
    "upload_delay_ms": _non_negative_int,
    "mode": _one_of(MODES),
    "mode_times": _optional_int,
    "dialogs": _list_of(DIALOGS),
    "copyright_dialog": _bool,
    "markup": _one_of(MARKUPS),
    "missing_roles": _list_of(MISSABLE_ROLES),
    "image_count": _non_negative_int,
    "text": _optional_str,
    "signin_required": _bool,
    "image_stagger_ms": _non_negative_int,
    "hang_ms": _non_negative_int,
    "dialog_delay_ms": _non_negative_int,
    "event_dialogs": _event_dialogs,
    "copyright_delay_ms": _non_negative_int,
    "select_apply": _one_of(SELECT_APPLY),
    "select_apply_delay_ms": _non_negative_int,
    "upload_signal": _one_of(UPLOAD_SIGNALS),
    "run_button": _one_of(RUN_BUTTONS),
    "harmless_toast": _bool,
    "stale_callout": _bool,
    "failure_display": _one_of(FAILURE_DISPLAYS),
    "thinking_image": _bool,
    "model_from_url": _bool,
    "model_picker": _bool,
    "unavailable_models": _strings,
    "app_path": _bool,
    "region_redirect": _bool,
    "temporary_chat": _bool,
    "signin_refused": _bool,
    "rotate_cookie": _one_of(("page_load", "off")),
    "refuse_stale_cookie": _bool,
    "stale_grace_ms": _non_negative_int,
    "signed_out_page": _one_of(("redirect", "link")),
    "allowances": _allowances,
    "extra_models": _extra_models,
}


def validate(patch: Any) -> dict[str, Any]:
    """Return a deep copy of `patch` or raise ConfigError naming the first bad key."""
    if not isinstance(patch, dict):
        raise ConfigError("config must be a JSON object")
    for key, value in patch.items():
        check = _CHECKS.get(key)
        if check is None:
            raise ConfigError(f"unknown config key {key!r}; known: {sorted(_CHECKS)}")
        if not check(value):
            raise ConfigError(f"bad value for {key!r}: {value!r}")
    return copy.deepcopy(patch)


def default_config() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_CONFIG)

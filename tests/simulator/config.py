"""The simulator's knobs: defaults, validation and merging of partial updates."""

from __future__ import annotations

import copy
from typing import Any, Callable

MODES = ("ok", "quota", "rate_limit", "internal", "blocked", "hang", "logout", "region")
DIALOGS = ("autosave", "preference_vote", "consent")
MARKUPS = ("current", "legacy")
MISSABLE_ROLES = ("prompt_textarea", "run_button", "add_media_button", "aspect_ratio_select")

DEFAULT_CONFIG: dict[str, Any] = {
    "latency_ms": 300,  # server-side wait before each GenerateContent answer
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
    "signin_refused": False,  # the sign-in's e-mail step leads to Google's "This browser or app may not be secure"
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


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "latency_ms": _non_negative_int,
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
    "signin_refused": _bool,
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

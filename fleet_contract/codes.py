"""The failure codes an instance reports for a generation (`error.code` of `POST /generate`)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    NEEDS_LOGIN = "needs_login"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    BLOCKED = "blocked"  # the model answered with text and no image (a refused prompt)
    INTERNAL_ERROR = "internal_error"
    UI_CHANGED = "ui_changed"
    TIMEOUT = "timeout"
    BAD_INPUT = "bad_input"
    REGION_BLOCKED = "region_blocked"  # the account or its address is outside the served regions
    MODEL_UNAVAILABLE = "model_unavailable"  # the page says this account may not use the requested model


class LoginState(StrEnum):
    """What the instance's page says of its Google session; only `logged_in` takes tasks."""

    UNKNOWN = "unknown"
    LOGGED_IN = "logged_in"
    NEEDS_LOGIN = "needs_login"
    # Google's sign-in refused this browser ("This browser or app may not be secure").
    SIGNIN_REFUSED = "signin_refused"


class Reach(StrEnum):
    """Whether the instance's page can use AI Studio at all, apart from the login: `unreachable` (proxy down, DNS,
    timeout) or `region_blocked` (AI Studio sent it to its "available regions" page: the address it comes from,
    its proxy's exit, is outside Google's regions)."""

    UNKNOWN = "unknown"
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    REGION_BLOCKED = "region_blocked"


# Reach values that keep an instance out of the pool until a later load works.
OUT_OF_REACH = (Reach.UNREACHABLE, Reach.REGION_BLOCKED)


class BrowserState(StrEnum):
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"
    DOWN = "down"

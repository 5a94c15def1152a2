"""The account rules, pure: how long a model rests on an account, the pause between an account's tasks, the caps.

Quota answers block a model on an account until the next midnight Pacific (when Google resets it); a rate limit
rests the model with a doubling, jittered pause that a success resets; a model the page refuses to the account
(tier, region) stays blocked until a new session or restart. Nothing here rests a whole account: every answer
Google gives is per model, and the account keeps serving its other models.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from gateway.accounts.calendar import next_reset

ANY_MODEL = "*"


class BlockKind(StrEnum):
    UNAVAILABLE = "unavailable"  # the page said the account cannot use the model: until a new session or restart
    QUOTA = "quota"  # the day's allowance is spent: until midnight Pacific
    CAP = "cap"  # the operator's own daily cap is reached: until midnight Pacific
    RATE_LIMIT = "rate_limit"  # too many requests: a doubling pause, reset by a success


TIMED = (BlockKind.QUOTA, BlockKind.CAP, BlockKind.RATE_LIMIT)


def rate_limit_pause(strikes: int, first: float, longest: float, jitter: float, draw: Callable[[], float] = random.random) -> float:
    """Seconds a model rests on an account after its `strikes`-th rate limit in a row: first, doubled each
    time up to `longest`, then spread by up to ±jitter so that accounts on one exit do not come back together."""
    base = min(longest, first * 2 ** max(0, strikes - 1))
    return base * (1 + jitter * (2 * draw() - 1))


def pace_pause(pause: float, jitter: float, draw: Callable[[], float] = random.random) -> float:
    """Seconds an account rests after a task: `pause`, lengthened by up to `jitter` of it (never shortened:
    the pause is the operator's floor)."""
    return pause * (1 + jitter * draw()) if pause > 0 else 0.0


def block_until(kind: BlockKind, now: datetime, pause: float = 0.0) -> datetime | None:
    """When a block of this kind, written now, ends (None: it waits for a new session or a restart)."""
    if kind in (BlockKind.QUOTA, BlockKind.CAP):
        return next_reset(now)
    if kind == BlockKind.RATE_LIMIT:
        return now + timedelta(seconds=pause)
    return None


class CapError(ValueError):
    """A daily-cap setting that cannot be read."""


def parse_daily_caps(text: str) -> dict[str, int]:
    """`GATEWAY_PACE_DAILY_CAP`: "" (no cap), "40" (every model), or "gemini-3-pro-image=20,*=60"."""
    caps: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        model, sep, count = part.rpartition("=") if "=" in part else ("", "", part)
        model = model.strip() or ANY_MODEL
        if sep and model == ANY_MODEL and not part.startswith("*"):
            raise CapError(f"{part!r}: a model name goes before '='")
        try:
            value = int(count.strip())
        except ValueError:
            raise CapError(f"{part!r}: the cap must be a whole number") from None
        if not 1 <= value <= 100_000:
            raise CapError(f"{part!r}: the cap must be between 1 and 100000")
        if model in caps:
            raise CapError(f"{model!r} is capped twice")
        caps[model] = value
    return caps


def cap_for(caps: Mapping[str, int], model: str, instance_cap: int | None) -> int | None:
    """The daily cap on one account's use of one model: the instance's own, else the fleet's for the model."""
    if instance_cap is not None:
        return instance_cap
    return caps.get(model, caps.get(ANY_MODEL))

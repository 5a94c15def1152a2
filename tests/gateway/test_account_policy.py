"""The account rules, pure: rate-limit pauses, pacing pauses, block ends and daily caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.accounts.policy import (
    BlockKind,
    CapError,
    block_until,
    cap_for,
    pace_pause,
    parse_daily_caps,
    rate_limit_pause,
)


def test_rate_limit_pauses_double_up_to_the_longest() -> None:
    middle = lambda: 0.5  # noqa: E731 - a draw that lands on no jitter at all
    assert [rate_limit_pause(n, 30, 900, 0.5, middle) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]


def test_rate_limit_jitter_stays_within_its_fraction() -> None:
    assert rate_limit_pause(1, 30, 900, 0.5, lambda: 0.0) == 15
    assert rate_limit_pause(1, 30, 900, 0.5, lambda: 1.0) == 45


def test_the_pacing_pause_is_a_floor_that_jitter_only_lengthens() -> None:
    assert pace_pause(10, 0.5, lambda: 0.0) == 10
    assert pace_pause(10, 0.5, lambda: 1.0) == 15
    assert pace_pause(0, 0.5, lambda: 1.0) == 0


def test_blocks_end_at_the_reset_after_a_pause_or_never() -> None:
    now = datetime(2027, 7, 15, 20, 0, tzinfo=UTC)
    assert block_until(BlockKind.QUOTA, now) == block_until(BlockKind.CAP, now) == datetime(2027, 7, 16, 7, 0, tzinfo=UTC)
    assert block_until(BlockKind.RATE_LIMIT, now, 45) == now + timedelta(seconds=45)
    assert block_until(BlockKind.UNAVAILABLE, now) is None


@pytest.mark.parametrize(
    ("text", "caps"),
    [("", {}), ("40", {"*": 40}), ("gemini-3-pro-image=20, *=60", {"gemini-3-pro-image": 20, "*": 60}), (" , ", {})],
)
def test_daily_caps_are_read(text: str, caps: dict[str, int]) -> None:
    assert parse_daily_caps(text) == caps


@pytest.mark.parametrize(
    ("text", "why"),
    [("x=y", "whole number"), ("0", "between 1"), ("=5", "before '='"), ("a=1,a=2", "twice"), ("200000", "between 1")],
)
def test_bad_daily_caps_say_why(text: str, why: str) -> None:
    with pytest.raises(CapError, match=why):
        parse_daily_caps(text)


def test_an_instance_cap_wins_over_the_fleets() -> None:
    caps = {"gemini-3-pro-image": 20, "*": 60}
    assert cap_for(caps, "gemini-3-pro-image", None) == 20
    assert cap_for(caps, "gemini-2.5-flash-image", None) == 60
    assert cap_for(caps, "gemini-3-pro-image", 5) == 5
    assert cap_for({}, "gemini-3-pro-image", None) is None

"""Closing the gateway: a part whose close hangs is logged and left behind, and the rest still closes."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.app import _close_within


async def test_a_close_that_hangs_is_left_behind_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    hung = asyncio.Event()

    async def never_ends() -> None:
        hung.set()
        await asyncio.Event().wait()

    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        await _close_within("reconciler", never_ends(), timeout=0.2)
    assert hung.is_set() and time.monotonic() - began < 5
    assert "closing the reconciler took more than" in caplog.text


async def test_a_close_that_fails_still_says_why() -> None:
    async def fails() -> None:
        raise RuntimeError("the pool was already gone")

    with pytest.raises(RuntimeError, match="already gone"):
        await _close_within("database", fails(), timeout=5)

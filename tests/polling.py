"""Waiting for a condition: the test suite's one poll loop, in a blocking and an asyncio form.

`wait_until(check, timeout=..., what=...)` calls `check()` until `until(value)` holds (by default: until the
value is truthy) and returns that value. After `timeout` seconds it raises AssertionError naming `what` (a
string, or a function that makes one at that moment, for logs) and the last value `check` gave, or the last
exception it raised of those listed in `ignore` (any other exception ends the wait at once).
`await_until` is the same on an event loop; its `check` may be a coroutine function or a plain one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
What = str | Callable[[], str]
Ignored = tuple[type[BaseException], ...]

LAST_SHOWN = 2000  # characters of the last value in a timeout message: a whole response body would drown it


class _Poll:
    """One wait's deadline and the last thing its check gave, shared by both forms."""

    def __init__(self, timeout: float, what: What, until: Callable[[Any], object]) -> None:
        self.timeout, self.what, self.until = timeout, what, until
        self.deadline = time.monotonic() + timeout
        self.last: object = None

    def reached(self, value: object) -> bool:
        if inspect.isawaitable(value):  # truthy, never awaited: a wait that passes without waiting for anything
            raise TypeError(f"check() gave {value!r}: wait for an awaitable with await_until")
        self.last = value
        return bool(self.until(value))

    def failed(self, exc: BaseException) -> None:
        self.last = exc

    def give_up_if_late(self) -> None:
        if time.monotonic() >= self.deadline:
            raise AssertionError(self.message())

    def message(self) -> str:
        what = self.what() if callable(self.what) else self.what
        last = repr(self.last)
        if len(last) > LAST_SHOWN:
            last = last[:LAST_SHOWN] + "…"
        return f"timed out after {self.timeout:g} s waiting for {what}; last: {last}"

    def next_pause(self, pause: float) -> float:
        # Never past the deadline: the last check happens at it, not up to one pause after.
        return max(0.0, min(pause, self.deadline - time.monotonic()))


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    what: What,
    until: Callable[[T], object] = bool,
    ignore: Ignored = (),
    pause: float = 0.05,
) -> T:
    """Call `check()` every `pause` seconds until `until(value)` holds; return that value."""
    poll = _Poll(timeout, what, until)
    while True:
        try:
            value = check()
        except ignore as exc:
            poll.failed(exc)
        else:
            if poll.reached(value):
                return value
        poll.give_up_if_late()
        time.sleep(poll.next_pause(pause))


async def await_until(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float,
    what: What,
    until: Callable[[T], object] = bool,
    ignore: Ignored = (),
    pause: float = 0.05,
) -> T:
    """`wait_until` on an event loop: `check()` may return an awaitable, which is awaited."""
    poll = _Poll(timeout, what, until)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            poll.failed(exc)
        else:
            if poll.reached(value):
                return value  # type: ignore[return-value]
        poll.give_up_if_late()
        await asyncio.sleep(poll.next_pause(pause))

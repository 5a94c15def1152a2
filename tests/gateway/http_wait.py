"""Polling an instance's HTTP endpoint until it answers, for the runtime tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest


async def wait_http(
    url: str, *, token: str | None = None, timeout: float = 30.0, until: Callable[[Any], bool] | None = None
) -> httpx.Response:
    """Poll `url` until it answers 200 (and `until(json)` holds); fail after `timeout` seconds."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    last: object = None
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            try:
                r = await http.get(url, headers=headers)
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 200 and (until is None or until(r.json())):
                    return r
            except httpx.TransportError as e:
                last = repr(e)
            await asyncio.sleep(0.1)
    pytest.fail(f"{url} did not answer in {timeout} s; last: {last}")

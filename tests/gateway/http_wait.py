"""Polling an instance's HTTP endpoint until it answers, for the runtime tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.polling import await_until


async def wait_http(
    url: str, *, token: str | None = None, timeout: float = 30.0, until: Callable[[Any], bool] | None = None
) -> httpx.Response:
    """Poll `url` until it answers 200 (and `until(json)` holds); fail after `timeout` seconds."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    last_body = ""

    def answered(response: httpx.Response) -> bool:
        nonlocal last_body
        last_body = response.text[:200]
        return response.status_code == 200 and (until is None or until(response.json()))

    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
        return await await_until(lambda: http.get(url, headers=headers), until=answered, timeout=timeout,
                                 what=lambda: f"{url} to answer (last body: {last_body!r})",
                                 ignore=(httpx.TransportError,), pause=0.1)

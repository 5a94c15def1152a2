"""Speaks to one instance over its HTTP contract (docs/instance-api.md) with the instance's bearer token."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus


# A live-view frame is a base64 JPEG of the instance's viewport: well under this.
LIVEVIEW_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class InstanceAddress:
    endpoint: str
    token: str | None


class InstanceStatus(msgspec.Struct, kw_only=True):
    """The parts of `GET /status` the gateway uses; unknown keys are ignored."""

    ready: bool = False
    browser: str = "starting"
    login_state: str = "unknown"
    busy: bool = False
    current_task: str | None = None
    page_url: str | None = None
    version: str | None = None
    # Why the page cannot reach AI Studio (login_state `unreachable`), in the browser's words.
    page_error: str | None = None
    browser_mode: str | None = None
    # Session health, ISO 8601 UTC or None.
    login_checked_at: str | None = None
    signed_in_since: str | None = None
    session_saved_at: str | None = None
    session_expires_at: str | None = None
    last_success_at: str | None = None


class InstanceCallError(Exception):
    """Base of the instance client's errors."""


class InstanceUnreachable(InstanceCallError):
    """Connection refused or reset, timeout: nothing answered."""


class InstanceRejected(InstanceCallError):
    """The instance answered with an error status; `detail` is its own message."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class InstanceClient:
    """One pooled HTTP client for every instance; each call names the instance it talks to."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 200,
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def status(self, address: InstanceAddress, *, timeout: float | None = None) -> InstanceStatus:
        response = await self._request("GET", address, "/status", timeout=timeout)
        return msgspec.json.decode(response.content, type=InstanceStatus)

    async def check_login(self, address: InstanceAddress, *, timeout: float | None = None) -> InstanceStatus:
        """Have an idle instance reload AI Studio and say its login state (409 while it runs a task)."""
        response = await self._request("POST", address, "/login/check", timeout=timeout)
        return msgspec.json.decode(response.content, type=InstanceStatus)

    async def get_session(self, address: InstanceAddress) -> bytes:
        return (await self._request("GET", address, "/session")).content

    async def put_session(self, address: InstanceAddress, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        response = await self._request("PUT", address, "/session", content=body, headers=headers)
        return response.json()

    async def screenshot(self, address: InstanceAddress, *, image_format: str = "png") -> tuple[bytes, str]:
        response = await self._request("GET", address, "/screenshot", params={"format": image_format})
        return response.content, response.headers.get("content-type", f"image/{image_format}")

    async def navigate(self, address: InstanceAddress, *, url: str | None = None, target: str | None = None) -> None:
        body = {"url": url} if url else {"target": target or "home"}
        await self._request("POST", address, "/navigate", json=body)

    async def diagnose(self, address: InstanceAddress) -> dict[str, Any]:
        """The page check: each selector role against the live page (read-only)."""
        return (await self._request("GET", address, "/diagnose")).json()

    async def put_selectors(
        self, address: InstanceAddress, body: bytes, *, dry_run: bool = False, timeout: float | None = None
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        params = {"dry_run": "true"} if dry_run else None
        response = await self._request("PUT", address, "/selectors", content=body, headers=headers, params=params, timeout=timeout)
        return response.json()

    async def delete_selectors(self, address: InstanceAddress, *, timeout: float | None = None) -> dict[str, Any]:
        return (await self._request("DELETE", address, "/selectors", timeout=timeout)).json()

    async def open_liveview(self, address: InstanceAddress, *, open_timeout: float = 10.0) -> ClientConnection:
        """The instance's live-view WebSocket (frames out, input in), opened with its token; the caller closes it."""
        url = "ws" + address.endpoint.rstrip("/").removeprefix("http") + "/liveview"
        headers = {"Authorization": f"Bearer {address.token}"} if address.token else None
        try:
            # Straight to the instance (never an environment proxy); JPEG frames do not compress.
            return await connect(
                url, additional_headers=headers, open_timeout=open_timeout, proxy=None, compression=None,
                max_size=LIVEVIEW_MAX_MESSAGE, ping_interval=20, close_timeout=2,
            )
        except InvalidStatus as exc:
            raise InstanceRejected(exc.response.status_code, "live view refused") from exc
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise InstanceUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def generate(
        self, address: InstanceAddress, payload: dict[str, Any], *, timeout: float | None = None
    ) -> dict[str, Any]:
        return (await self._request("POST", address, "/generate", json=payload, timeout=timeout)).json()

    async def _request(
        self,
        method: str,
        address: InstanceAddress,
        path: str,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if address.token:
            all_headers["Authorization"] = f"Bearer {address.token}"
        extra = {"timeout": timeout} if timeout is not None else {}
        try:
            # httpx's timeouts are per network step; the whole call is bounded too.
            async with asyncio.timeout(timeout):
                response = await self._http.request(
                    method, address.endpoint.rstrip("/") + path, headers=all_headers, **extra, **kwargs
                )
        except TimeoutError as exc:
            raise InstanceUnreachable(f"no answer in {timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise InstanceUnreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if response.status_code >= 400:
            raise InstanceRejected(response.status_code, _detail(response))
        return response


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
    return str(body)[:300]

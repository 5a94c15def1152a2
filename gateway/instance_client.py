"""Speaks to one instance over its HTTP contract (fleet_contract.messages; prose in docs/instance-api.md) with
the instance's bearer token. Every answer is decoded into the contract's Struct, so one that does not follow
it is an `InstanceBadAnswer`, never a half-read dict."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from fleet_contract import messages as m
from gateway.image_types import sniff_image_type
from fleet_contract import selectors as selectors_contract

# The status as the gateway reads it; one definition, the contract's.
InstanceStatus = m.Status


# A snapshot zip is a few MB (the page's HTML is capped at 4 MB by the instance); more than this is cut off.
SNAPSHOT_MAX_BYTES = 64 * 1024 * 1024
_SNAPSHOT_ID = re.compile(m.SNAPSHOT_ID_PATTERN)

# A live-view frame is a base64 JPEG of the instance's viewport: well under this.
LIVEVIEW_MAX_MESSAGE = 16 * 1024 * 1024


@dataclass(frozen=True)
class InstanceAddress:
    endpoint: str
    token: str | None


class InstanceCallError(Exception):
    """Base of the instance client's errors."""


class InstanceNoAnswer(InstanceCallError):
    """Connection refused or reset, timeout: the gateway could not reach the instance, nothing answered."""


class InstanceBadAnswer(InstanceCallError):
    """The instance answered 2xx with a body that does not follow the contract."""


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
        # No environment proxies: instance tokens and exported logins must never pass through an HTTP_PROXY.
        self._http = httpx.AsyncClient(
            trust_env=False,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def status(self, address: InstanceAddress, *, timeout: float | None = None) -> m.Status:
        return _decode(await self._request("GET", address, "/status", timeout=timeout), m.Status)

    async def check_login(self, address: InstanceAddress, *, timeout: float | None = None) -> m.LoginCheck:
        """Have an idle instance reload AI Studio and say its login state (409 while it runs a task)."""
        return _decode(await self._request("POST", address, "/login/check", timeout=timeout), m.LoginCheck)

    async def get_session(self, address: InstanceAddress) -> bytes:
        """The storage state's bytes as the instance wrote them (passed on to the operator untouched)."""
        return (await self._request("GET", address, "/session")).content

    async def put_session(self, address: InstanceAddress, body: bytes) -> m.SessionImported:
        headers = {"Content-Type": "application/json"}
        response = await self._request("PUT", address, "/session", content=body, headers=headers)
        return _decode(response, m.SessionImported)

    async def restore_session(self, address: InstanceAddress) -> m.SessionImported:
        """Back to the login the instance's last import replaced (kept on its volume)."""
        return _decode(await self._request("POST", address, "/session/restore"), m.SessionImported)

    async def screenshot(self, address: InstanceAddress, *, image_format: str = "png") -> tuple[bytes, str]:
        """The image and its type, read from its bytes: the instance's Content-Type is never passed on."""
        response = await self._request("GET", address, "/screenshot", params={"format": image_format})
        media_type = sniff_image_type(response.content)
        if media_type is None:
            raise InstanceBadAnswer(f"the screenshot is not a PNG, JPEG or WebP image ({len(response.content)} bytes)")
        return response.content, media_type

    async def navigate(self, address: InstanceAddress, *, url: str | None = None, target: str | None = None) -> None:
        body = {"url": url} if url else {"target": target or "home"}
        await self._request("POST", address, "/navigate", json=body)

    async def diagnose(self, address: InstanceAddress) -> m.PageCheck:
        """The page check: each selector role against the live page (read-only)."""
        return _decode(await self._request("GET", address, "/diagnose"), m.PageCheck)

    async def put_selectors(
        self, address: InstanceAddress, body: bytes, *, dry_run: bool = False, revision: int | None = None,
        timeout: float | None = None,
    ) -> m.SelectorsInstalled:
        """An override change; with `revision`, the instance applies it only when newer than the one it has."""
        headers = {"Content-Type": "application/json"}
        params = {"dry_run": "true"} if dry_run else _revision_params(revision)
        response = await self._request("PUT", address, "/selectors", content=body, headers=headers, params=params, timeout=timeout)
        return _decode(response, m.SelectorsInstalled)

    async def delete_selectors(
        self, address: InstanceAddress, *, revision: int | None = None, timeout: float | None = None
    ) -> m.SelectorsRemoved:
        response = await self._request("DELETE", address, "/selectors", params=_revision_params(revision), timeout=timeout)
        return _decode(response, m.SelectorsRemoved)

    async def list_snapshots(self, address: InstanceAddress) -> m.SnapshotList:
        return _decode(await self._request("GET", address, "/snapshots"), m.SnapshotList)

    async def take_snapshot(self, address: InstanceAddress, reason: str, *, timeout: float | None = 30.0) -> m.Snapshot:
        body = m.encode(m.SnapshotRequest(reason=reason))
        headers = {"Content-Type": "application/json"}
        return _decode(await self._request("POST", address, "/snapshots", content=body, headers=headers, timeout=timeout), m.Snapshot)

    async def snapshot_zip(self, address: InstanceAddress, snapshot_id: str) -> AsyncIterator[bytes]:
        """The snapshot's zip as chunks, once the instance answered 200; the id is checked here too, so nothing but
        that shape reaches the instance's path."""
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id[:80]!r}")
        response = await self._request("GET", address, f"/snapshots/{snapshot_id}", stream=True)
        return _chunks(response, SNAPSHOT_MAX_BYTES)

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
            raise InstanceNoAnswer(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def generate(
        self, address: InstanceAddress, request: m.GenerateRequest, *, timeout: float | None = None
    ) -> m.GenerateAnswer:
        headers = {"Content-Type": "application/json"}
        response = await self._request("POST", address, "/generate", content=m.encode(request), headers=headers, timeout=timeout)
        return _decode(response, m.GenerateAnswer)

    async def _request(
        self,
        method: str,
        address: InstanceAddress,
        path: str,
        *,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if address.token:
            all_headers["Authorization"] = f"Bearer {address.token}"
        extra = {"timeout": timeout} if timeout is not None else {}
        try:
            # httpx's timeouts are per network step; the whole call is bounded too.
            async with asyncio.timeout(timeout):
                request = self._http.build_request(
                    method, address.endpoint.rstrip("/") + path, headers=all_headers, **extra, **kwargs
                )
                response = await self._http.send(request, stream=stream)
        except TimeoutError as exc:
            raise InstanceNoAnswer(f"no answer in {timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise InstanceNoAnswer(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if response.status_code >= 400:
            if stream:
                await response.aread()  # the error's body is small; the connection goes back to the pool
            raise InstanceRejected(response.status_code, _detail(response))
        return response


async def _chunks(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """A streamed answer's body, at most `limit` bytes; the response is closed however the reading ends."""
    sent = 0
    try:
        async for chunk in response.aiter_bytes():
            sent += len(chunk)
            if sent > limit:
                return
            yield chunk
    finally:
        await response.aclose()


def _decode(response: httpx.Response, kind: type[msgspec.Struct]) -> Any:
    try:
        return msgspec.json.decode(response.content, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise InstanceBadAnswer(f"{response.request.url.path}: the answer does not follow the contract ({exc})") from exc


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


def _revision_params(revision: int | None) -> dict[str, str] | None:
    return None if revision is None else {selectors_contract.REVISION_PARAM: str(revision)}

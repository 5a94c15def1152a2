"""Request bodies of both listeners, checked before any handler parses them.

- A request that changes state (POST, PUT, PATCH, DELETE) with a body says it is JSON or multipart: any other
  type is `415`. `text/plain` and friends are what a page on another site can send without asking (no CORS
  preflight), so refusing them keeps such pages from spending the accounts' quota; so is a body with no type
  at all, which a page can send likewise. The admin listener, whose every route wants the admin token or a
  panel session, takes an untyped body as JSON (scripts that PUT a session file as it is), and the panel's own
  forms (htmx, `application/x-www-form-urlencoded`) on the panel's routes, behind its CSRF check.
- A multipart body is the one accepted type a page on another site can also send without asking (an HTML
  form): one that a browser marks as sent by a page on another site (`Origin`, `Sec-Fetch-Site`) is `403`.
  Clients that are not browsers send neither header.
- A JSON body is read whole up to the listener's size limit (`413` past it), and its nesting is measured
  before anything parses it: deeper than `MAX_JSON_DEPTH` is `400`, so no parser recurses into a
  `[[[[...]]]]` of a million levels.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.hosts import same_origin
from gateway.errors import BadRequest, FleetError, Forbidden, TooLarge

MAX_JSON_DEPTH = 32
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON, MULTIPART, FORM = "json", "multipart", "form"

# A JSON string (escapes included) or one bracket: strings are skipped whole, so brackets inside them don't count.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class UnsupportedMediaType(FleetError):
    status_code = 415
    key = "unsupported_media_type"


def media_kind(content_type: str | None) -> str | None:
    """json, multipart or form for the types a state-changing request may have; None for any other."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return JSON
    if media == "multipart/form-data":
        return MULTIPART
    if media == "application/x-www-form-urlencoded":
        return FORM
    return None


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets nest deeper than `limit` outside strings; cheap on large bodies (a base64 image is
    one string token), and the common body with few brackets is not scanned at all."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


class BodyGuardMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, forms_allowed: Callable[[str], bool], untyped_is_json: bool
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.forms_allowed = forms_allowed
        self.untyped_is_json = untyped_is_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        content_type = headers.get(b"content-type")
        if content_type is None and not _has_body(headers):
            await self.app(scope, receive, send)  # e.g. POST /api/instances/{id}/start with nothing in it
            return
        kind = JSON if content_type is None and self.untyped_is_json else media_kind(content_type)
        if kind is None or (kind == FORM and not self.forms_allowed(scope["path"])):
            raise UnsupportedMediaType(content_type=(content_type or "none")[:100])
        if kind == MULTIPART and (origin := cross_site_origin(headers)) is not None:
            raise Forbidden("origin_mismatch", origin=origin[:100])
        if kind != JSON:
            await self.app(scope, receive, send)
            return
        body = await self._read(headers, receive)
        if json_depth_exceeds(body):
            raise BadRequest("body_too_deep", limit=MAX_JSON_DEPTH)
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, headers: dict[bytes, str], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise TooLarge("body_too_large", limit=self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left; the handler sees the disconnect itself
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TooLarge("body_too_large", limit=self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def cross_site_origin(headers: dict[bytes, str]) -> str | None:
    """The origin of a page on another site that made the browser send this request; None when no page did."""
    origin = headers.get(b"origin")
    if headers.get(b"sec-fetch-site", "").lower() == "cross-site":
        return origin or "cross-site"
    if origin is None or same_origin(origin, headers.get(b"host"), headers.get(b"x-forwarded-host")):
        return None
    return origin


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then whatever the server says next (the disconnect a handler may wait for)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _headers(scope: Scope) -> dict[bytes, str]:
    return {key.lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}


def _has_body(headers: dict[bytes, str]) -> bool:
    length = headers.get(b"content-length")
    return b"transfer-encoding" in headers or (length is not None and length.strip() not in ("", "0"))


class BodyGuardPlugin(InitPluginProtocol):
    """Adds `BodyGuardMiddleware` to a listener; `forms_allowed(path)` says where the panel's forms post, and
    `untyped_is_json` whether a body without a Content-Type is read as JSON (the admin listener) or refused."""

    def __init__(self, max_body_bytes: int, forms_allowed: Callable[[str], bool], *, untyped_is_json: bool = False) -> None:
        self.options: dict[str, Any] = {
            "max_body_bytes": max_body_bytes, "forms_allowed": forms_allowed, "untyped_is_json": untyped_is_json,
        }

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.append(DefineMiddleware(BodyGuardMiddleware, **self.options))
        return app_config

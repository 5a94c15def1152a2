"""Optional API keys for the generation listener (:8812): `Authorization: Bearer <key>`, `X-API-Key`,
`x-goog-api-key` (Google's SDKs) or `?key=` (Google's REST form, which some chat apps use)."""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from gateway.errors import Unauthorized

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="aistudio-fleet"'}


def require_api_key(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """A guard: passes when no keys are configured, or when the request presents one of them."""
    keys = _keys(connection)
    if not keys:
        return
    presented = presented_key(connection.headers.get("authorization"), _api_key_header(connection))
    if presented is None:
        raise Unauthorized("api_key_missing", headers=CHALLENGE)
    # Every key compared in constant time, so timing tells nothing about which one nearly matched.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    if not any(matches):
        raise Unauthorized("api_key_invalid", headers=CHALLENGE)


def _api_key_header(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    # `x-goog-api-key`: what Google's SDKs send to the Gemini face; `?key=`: Google's REST form.
    return (connection.headers.get("x-api-key") or connection.headers.get("x-goog-api-key")
            or connection.query_params.get("key"))


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None


def _keys(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    state = connection.app.state
    keys = state.get("api_keys")
    if keys is None:  # parsed once per app from the injected settings
        keys = state.settings.listeners.api_key_list
        state["api_keys"] = keys
    return keys

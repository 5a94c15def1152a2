"""The Host allowlist of both listeners.

A page on another site can rebind its own name to 127.0.0.1 (DNS rebinding): the browser then sends it to the
gateway as same-origin, with that name in `Host`. Answering only to `localhost`, to IP addresses and to the
names in `GATEWAY_ALLOWED_HOSTS` closes that door, which matters most in token-less loopback mode. An address
needs no listing: no DNS answer can make a page on another site send one as its Host.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.errors import HostNotAllowed
from gateway.settings import ListenerSettings, host_name

ANY_HOST = "*"


class HostAllowlist:
    """Which `Host` header values a listener answers to."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names
        self.any = ANY_HOST in names

    @classmethod
    def from_settings(cls, settings: ListenerSettings) -> HostAllowlist:
        return cls(settings.allowed_host_names)

    def allows(self, host_header: str | None) -> bool:
        if self.any:
            return True
        name = host_name(host_header or "")
        return bool(name) and (name == "localhost" or _is_address(name) or name in self.names)


class AllowedHostsMiddleware:
    """Refuses every HTTP request and WebSocket whose `Host` is not allowed, before anything else looks at it."""

    def __init__(self, app: ASGIApp, allowlist: HostAllowlist) -> None:
        self.app = app
        self.allowlist = allowlist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in (ScopeType.HTTP, ScopeType.WEBSOCKET) and not self.allowlist.any:
            host = _header(scope, b"host")
            if not self.allowlist.allows(host):
                raise HostNotAllowed(host=(host or "")[:100])
        await self.app(scope, receive, send)


class AllowedHostsPlugin(InitPluginProtocol):
    """Puts `AllowedHostsMiddleware` outermost; listed after the other plugins, so it runs before their middleware."""

    def __init__(self, settings: ListenerSettings) -> None:
        self.allowlist = HostAllowlist.from_settings(settings)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.insert(0, DefineMiddleware(AllowedHostsMiddleware, allowlist=self.allowlist))
        return app_config


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host: str | None, forwarded_host: str | None = None) -> bool:
    """A browser's `Origin` names this listener (or the reverse proxy in front of it); `null` never does."""
    netloc = urlsplit(origin).netloc.lower()
    return bool(netloc) and netloc in {(host or "").lower(), (forwarded_host or "").lower()}

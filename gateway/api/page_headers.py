"""The browser-facing headers of every answer: no type sniffing, no framing, and a content security policy.

The panel's own pages (HTML the gateway renders) may load only their own scripts, styles and images and talk only
to their own origin (htmx, the live pool's event stream, the live view's WebSocket). The API's reading page at
/schema (Redoc, with Litestar's inline start script and Redoc's inline styles) gets the same, plus inline script
and style. Anything else (images, logs, downloads, JSON) is a document that must never run anything, even if a
browser opens it on its own: `sandbox` with nothing allowed.
"""

from __future__ import annotations

from litestar.config.app import AppConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.plugins import InitPluginProtocol
from litestar.types import Message, Scope

from gateway.api.docs import SCHEMA_PATH

_COMMON = "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    f"font-src 'self'; {_COMMON}"
)
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    f"worker-src 'self' blob:; connect-src 'self'; {_COMMON}"
)
SANDBOX_POLICY = "sandbox; default-src 'none'; frame-ancestors 'none'"

FIXED_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "same-origin"),
)


def policy_for(path: str, content_type: str) -> str:
    """The content security policy of one answer, from where it is and what it says it is."""
    if content_type.split(";", 1)[0].strip().lower() != "text/html":
        return SANDBOX_POLICY
    if path == SCHEMA_PATH or path.startswith(SCHEMA_PATH + "/"):
        return DOCS_POLICY
    return PAGE_POLICY


async def add_page_headers(message: Message, scope: Scope) -> None:
    """A `before_send` hook: it sees every answer's start, error answers of the middleware included."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in FIXED_HEADERS:
        headers.setdefault(name, value)
    headers.setdefault("content-security-policy", policy_for(scope.get("path", ""), headers.get("content-type") or ""))


class PageHeadersPlugin(InitPluginProtocol):
    """Adds the hook to an app: a header a handler set itself is left as it is."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.before_send.append(add_page_headers)
        return app_config

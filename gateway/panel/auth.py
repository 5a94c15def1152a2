"""Admin access on the admin listener: the panel's signed session cookie and the API's bearer token.

With `GATEWAY_ADMIN_TOKEN` set, every path but the sign-in page and static files needs either
`Authorization: Bearer <token>` or the panel's session cookie, whose session lives in the database (signing
out ends it; see `gateway.panel.sessions`). The cookie authorizes the panel's own
pages and actions (CSRF-checked), and only safe methods and the live view on `/api`: an unsafe API call
needs the bearer token, which a browser never adds on its own. Without a token (loopback only, see
`Settings.admin_exposure_problem`) everything is open, but a request from another site's page (a
mismatched `Origin`) is still refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any

from litestar.datastructures import Cookie
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from gateway.api.hosts import same_origin
from gateway.errors import Forbidden, Unauthorized
from gateway.panel.sessions import PanelSessions
from gateway.settings import ListenerSettings

log = logging.getLogger(__name__)

SESSION_COOKIE = "fleet_admin"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PREFIXES = ("/login", "/static/", "/lang", "/favicon.ico")
API_PREFIXES = ("/api/", "/api", "/schema")


class LoginRequired(Unauthorized):
    """A panel page without a session: the panel answers with its sign-in page instead of an error."""


class AdminAuth:
    """Checks credentials; the session cookie is `<session secret>.<hmac>`, keyed by the secret key and the token
    (so changing the token signs everyone out), and the session must still be open in the database."""

    def __init__(self, token: str | None, secret: str, sessions: PanelSessions) -> None:
        self.token = token
        self.sessions = sessions
        self.session_seconds = sessions.seconds
        self._key = hmac.new(secret.encode(), b"admin-session:" + (token or "").encode(), hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, settings: ListenerSettings, secret: str, sessions: PanelSessions) -> AdminAuth:
        return cls(settings.admin_credential, secret, sessions)

    @property
    def required(self) -> bool:
        return self.token is not None

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    async def new_session(self, *, secure: bool) -> Cookie:
        body = await self.sessions.open()
        return Cookie(
            key=SESSION_COOKIE, value=f"{body}.{self._sign(body)}", max_age=int(self.session_seconds),
            httponly=True, samesite="strict", secure=secure, path="/",
        )

    async def session_ok(self, value: str | None) -> bool:
        body = self._signed_body(value)
        return body is not None and await self.sessions.valid(body)

    async def end_session(self, value: str | None) -> None:
        """Signing out: the session is closed in the database, so its cookie is worthless wherever it went."""
        if (body := self._signed_body(value)) is not None:
            await self.sessions.close(body)

    def _signed_body(self, value: str | None) -> str | None:
        """The session secret of a cookie this gateway signed, else None (no database read for a forged one)."""
        body, _, signature = (value or "").rpartition(".")
        if not (body and signature) or not hmac.compare_digest(signature, self._sign(body)):
            return None
        return body

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()


class AdminAccessMiddleware:
    """Applies `AdminAuth` to every HTTP request and WebSocket on the admin listener (see the module doc)."""

    def __init__(self, app: ASGIApp, auth: AdminAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await check_access(self.auth, scope)
        await self.app(scope, receive, send)


async def check_access(auth: AdminAuth, scope: Scope) -> None:
    headers = _headers(scope)
    path: str = scope["path"]
    is_api = path.startswith(API_PREFIXES)
    websocket = scope["type"] == ScopeType.WEBSOCKET
    unsafe = websocket or scope.get("method", "GET") not in SAFE_METHODS
    if unsafe and (origin := headers.get("origin")) and not _same_origin(origin, headers):
        raise Forbidden("origin_mismatch", origin=origin[:100])
    if not auth.required or path.startswith(PUBLIC_PREFIXES) or auth.bearer_ok(headers.get("authorization")):
        return
    if await auth.session_ok(_cookie(headers.get("cookie", ""), SESSION_COOKIE)):
        # The cookie rides along on any request the browser makes: on the API it only reads.
        if is_api and unsafe and not websocket:
            raise Unauthorized()
        return
    raise Unauthorized() if is_api or websocket else LoginRequired()


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}


def _same_origin(origin: str, headers: dict[str, str]) -> bool:
    """The page that sent it was served by this listener (or by the proxy in front of it)."""
    return same_origin(origin, headers.get("host"), headers.get("x-forwarded-host"))


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def safe_next(target: Any) -> str:
    """Where to go after signing in: a path on this site only (never `//elsewhere` or a URL)."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"

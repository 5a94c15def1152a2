"""The one place where errors become HTTP answers: a status, a message in the reader's language, no trace."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from litestar import MediaType, Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import (
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from litestar.types import ExceptionHandlersMap

from gateway.db.outage import database_unreachable
from gateway.errors import FleetError
from gateway.i18n import LANGUAGES, pick_language, translate

log = logging.getLogger(__name__)

LANGUAGE_COOKIE = "lang"  # set by the panel's language switch
DATABASE_RETRY_AFTER = "5"  # seconds; a Postgres restart takes about that


def request_language(request: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The panel's language switch (a cookie) first, then `Accept-Language`, then the configured default."""
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    settings = getattr(request.app.state, "settings", None)
    default = settings.language if settings is not None else "zh"
    return pick_language(request.headers.get("accept-language"), default)


@dataclass(frozen=True)
class ErrorAnswer:
    """What any face answers for an error: the status, the message key and its parameters, extra headers."""

    status_code: int
    key: str
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def message(self, language: str) -> str:
        return translate(self.key, language, **self.params)


def describe_error(request: Request[Any, Any, Any], exc: Exception) -> ErrorAnswer:
    """The one mapping from an exception to an answer; the API renders it as JSON, the panel as HTML."""
    if isinstance(exc, FleetError):
        return ErrorAnswer(exc.status_code, exc.key, exc.params, dict(getattr(exc, "headers", None) or {}))
    if isinstance(exc, ValidationException):
        return ErrorAnswer(400, "invalid_body", {"detail": _validation_detail(exc)})
    if isinstance(exc, HTTPException):
        return _http_answer(request, exc)
    if database_unreachable(exc):
        # An outage, not a bug: one line in the log, and the client is told when to come back.
        log.warning("%s %s: database unreachable: %s", request.method, request.url.path, str(exc).splitlines()[0][:200])
        return ErrorAnswer(503, "database_unavailable", headers={"Retry-After": DATABASE_RETRY_AFTER})
    # A bug: the log gets the trace, the client a generic message.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ErrorAnswer(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error")


def _http_answer(request: Request[Any, Any, Any], exc: HTTPException) -> ErrorAnswer:
    if isinstance(exc, NotFoundException):
        return ErrorAnswer(404, "route_not_found", {"path": request.url.path})
    if isinstance(exc, MethodNotAllowedException):
        return ErrorAnswer(405, "method_not_allowed", headers=dict(exc.headers or {}))
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return ErrorAnswer(413, "too_large")
    if exc.status_code == HTTP_401_UNAUTHORIZED:
        return ErrorAnswer(401, "unauthorized")
    if exc.status_code == HTTP_403_FORBIDDEN:
        # Litestar's CSRF middleware says so in its detail; the only other 403s are permission refusals.
        return ErrorAnswer(403, "csrf_failed" if "CSRF" in str(exc.detail) else "forbidden")
    if exc.status_code >= 500:
        log.error("HTTP %s on %s: %s", exc.status_code, request.url.path, exc.detail)
        return ErrorAnswer(exc.status_code, "internal_error")
    return ErrorAnswer(exc.status_code, "invalid_body", {"detail": exc.detail})


def error_response(request: Request[Any, Any, Any], status_code: int, key: str, **params: Any) -> Response[Any]:
    message = translate(key, request_language(request), **params)
    body = {"success": False, "error": key, "message": message, "detail": message}
    return Response(body, status_code=status_code, media_type=MediaType.JSON)


def _json_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    answer = describe_error(request, exc)
    response = error_response(request, answer.status_code, answer.key, **answer.params)
    response.headers.update(answer.headers)
    return response


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra[:5]:
        if isinstance(item, dict):
            where = item.get("key") or item.get("source") or ""
            parts.append(f"{where}: {item.get('message', '')}".strip(": "))
    return "; ".join(parts) or str(exc.detail)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FleetError: _json_error,
    ValidationException: _json_error,
    HTTPException: _json_error,
    Exception: _json_error,
}

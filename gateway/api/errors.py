"""The one place where errors become HTTP answers: a status, a message in the reader's language, no trace."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from gateway.errors import FleetError
from gateway.i18n import pick_language, translate

log = logging.getLogger(__name__)


def request_language(request: Request[Any, Any, Any]) -> str:
    settings = getattr(request.app.state, "settings", None)
    default = settings.language if settings is not None else "zh"
    return pick_language(request.headers.get("accept-language"), default)


def error_response(request: Request[Any, Any, Any], status_code: int, key: str, **params: Any) -> Response[Any]:
    message = translate(key, request_language(request), **params)
    body = {"success": False, "error": key, "message": message, "detail": message}
    return Response(body, status_code=status_code, media_type=MediaType.JSON)


def _fleet_error(request: Request[Any, Any, Any], exc: FleetError) -> Response[Any]:
    return error_response(request, exc.status_code, exc.key, **exc.params)


def _validation_error(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(request, 400, "invalid_body", detail=_validation_detail(exc))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotFoundException):
        return error_response(request, 404, "route_not_found", path=request.url.path)
    if isinstance(exc, MethodNotAllowedException):
        response = error_response(request, 405, "method_not_allowed")
        response.headers.update(exc.headers or {})
        return response
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return error_response(request, 413, "too_large")
    if exc.status_code >= 500:
        log.error("HTTP %s on %s: %s", exc.status_code, request.url.path, exc.detail)
        return error_response(request, exc.status_code, "internal_error")
    return error_response(request, exc.status_code, "invalid_body", detail=exc.detail)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # A bug: the log gets the trace, the client a generic message.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, HTTP_500_INTERNAL_SERVER_ERROR, "internal_error")


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in extra[:5]:
        if isinstance(item, dict):
            where = item.get("key") or item.get("source") or ""
            parts.append(f"{where}: {item.get('message', '')}".strip(": "))
    return "; ".join(parts) or str(exc.detail)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    FleetError: _fleet_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected_error,
}

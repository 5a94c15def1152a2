"""What the OpenAI, Gemini and Anthropic faces share: errors in each API's own shape, n tasks side by side, a task's
failure as an HTTP error, and the client's disconnect watched once for several tasks.

Each face is a thin translation onto one `GenerationRequest` and one `TaskResult`; none of them talks to an
instance or the database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from litestar import MediaType, Request, Response
from litestar.types import ExceptionHandlersMap

from fleet_contract.codes import ErrorCode
from gateway.api.errors import EXCEPTION_HANDLERS, describe_error, request_language
from gateway.api.generation import task_message
from gateway.dispatcher import Dispatcher, GenerationRequest, InputLimits, TaskResult
from gateway.dispatcher import outcomes
from gateway.dispatcher.durable import TaskMeta
from gateway.db.types import utcnow
from gateway.errors import FleetError

log = logging.getLogger(__name__)

# How a task that ran and failed is answered: its instance error code → HTTP status (anything else: 502).
FAILURE_STATUS = {
    ErrorCode.BLOCKED: 400,
    ErrorCode.BAD_INPUT: 400,
    ErrorCode.QUOTA_EXHAUSTED: 429,
    ErrorCode.RATE_LIMITED: 429,
    outcomes.EXHAUSTED: 429,
    outcomes.QUEUE_TIMEOUT: 503,
    outcomes.NO_INSTANCE: 503,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.NEEDS_LOGIN: 503,
    outcomes.SHUTDOWN: 503,
    outcomes.ABANDONED: 503,
    outcomes.CLIENT_GONE: 499,
    ErrorCode.TIMEOUT: 504,
}
FAILURE_RETRY_AFTER = "30"  # seconds, for a failed task's 429 and 503: another instance may be free by then

# Which request field an error is about, by its message key's start (OpenAI's `param`).
_PARAMS = (
    ("model_", "model"),
    ("aspect_ratio_", "size"),
    ("image_size_", "size"),
    ("size_", "size"),
    ("prompt_", "prompt"),
    ("reference_", "image"),
    ("too_many_references", "image"),
    ("n_", "n"),
    ("response_format_", "response_format"),
    ("output_format_", "output_format"),
    ("output_quality_", "output_compression"),
    ("idempotency_key_", "Idempotency-Key"),
    ("callback_url_", "callback_url"),
    ("mask_", "mask"),
    ("messages_", "messages"),
    ("image_url_", "messages"),
)


@dataclass(frozen=True)
class FaceError:
    """An error as any face renders it: HTTP status, a stable code, a message, the field, extra headers."""

    status_code: int
    code: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class TaskFailed(Exception):
    """A task that ran and failed, raised by a face so that its error shape carries it."""

    def __init__(self, error: FaceError) -> None:
        super().__init__(error.message)
        self.error = error


def face_error(request: Request[Any, Any, Any], exc: Exception) -> FaceError:
    if isinstance(exc, TaskFailed):
        return exc.error
    answer = describe_error(request, exc)
    param = answer.params.get("field") if isinstance(answer.params.get("field"), str) else _param_of(answer.key)
    return FaceError(answer.status_code, answer.key, answer.message(request_language(request)), param, answer.headers)


def _param_of(key: str) -> str | None:
    return next((param for prefix, param in _PARAMS if key.startswith(prefix)), None)


def failure(result: TaskResult, language: str) -> FaceError:
    """The HTTP error for a task that ran and failed (the old API answers it as 200 with success false)."""
    code = result.error_code or "internal_error"
    status = FAILURE_STATUS.get(code, 502)
    headers = {"Retry-After": _retry_after(result)} if status in (429, 503) else {}
    return FaceError(status, code, task_message(result, language), None, headers)


def _retry_after(result: TaskResult) -> str:
    """Seconds until an account may be asked for the model again, when its failure says so; else a short wait."""
    if result.retry_at is None:
        return FAILURE_RETRY_AFTER
    return str(max(1, math.ceil((result.retry_at - utcnow()).total_seconds())))


def exception_handlers(render: Callable[[FaceError], dict[str, Any]]) -> ExceptionHandlersMap:
    """A face's router answers every error, its guards' and the body guard's included, in its own shape."""

    def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        error = face_error(request, exc)
        return Response(render(error), status_code=error.status_code, media_type=MediaType.JSON, headers=error.headers)

    # Every class the app maps too: a handler is looked up by the most specific class, whatever its layer.
    return {**{kind: handle for kind in EXCEPTION_HANDLERS}, TaskFailed: handle}


def openai_error(error: FaceError) -> dict[str, Any]:
    """OpenAI's shape: {"error": {"message", "type", "code", "param"}}."""
    return {"error": {"message": error.message, "type": _openai_type(error.status_code), "code": error.code, "param": error.param}}


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


# google.rpc.Code names by HTTP status, as Google's APIs answer them.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
    409: "ABORTED", 410: "NOT_FOUND", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def gemini_error(error: FaceError) -> dict[str, Any]:
    """Gemini's shape: {"error": {"code", "message", "status"}}, plus our own code under `details`."""
    status = _GOOGLE_STATUS.get(error.status_code, "INTERNAL" if error.status_code >= 500 else "INVALID_ARGUMENT")
    reason = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": error.code, "domain": "aistudio-fleet"}
    return {"error": {"code": error.status_code, "message": error.message, "status": status, "details": [reason]}}


# Running ----------------------------------------------------------------------------------------------


def dispatcher_of(request: Request[Any, Any, Any]) -> Dispatcher:
    return request.app.state.fleet.dispatcher


def limits_of(request: Request[Any, Any, Any]) -> InputLimits:
    return InputLimits.from_settings(request.app.state.settings.inputs)


class DisconnectWatch:
    """Watches the client's disconnect once, for any number of tasks waiting for it (n images at once)."""

    def __init__(self, request: Request[Any, Any, Any]) -> None:
        self._request = request
        self._watch: asyncio.Task[None] | None = None

    async def _disconnected(self) -> None:
        # The body is read already: the only message the server can still send is `http.disconnect`.
        while (await self._request.receive())["type"] != "http.disconnect":
            pass

    def __call__(self) -> Awaitable[None]:
        if self._watch is None:
            self._watch = asyncio.ensure_future(self._disconnected())
        return asyncio.shield(self._watch)  # one waiter giving up does not stop the watch for the others

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


async def run_all(
    request: Request[Any, Any, Any], generations: Sequence[GenerationRequest], meta: TaskMeta | None = None
) -> list[TaskResult]:
    """Runs the generations as tasks side by side (each leases its own idle instance, or waits in the queue),
    and answers once all have ended. Results in order; a task that could not be admitted raises its 429/503
    only when no other task got as far as running. With an idempotency key, the i-th task gets its own."""
    dispatcher = dispatcher_of(request)
    watch = DisconnectWatch(request)
    meta = meta or TaskMeta()
    count = len(generations)
    try:
        outcomes = await asyncio.gather(
            *(dispatcher.generate(g, client_left=watch, meta=meta.keyed(i, count)) for i, g in enumerate(generations)),
            return_exceptions=True,
        )
    finally:
        watch.close()
    results = [o for o in outcomes if isinstance(o, TaskResult)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    for exc in refused:
        if not isinstance(exc, FleetError):
            raise exc
    if not results:
        raise refused[0]
    if refused:
        log.info("%d of %d tasks of one request were not admitted: %s", len(refused), len(outcomes), refused[0])
    return results


def succeeded_or_raise(results: Sequence[TaskResult], language: str) -> list[TaskResult]:
    """The tasks that succeeded; when none did, the first failure as the face's error."""
    good = [r for r in results if r.succeeded and r.images_b64]
    if not good:
        raise TaskFailed(failure(results[0], language))
    return good


# Images -----------------------------------------------------------------------------------------------

_MIME = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def mime_of(data: bytes) -> str:
    for signature, mime in _MIME:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def mime_of_b64(image_b64: str) -> str:
    return mime_of(base64.b64decode(image_b64[:24]))


def data_url(image_b64: str) -> str:
    return f"data:{mime_of_b64(image_b64)};base64,{image_b64}"

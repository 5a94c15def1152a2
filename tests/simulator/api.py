"""GenerateContent: the call the page makes for each Run, answered according to the config's mode."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State

from .images import RATIOS, make_png
from .session import current_account
from .state import Generation, SimState, Upload

GENERATE_PATH = "/_/MakerSuiteService/GenerateContent"
QUOTA_MESSAGE = "You've exceeded your quota for this model. Please try again later."
BLOCKED_TEXT = "I can't help with that."


class BadRequest(ValueError):
    pass


def error_response(http_status: int, status: str, message: str) -> Response[dict[str, Any]]:
    # the shape of Google API errors: {"error": {"code", "message", "status"}}
    body = {"error": {"code": http_status, "message": message, "status": status}}
    return Response(body, status_code=http_status)


def _decode_upload(item: Any) -> Upload:
    if not isinstance(item, dict) or not isinstance(item.get("data_b64"), str):
        raise BadRequest("each upload needs name, mime and data_b64")
    try:
        data = base64.b64decode(item["data_b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"upload {item.get('name')!r} is not valid base64") from exc
    return Upload(
        name=str(item.get("name") or ""),
        mime=str(item.get("mime") or "application/octet-stream"),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _parse_request(body: Any, account: str) -> Generation:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise BadRequest("body must be a JSON object with a string 'prompt'")
    aspect_ratio = body.get("aspect_ratio") or "Auto"
    if aspect_ratio not in RATIOS:
        raise BadRequest(f"unknown aspect_ratio {aspect_ratio!r}")
    uploads = body.get("uploads") or []
    if not isinstance(uploads, list):
        raise BadRequest("'uploads' must be a list")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return Generation(account, body["prompt"], aspect_ratio, model, [_decode_upload(u) for u in uploads])


async def _client_gone(request: Request) -> None:
    # once the body is read, the next ASGI message can only be the client's disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait(request: Request, seconds: float) -> bool:
    """Sleep; False if the client went away first (Stop clicked, page reloaded)."""
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait([gone], timeout=seconds)
        return not done
    finally:
        gone.cancel()


def _success(generation: Generation, config: dict[str, Any]) -> Response[dict[str, Any]]:
    images = [
        {"mime": "image/png", "data": base64.b64encode(make_png(generation.prompt, generation.aspect_ratio, i)).decode()}
        for i in range(config["image_count"])
    ]
    return Response({"images": images, "text": config["text"] or None, "finish_reason": "STOP"})


def _answer(mode: str, generation: Generation, config: dict[str, Any], sim: SimState) -> Response[dict[str, Any]]:
    if mode == "ok":
        return _success(generation, config)
    if mode == "blocked":
        return Response({"images": [], "text": BLOCKED_TEXT, "finish_reason": "SAFETY"})
    if mode == "quota":
        return error_response(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE)
    if mode == "rate_limit":
        return error_response(429, "TOO_MANY_REQUESTS", "Too many requests, rate limit exceeded.")
    if mode == "internal":
        return error_response(500, "INTERNAL", "An internal error has occurred")
    if mode == "logout":
        sim.revoke(generation.account)  # the session is gone for later page loads too
        return error_response(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    if mode == "region":
        return error_response(403, "FAILED_PRECONDITION", "Failed to list models: user location is not supported.")
    return error_response(504, "DEADLINE_EXCEEDED", "The request timed out.")  # "hang" ran out of patience


@post(GENERATE_PATH, status_code=200, include_in_schema=False)
async def generate_content(request: Request, state: State) -> Response[dict[str, Any]]:
    sim: SimState = state.sim
    account = current_account(request, sim)
    if account is None:
        return error_response(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    try:
        generation = _parse_request(await request.json(), account)
    except BadRequest as exc:
        return error_response(400, "INVALID_ARGUMENT", str(exc))
    config = sim.effective_config(account)
    mode = sim.take_mode(account)
    sim.start_generation(generation)
    outcome = "cancelled"
    try:
        delay_ms = config["hang_ms"] if mode == "hang" else config["latency_ms"]
        if not await _wait(request, delay_ms / 1000):
            return error_response(499, "CANCELLED", "The client went away.")
        outcome = mode
        return _answer(mode, generation, config, sim)
    finally:
        sim.end_generation(generation, outcome)


ROUTES = [generate_content]

"""GenerateContent: the call the page makes for each Run, answered according to the config's mode."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State

from .images import RATIOS, SIZE_LONG_SIDES, make_png
from .models import DEFAULT_MODEL, describe
from .session import current_account
from .state import Generation, SimState, Upload

GENERATE_PATH = "/_/MakerSuiteService/GenerateContent"
QUOTA_MESSAGE = "You've exceeded your quota for this model. Please try again later."
BLOCKED_TEXT = "I can't help with that."
FREE_LIMIT_MESSAGE = "You are out of free generations for today. Try again tomorrow."
TEXT_MODEL_TEXT = "This model answers with text only: here is a description of the picture instead."
THOUGHT_TEXT = "Drafting the composition first."


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
    image_size = body.get("image_size")
    if image_size is not None and image_size not in SIZE_LONG_SIDES:
        raise BadRequest(f"unknown image_size {image_size!r}")
    chat_id = body.get("chat_id") if isinstance(body.get("chat_id"), str) else None
    history = body.get("history") or []
    if not isinstance(history, list) or not all(isinstance(turn, dict) for turn in history):
        raise BadRequest("'history' must be a list of turns")
    return Generation(
        account, body["prompt"], aspect_ratio, model, [_decode_upload(u) for u in uploads],
        image_size=image_size, chat_id=chat_id, temporary=body.get("temporary") is True,
        history_turns=len(history), history_images=[_history_hash(image) for turn in history for image in _images(turn)],
    )


def _images(turn: dict[str, Any]) -> list[Any]:
    images = turn.get("images") or []
    if not isinstance(images, list):
        raise BadRequest("a history turn's 'images' must be a list")
    return images


def _history_hash(image: Any) -> str:
    try:
        return hashlib.sha256(base64.b64decode(image, validate=True)).hexdigest()
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadRequest("a history image is not valid base64") from exc


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


def _png_b64(prompt: str, generation: Generation, index: int) -> str:
    return base64.b64encode(make_png(prompt, generation.aspect_ratio, index, generation.image_size)).decode()


def _success(generation: Generation, config: dict[str, Any]) -> Response[dict[str, Any]]:
    if not describe(generation.model or "", config["extra_models"]).get("images"):
        return Response({"images": [], "text": TEXT_MODEL_TEXT, "finish_reason": "STOP"})
    images = [{"mime": "image/png", "data": _png_b64(generation.prompt, generation, i)} for i in range(config["image_count"])]
    body: dict[str, Any] = {"images": images, "text": config["text"] or None, "finish_reason": "STOP"}
    if config["thinking_image"]:
        # a draft image in the model's thoughts, in a colour of its own; not part of the answer
        draft = {"mime": "image/png", "data": _png_b64(generation.prompt + " (draft)", generation, 0)}
        body["thoughts"] = {"text": THOUGHT_TEXT, "images": [draft]}
    return Response(body)


def _answer(mode: str, generation: Generation, config: dict[str, Any], sim: SimState) -> Response[dict[str, Any]]:
    if generation.model in config["unavailable_models"]:
        return error_response(403, "PERMISSION_DENIED", f"The model {generation.model} is not available to your account.")
    if mode == "ok":
        return _success(generation, config)
    if mode == "blocked":
        return Response({"images": [], "text": BLOCKED_TEXT, "finish_reason": "SAFETY"})
    if mode == "quota":
        return error_response(429, "RESOURCE_EXHAUSTED", QUOTA_MESSAGE)
    if mode == "free_limit":
        # inside a 200 answer, as a streamed answer fails part-way: only the page's warning callout tells
        error = {"code": 429, "message": FREE_LIMIT_MESSAGE, "status": "RESOURCE_EXHAUSTED"}
        return Response({"images": [], "text": None, "error": error, "finish_reason": "OTHER"})
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


def _allowance_model(generation: Generation) -> str:
    # a call without a model runs on the model the page opens on
    return generation.model or DEFAULT_MODEL


def _spend_allowance(mode: str, generation: Generation, config: dict[str, Any], sim: SimState) -> str:
    """The mode to answer with: a success the day's allowance no longer covers becomes "quota" (and is not counted)."""
    if mode != "ok" or generation.model in config["unavailable_models"]:
        return mode  # only successful generations count
    return "ok" if sim.spend_allowance(generation.account, _allowance_model(generation)) else "quota"


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
        outcome = _spend_allowance(mode, generation, config, sim)
        response = _answer(outcome, generation, config, sim)
        if response.status_code == 429 and outcome == "quota":
            sim.count_quota_answer(account, _allowance_model(generation))
        return response
    finally:
        sim.end_generation(generation, outcome)


ROUTES = [generate_content]

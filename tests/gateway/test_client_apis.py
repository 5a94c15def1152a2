"""The OpenAI, Gemini and Anthropic faces on the fake runtime, spoken to by the official `openai`, `google-genai`
and `anthropic` clients over HTTP (and by httpx where a client hides what is checked): shapes, n tasks side by
side, signed image URLs, streaming, and every bad field refused in the API's own error shape with nothing
dispatched."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from pydantic import ValidationError

from gateway.api.openai_requests import nearest_ratio, ratio_and_size
from gateway.addresses import public
from fleet_contract.catalogue import load
from gateway.runtime.fake import TINY_PNG, FakeOutcome, FakeRuntime, numbered_png
from tests.gateway.conftest import IsolatedSettings
from tests.gateway.pool import Pool, open_pool
from tests.polling import await_until

TINY_B64 = base64.b64encode(TINY_PNG).decode()
TINY_DATA_URL = f"data:image/png;base64,{TINY_B64}"
KEY = "client-api-key"


@pytest.fixture
async def pool(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=2, api_keys=KEY, sse_keepalive_interval=0.05) as opened:
        yield opened


def openai_client(pool: Pool) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{pool.url}/v1", api_key=KEY, max_retries=0)


def gemini_client(pool: Pool, *, api_version: str = "v1beta") -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=pool.url, api_version=api_version, retry_options=genai_types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=KEY, http_options=options)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Accept-Language": "en"}


# ---- the mapping of OpenAI's sizes (pure) ---------------------------------------------------------------


def test_openai_sizes_map_to_the_nearest_ratio_and_the_covering_page_size() -> None:
    flash, pro = load().find("gemini-2.5-flash-image"), load().find("gemini-3-pro-image")
    assert flash is not None and pro is not None
    assert ratio_and_size("1024x1024", flash) == ("1:1", None)  # this model offers no size choice
    assert ratio_and_size("1536x1024", flash) == ("3:2", None)
    assert ratio_and_size("1024x1536", flash) == ("2:3", None)
    assert ratio_and_size("1792x1024", flash) == ("16:9", None)
    assert ratio_and_size("1024x1792", flash) == ("9:16", None)
    assert ratio_and_size("auto", flash) == (None, None)
    assert ratio_and_size("21:9", flash) == ("21:9", None)
    assert ratio_and_size("1024x1024", pro) == ("1:1", "1K")
    assert ratio_and_size("2048x1152", pro) == ("16:9", "2K")
    assert ratio_and_size("4096x4096", pro) == ("1:1", "4K")
    assert nearest_ratio(2.0, ("1:1", "16:9", "21:9")) == "16:9"
    assert nearest_ratio(0.5, ("1:1", "9:16", "3:4")) == "9:16"


def test_only_public_addresses_count_as_public() -> None:
    import ipaddress

    for private in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fe80::1",
                    "fd00::1", "0.0.0.0", "100.64.0.1", "::ffff:127.0.0.1", "224.0.0.1"):
        assert not public(ipaddress.ip_address(private)), private
    assert public(ipaddress.ip_address("8.8.8.8")) and public(ipaddress.ip_address("2001:4860:4860::8888"))


# ---- OpenAI images -------------------------------------------------------------------------------------


TODAYS_MODELS = ["gemini-nano-banana-2.1", "gemini-3-pro-image", "gemini-3.1-flash-lite-image", "gemini-2.5-flash-image"]


async def test_models_lists_todays_models(pool: Pool) -> None:
    client = openai_client(pool)
    models = await client.models.list()
    assert [m.id for m in models.data] == TODAYS_MODELS == [m.id for m in load().driven]  # no shut-down model
    assert {m.object for m in models.data} == {"model"}
    assert (await client.models.retrieve("gemini-3-pro-image-preview")).id == "gemini-3-pro-image"
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        await client.models.retrieve("gemini-3.1-flash-image")
    assert refused.value.body["code"] == "model_retired" and "gemini-nano-banana-2.1" in refused.value.body["message"]
    listed = await pool.http.get("/v1beta/models", headers={"x-goog-api-key": KEY})
    assert [m["name"] for m in listed.json()["models"]] == [f"models/{m}" for m in TODAYS_MODELS]


async def test_n_images_run_as_n_tasks_on_different_instances_at_once(pool: Pool) -> None:
    pool.fake.generate_delay = 0.3
    answer = await openai_client(pool).images.generate(prompt="a red fox", n=2, size="1792x1024")
    assert len(answer.data) == 2 and answer.created > 0
    assert all(base64.b64decode(d.b64_json) == TINY_PNG and d.revised_prompt == "fake text" for d in answer.data)
    first, second = pool.fake.generations
    assert first.instance_id != second.instance_id
    assert max(first.started, second.started) < min(first.ended, second.ended)  # they overlapped
    assert {g.aspect_ratio for g in pool.fake.generations} == {"16:9"} and first.prompt == "a red fox"
    rows = await pool.task_rows()
    assert len(rows) == 2 and {r.status for r in rows} == {"succeeded"}


async def test_url_answers_are_signed_expiring_and_need_no_key(pool: Pool) -> None:
    answer = await openai_client(pool).images.generate(prompt="a red fox", response_format="url")
    (item,) = answer.data
    assert item.b64_json is None and item.url.startswith(pool.url + "/v1/images/files/")
    async with httpx.AsyncClient() as anonymous:
        fetched = await anonymous.get(item.url)
        assert fetched.status_code == 200 and fetched.content == TINY_PNG
        assert fetched.headers["content-type"] == "image/png"
        tampered = await anonymous.get(item.url.replace("/0.png", "/1.png"))
        assert tampered.status_code == 403 and tampered.json()["error"]["code"] == "image_url_invalid"
        expired_url = httpx.URL(item.url)
        stale = expired_url.copy_set_param("expires", str(int(time.time()) - 10))
        assert (await anonymous.get(str(stale))).json()["error"]["code"] == "image_url_invalid"  # the signature covers it
    # The generation API itself still wants the key.
    refused = await pool.http.post("/v1/images/generations", json={"prompt": "x"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"


async def test_an_expired_url_is_refused(pool: Pool) -> None:
    from gateway.api.image_urls import ImageSigner

    answer = await openai_client(pool).images.generate(prompt="a red fox", response_format="url")
    task_id = httpx.URL(answer.data[0].url).path.split("/")[-2]
    signer = ImageSigner.from_settings(pool.fleet.settings.faces, pool.fleet.secret)
    old = signer.path(task_id, 0, "image/png", now=time.time() - signer.ttl - 5)  # type: ignore[arg-type]
    refused = await pool.http.get(old)
    assert refused.status_code == 410 and refused.json()["error"]["code"] == "image_url_expired"


async def test_edits_take_several_references_and_refuse_a_mask(pool: Pool) -> None:
    client = openai_client(pool)
    images = [("a.png", TINY_PNG, "image/png"), ("b.png", TINY_PNG, "image/png")]
    answer = await client.images.edit(image=images, prompt="put them together", size="1024x1536")
    assert len(answer.data) == 1
    (generation,) = pool.fake.generations
    assert generation.references == [TINY_B64, TINY_B64] and generation.aspect_ratio == "2:3"
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.edit(image=images[:1], mask=("m.png", TINY_PNG, "image/png"), prompt="x")
    assert refused.value.status_code == 400 and refused.value.body["code"] == "mask_not_supported"
    assert len(pool.fake.generations) == 1


BAD_IMAGE_BODIES = [
    ({"prompt": "x", "model": "dall-e-3"}, 422, "model_unknown", "model"),
    ({"prompt": "x", "size": "1000"}, 422, "size_unknown", "size"),
    ({"prompt": "x", "size": "7:3"}, 422, "aspect_ratio_unknown", "size"),
    ({"prompt": "x", "model": "imagen-4.0-generate-001"}, 422, "model_retired", "model"),
    ({"prompt": "x", "model": "gemini-3.1-flash-image"}, 422, "model_retired", "model"),
    ({"prompt": "x", "n": 0}, 422, "n_out_of_range", "n"),
    ({"prompt": "x", "n": 5}, 422, "n_out_of_range", "n"),
    ({"prompt": "x", "n": "two"}, 400, "invalid_body", None),
    ({"prompt": "x", "response_format": "png"}, 422, "response_format_unknown", "response_format"),
    ({"prompt": ""}, 422, "prompt_missing", "prompt"),
    ({"prompt": "a\x00b"}, 422, "control_characters", None),
    ({"size": "1024x1024"}, 400, "invalid_body", None),
    ([1, 2], 400, "invalid_body", None),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD_IMAGE_BODIES)
async def test_bad_image_fields_get_openai_errors_and_dispatch_nothing(
    pool: Pool, body: Any, status: int, code: str, param: str | None
) -> None:
    response = await pool.http.post("/v1/images/generations", json=body, headers=auth())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert pool.fake.generations == [] and await pool.task_count() == 0


async def test_bad_bodies_of_every_face_stay_4xx_in_their_shape(pool: Pool) -> None:
    too_big = "A" * (pool.fleet.settings.max_reference_bytes * 4 // 3 + 8)
    not_image = base64.b64encode(b"just text, not an image").decode()
    cases = [
        ("/v1/images/generations", {"content": b"prompt=x", "headers": {"Content-Type": "text/plain"}}, 415, "openai"),
        ("/v1/images/generations", {"content": b"{" * 5000, "headers": {"Content-Type": "application/json"}}, 400, "openai"),
        ("/v1/images/edits", {"json": {"prompt": "x"}}, 400, "openai"),
        ("/v1/images/edits", {"data": {"prompt": "x"}, "files": {"image": ("a.txt", b"hello", "text/plain")}}, 422, "openai"),
        ("/v1/images/edits", {"data": {"prompt": "x", "n": "lots"}, "files": {"image": ("a.png", TINY_PNG)}}, 422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": []}}, 422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}}, 422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{not_image}"}}]}]}},
         422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{too_big}"}}]}]}},
         413, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}]}]}},
         422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/a.png"}}]}]}},
         422, "openai"),
        ("/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest"}}]}]}},
         422, "openai"),
        ("/v1/chat/completions", {"json": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}, 422, "openai"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", {"json": {"contents": []}}, 422, "gemini"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", {"json": {"contents": [{"parts": [{"text": "x"}]}],
         "generationConfig": {"imageConfig": {"aspectRatio": "5:1"}}}}, 422, "gemini"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", {"json": {"contents": [{"parts": [{"text": "x"}]}],
         "generationConfig": {"imageConfig": {"imageSize": "2K"}}}}, 422, "gemini"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", {"json": {"contents": [{"parts": [
            {"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": "%%%"}}]}]}}, 422, "gemini"),
        ("/v1beta/models/gemini-2.5-flash-image:countTokens", {"json": {"contents": [{"parts": [{"text": "x"}]}]}}, 404, "gemini"),
        ("/v1beta/models/imagen-4.0-generate-001:generateContent", {"json": {"contents": [{"parts": [
            {"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": TINY_B64}}]}]}}, 422, "gemini"),
        ("/v1beta/models/gemini-2.5-flash-image:generateContent", {"json": {"contents": "x"}}, 400, "gemini"),
        ("/v1/messages", {"json": {"messages": []}}, 422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "assistant", "content": "hello"}]}}, 422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}},
         422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]}},
         422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "source": {"type": "base64", "data": too_big}}]}]}}, 413, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "source": {"type": "url", "url": "http://127.0.0.1:1/a.png"}}]}]}},
         422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": "x"}], "size": "7:3"}}, 422, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": ""}]}}, 422, "anthropic"),
        ("/v1/messages", {"json": {"messages": "x"}}, 400, "anthropic"),
        ("/v1/messages", {"json": {"messages": [{"role": "user", "content": 5}]}}, 400, "anthropic"),
    ]
    for path, request, status, shape in cases:
        headers = {**auth(), **request.pop("headers", {})}
        response = await pool.http.post(path, **request, headers=headers)
        assert response.status_code == status, (path, request.get("json"), response.text[:300])
        error = response.json()["error"]
        if shape == "openai":
            assert {"message", "type", "code", "param"} <= error.keys(), error
        elif shape == "anthropic":
            assert response.json()["type"] == "error" and error["message"] and error["details"]["error_code"], error
            assert error["type"] == ("request_too_large" if status == 413 else "invalid_request_error"), error
        else:
            assert error["code"] == status and error["status"] in ("INVALID_ARGUMENT", "NOT_FOUND") and error["message"]
    assert pool.fake.generations == [] and await pool.task_count() == 0


async def test_busy_and_empty_pools_answer_429_and_503_with_retry_after(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, queue_max=0) as pool:
        pool.fake.generate_delay = 0.5
        first = asyncio.create_task(pool.http.post("/v1/images/generations", json={"prompt": "x"}))
        await await_until(lambda: pool.fake.generations, timeout=5, what="the first generation to start")
        full = await pool.http.post("/v1/images/generations", json={"prompt": "x"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["type"] == "rate_limit_error" and full.json()["error"]["code"] == "queue_full"
        gemini_full = await pool.http.post(
            "/v1beta/models/gemini-2.5-flash-image:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]}
        )
        assert gemini_full.status_code == 429 and gemini_full.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        anthropic_full = await pool.http.post("/v1/messages", json={
            "model": "gemini-2.5-flash-image", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert anthropic_full.status_code == 429 and int(anthropic_full.headers["retry-after"]) >= 1
        assert anthropic_full.json() == {"type": "error", "error": {
            "type": "rate_limit_error", "message": anthropic_full.json()["error"]["message"], "details": {"error_code": "queue_full"}}}
        assert (await first).status_code == 200
        await pool.fleet.instances.stop(pool.instance_ids[0])
        await await_until(lambda: _stopped(pool), timeout=5, what="the instance stopped")
        empty = await pool.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
        assert empty.status_code == 503 and "retry-after" in empty.headers
        assert empty.json()["error"]["code"] == "no_instance_running"
        anthropic_empty = await pool.http.post("/v1/messages", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
        assert anthropic_empty.status_code == 503 and "retry-after" in anthropic_empty.headers
        assert anthropic_empty.json()["error"]["type"] == "overloaded_error"


async def _stopped(pool: Pool) -> bool:
    return (await pool.fleet.instances.get(pool.instance_ids[0])).status == "stopped"


async def test_a_failed_task_is_an_error_of_its_kind(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        (instance_id,) = pool.instance_ids
        client = openai.AsyncOpenAI(base_url=f"{pool.url}/v1", api_key="none", max_retries=0)
        pool.fake.script_generations(
            instance_id, FakeOutcome.error("blocked", retry_safe=False), FakeOutcome.error("quota_exhausted", retry_safe=False)
        )
        with pytest.raises(openai.BadRequestError) as blocked:
            await client.images.generate(prompt="x")
        assert blocked.value.body["code"] == "blocked"
        with pytest.raises(openai.RateLimitError) as limited:
            await client.images.generate(prompt="x")
        assert limited.value.body["code"] == "quota_exhausted" and limited.value.response.headers["retry-after"]


# ---- OpenAI chat ----------------------------------------------------------------------------------------


def chat_messages(*images: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "draw this cat as a lion"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return [
        {"role": "system", "content": "You draw."},
        {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": parts},
    ]


async def test_chat_answers_with_images_as_data_urls_and_markdown(pool: Pool) -> None:
    completion = await openai_client(pool).chat.completions.create(
        model="gemini-2.5-flash-image", messages=chat_messages(TINY_DATA_URL), extra_body={"size": "16:9"}
    )
    message = completion.choices[0].message
    extra = message.model_extra or {}
    assert extra["images"][0]["image_url"]["url"] == TINY_DATA_URL
    assert message.content == f"fake text\n\n![image 1]({TINY_DATA_URL})"
    assert completion.choices[0].finish_reason == "stop" and completion.model == "gemini-2.5-flash-image"
    (generation,) = pool.fake.generations
    # The earlier request follows as context (the system message and the model's words do not).
    assert generation.prompt == "draw this cat as a lion\n\nEarlier requests in this conversation, oldest first:\n- earlier"
    assert generation.references == [TINY_B64]
    assert generation.aspect_ratio == "16:9"


async def test_chat_streams_keep_alives_then_the_answer_then_done(pool: Pool) -> None:
    pool.fake.generate_delay = 0.4
    body = {"model": "gemini-2.5-flash-image", "messages": chat_messages(TINY_DATA_URL), "stream": True}
    async with pool.http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line]
    assert ": keep-alive" in lines
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    import json

    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert content.endswith(f"![image 1]({TINY_DATA_URL})")
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The official client reads the same stream.
    stream = await openai_client(pool).chat.completions.create(model="gemini-2.5-flash-image", messages=chat_messages(), stream=True)
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts).startswith("fake text")


@contextlib.contextmanager
def image_server(*, size: int = len(TINY_PNG), delay: float = 0.0) -> Iterator[str]:
    """A loopback HTTP server with one image of `size` bytes that answers after `delay` seconds."""
    body = TINY_PNG + b"\0" * max(0, size - len(TINY_PNG))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the standard library's name
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/cat.png"
    finally:
        server.shutdown()
        server.server_close()


async def test_chat_fetches_http_images_under_limits(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    # Private addresses allowed here only so that a loopback server can stand in for the internet.
    # A timeout a loaded CI machine meets easily for a loopback fetch; the slow server takes twice as long.
    settings = {"fetch_private_addresses": True, "fetch_timeout": 2.0, "max_reference_bytes": 4096}
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with image_server() as url:
            answer = await pool.http.post("/v1/chat/completions", json={"messages": chat_messages(url)})
            assert answer.status_code == 200, answer.text
            assert pool.fake.generations[0].references == [TINY_B64]
        with image_server(size=8192) as url:
            large = await pool.http.post("/v1/chat/completions", json={"messages": chat_messages(url)})
            assert large.status_code == 413 and large.json()["error"]["code"] == "image_url_too_large"
        with image_server(delay=4.0) as url:
            slow = await pool.http.post("/v1/chat/completions", json={"messages": chat_messages(url)})
            assert slow.status_code == 400 and slow.json()["error"]["code"] == "image_url_slow"
        unresolved = await pool.http.post("/v1/chat/completions", json={"messages": chat_messages("http://no-such-host.invalid/a.png")})
        assert unresolved.status_code == 400 and unresolved.json()["error"]["code"] == "image_url_unresolved"
        assert len(pool.fake.generations) == 1


# ---- conversations: an edit in three turns --------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_chat_edits_in_conversation_with_the_earlier_images_as_references(pool: Pool) -> None:
    """As a chat app sends it: each turn resends the history, the answers' Markdown images included."""
    pool.fake.numbered_images = True
    client = openai_client(pool)
    messages: list[dict[str, Any]] = []
    for request in ("a cat on a sofa", "now make it red", "add a hat"):
        messages.append({"role": "user", "content": request})
        answer = await client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
        messages.append({"role": "assistant", "content": answer.choices[0].message.content})
    first, second, third = pool.fake.generations
    made = [b64(numbered_png(n)) for n in (1, 2, 3)]
    assert first.references == [] and first.prompt == "a cat on a sofa"
    assert second.references == [made[0]]
    assert third.references == [made[1], made[0]]  # newest first
    assert third.prompt.startswith("add a hat\n\n") and third.prompt.endswith("- a cat on a sofa\n- now make it red")
    assert_one_chat(first, second, third, ("a cat on a sofa", "now make it red", "add a hat"))


async def test_a_turn_whose_last_image_cannot_be_looked_up_goes_on_as_a_new_chat(pool: Pool, monkeypatch) -> None:
    async def unreachable(*_args: Any) -> None:
        raise ConnectionRefusedError("the database is restarting")  # a fake outage of the lookup alone

    pool.fake.numbered_images = True
    monkeypatch.setattr(pool.fleet.dispatcher._ledger, "task_that_made", unreachable)
    client = openai_client(pool)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a cat"}]
    answer = await client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
    messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                 {"role": "user", "content": "now red"}]
    await client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
    second = pool.fake.generations[1]
    assert second.continue_chat is None and second.keep_chat is True
    assert second.references == [b64(numbered_png(1))]


def assert_one_chat(first: Any, second: Any, third: Any, words: tuple[str, ...]) -> None:
    """Each turn asked to keep its chat; the later ones went to the account that holds it (the pool's other,
    idle instance notwithstanding) and continued it with their own words."""
    assert {first.instance_id, second.instance_id, third.instance_id} == {first.instance_id}
    assert [g.keep_chat for g in (first, second, third)] == [True, True, True]
    assert [g.continue_chat for g in (first, second, third)] == [None, first.task_id, second.task_id]
    assert [g.continued for g in (first, second, third)] == [False, True, True]
    assert [g.turn_prompt for g in (first, second, third)] == list(words)
    assert [g.turn_references for g in (first, second, third)] == [0, 0, 0]


async def test_a_conversation_whose_account_is_busy_goes_on_elsewhere_in_a_new_chat(pool: Pool) -> None:
    pool.fake.numbered_images = True
    client = openai_client(pool)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "a cat on a sofa"}]
    answer = await client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
    messages += [{"role": "assistant", "content": answer.choices[0].message.content},
                 {"role": "user", "content": "now make it red"}]
    first = pool.fake.generations[0]
    pool.fake.containers[first.instance_id].generate_delay = 3.0  # what lands on that account now keeps it busy
    others = [asyncio.ensure_future(client.images.generate(prompt=f"a dog {n}", model="gemini-2.5-flash-image"))
              for n in (1, 2)]  # one on each account

    def other_account_free() -> bool:
        return any(g.instance_id != first.instance_id and g.ended for g in pool.fake.generations[1:])

    await await_until(other_account_free, timeout=10, what="the other account free again, the kept chat's still busy")
    await pool.fleet.dispatcher.settled()
    await client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
    await asyncio.gather(*others)
    second = pool.fake.generations[3]
    assert second.instance_id != first.instance_id and second.continue_chat == first.task_id
    assert second.continued is False and second.references == [b64(numbered_png(1))]  # a new chat, complete


async def test_a_chat_reference_may_be_a_signed_link_of_this_gateway(pool: Pool) -> None:
    """Read from the kept result, not fetched: this gateway's own address is private, which fetches refuse."""
    from gateway.api.image_urls import ImageSigner

    pool.fake.numbered_images = True
    client = openai_client(pool)
    made = await client.images.generate(prompt="a red fox", response_format="url")
    url = made.data[0].url
    assert url is not None and httpx.URL(url).host == "127.0.0.1"
    parts = [{"type": "text", "text": "the same fox, in snow"}, {"type": "image_url", "image_url": {"url": url}}]
    await client.chat.completions.create(model="gemini-2.5-flash-image", messages=[{"role": "user", "content": parts}])
    assert pool.fake.generations[1].references == [b64(numbered_png(1))]
    # One that expired is told apart from a fetch failure, and nothing runs.
    signer = ImageSigner.from_settings(pool.fleet.settings.faces, pool.fleet.secret)
    task_id = httpx.URL(url).path.split("/")[-2]
    old = pool.url + signer.path(task_id, 0, "image/png", now=time.time() - signer.ttl - 5)  # type: ignore[arg-type]
    history = [{"role": "user", "content": "a fox"}, {"role": "assistant", "content": f"![fox]({old})"},
               {"role": "user", "content": "in snow"}]
    refused = await pool.http.post("/v1/chat/completions", headers=auth(),
                                   json={"model": "gemini-2.5-flash-image", "messages": history})
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "reference_link_expired"
    assert len(pool.fake.generations) == 2


async def test_a_gemini_chat_edits_in_conversation_through_the_official_client(pool: Pool) -> None:
    pool.fake.numbered_images = True
    chat = gemini_client(pool).aio.chats.create(model="gemini-3-pro-image")
    for request in ("一只猫坐在沙发上", "把它变成红色", "再加一顶帽子"):
        answer = await chat.send_message(request)
        assert answer.candidates[0].content.parts[1].inline_data.data.startswith(b"\x89PNG")
    first, second, third = pool.fake.generations
    made = [b64(numbered_png(n)) for n in (1, 2, 3)]
    assert (first.references, second.references, third.references) == ([], [made[0]], [made[1], made[0]])
    assert third.prompt.startswith("再加一顶帽子\n\n") and third.prompt.endswith("- 一只猫坐在沙发上\n- 把它变成红色")
    assert_one_chat(first, second, third, ("一只猫坐在沙发上", "把它变成红色", "再加一顶帽子"))


# ---- Gemini ---------------------------------------------------------------------------------------------


async def test_generate_content_with_image_config_and_inline_data(pool: Pool) -> None:
    client = gemini_client(pool)
    reference = genai_types.Part.from_bytes(data=TINY_PNG, mime_type="image/png")
    answer = await client.aio.models.generate_content(
        model="gemini-3-pro-image",
        contents=[reference, "make it a lion"],
        config=genai_types.GenerateContentConfig(image_config=genai_types.ImageConfig(aspect_ratio="16:9", image_size="2K")),
    )
    parts = answer.candidates[0].content.parts
    assert parts[0].text == "fake text"
    assert parts[1].inline_data.data == TINY_PNG and parts[1].inline_data.mime_type == "image/png"
    (generation,) = pool.fake.generations
    assert (generation.model, generation.aspect_ratio, generation.image_size) == ("gemini-3-pro-image", "16:9", "2K")
    assert generation.references == [TINY_B64] and generation.prompt == "make it a lion"
    # The SDK's own default path for a custom base URL (v1) works too, with its x-goog-api-key.
    v1 = gemini_client(pool, api_version="v1")  # held: a collected client closes its connections under a running call
    again = await v1.aio.models.generate_content(model="gemini-2.5-flash-image", contents="x")
    assert again.candidates[0].content.parts[1].inline_data.data == TINY_PNG
    listed = await pool.http.get("/v1beta/models", headers={"x-goog-api-key": KEY})
    assert "models/gemini-3-pro-image" in [m["name"] for m in listed.json()["models"]]


async def test_inline_data_in_the_url_safe_alphabet_is_read_as_google_reads_it(pool: Pool) -> None:
    """google-genai's chat sends the model's images back in pydantic's URL-safe base64 (`-` and `_`)."""
    image = next(png for n in range(1, 500) if "/" in b64(png := numbered_png(n)) or "+" in b64(png))
    url_safe = base64.urlsafe_b64encode(image).decode().rstrip("=")
    assert "-" in url_safe or "_" in url_safe
    answer = await pool.http.post(
        f"/v1beta/models/gemini-2.5-flash-image:generateContent?key={KEY}",
        json={"contents": [{"parts": [{"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": url_safe}}]}]},
    )
    assert answer.status_code == 200, answer.text
    assert pool.fake.generations[0].references == [b64(image)]
    mixed = url_safe.replace("-", "+", 1) + "_" if "-" in url_safe else url_safe + "+"
    refused = await pool.http.post(
        f"/v1beta/models/gemini-2.5-flash-image:generateContent?key={KEY}",
        json={"contents": [{"parts": [{"text": "x"}, {"inline_data": {"mime_type": "image/png", "data": mixed}}]}]},
    )
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["reason"] == "reference_not_base64"


async def test_gemini_errors_in_gemini_shape(pool: Pool) -> None:
    client = gemini_client(pool)
    with pytest.raises(genai_errors.ClientError) as refused:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash-image", contents="x",
            config=genai_types.GenerateContentConfig(image_config=genai_types.ImageConfig(aspect_ratio="1:8")),
        )
    assert refused.value.code == 422 and refused.value.status == "INVALID_ARGUMENT"
    unauthorized = await pool.http.post(
        "/v1beta/models/gemini-2.5-flash-image:generateContent", json={"contents": [{"parts": [{"text": "x"}]}]},
        headers={"x-goog-api-key": "wrong"},
    )
    assert unauthorized.status_code == 401 and unauthorized.json()["error"]["status"] == "UNAUTHENTICATED"
    assert pool.fake.generations == []


async def test_stream_generate_content_through_the_official_client(pool: Pool) -> None:
    client = gemini_client(pool)
    reference = genai_types.Part.from_bytes(data=TINY_PNG, mime_type="image/png")
    chunks = [chunk async for chunk in await client.aio.models.generate_content_stream(
        model="gemini-3-pro-image", contents=[reference, "一只猫，画成油画"],
        config=genai_types.GenerateContentConfig(image_config=genai_types.ImageConfig(aspect_ratio="4:3", image_size="2K")),
    )]
    parts = [part for chunk in chunks for part in chunk.candidates[0].content.parts]
    assert [p.text for p in parts if p.text] == ["fake text"]
    assert [p.inline_data.data for p in parts if p.inline_data] == [TINY_PNG]
    assert [c.candidates[0].finish_reason for c in chunks][-1] == genai_types.FinishReason.STOP
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1]) and len(chunks) == 2
    (generation,) = pool.fake.generations
    assert (generation.model, generation.aspect_ratio, generation.image_size) == ("gemini-3-pro-image", "4:3", "2K")
    assert generation.prompt == "一只猫，画成油画" and generation.references == [TINY_B64]


async def test_stream_generate_content_as_a_json_array_with_the_key_in_the_query(pool: Pool) -> None:
    """Google's REST default (no alt=sse) is one JSON array of chunks; `?key=` is its form of the API key."""
    answer = await pool.http.post(
        f"/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?key={KEY}",
        json={"contents": [{"role": "user", "parts": [{"text": "x"}]}]},
    )
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    chunks = answer.json()
    assert [list(c["candidates"][0]["content"]["parts"][0]) for c in chunks] == [["text"], ["inlineData"]]
    assert "finishReason" not in chunks[0]["candidates"][0] and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] == TINY_B64


async def test_a_refused_stream_is_an_http_error_in_google_shape(pool: Pool) -> None:
    client = gemini_client(pool)
    with pytest.raises(genai_errors.ClientError) as refused:
        async for _ in await client.aio.models.generate_content_stream(
            model="gemini-2.5-flash-image", contents="x",
            config=genai_types.GenerateContentConfig(image_config=genai_types.ImageConfig(aspect_ratio="1:8")),
        ):
            pass
    assert refused.value.code == 422 and refused.value.status == "INVALID_ARGUMENT"
    wrong_key = await pool.http.post(
        "/v1beta/models/gemini-2.5-flash-image:streamGenerateContent?alt=sse&key=wrong",
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert wrong_key.status_code == 401 and wrong_key.json()["error"]["status"] == "UNAUTHENTICATED"
    assert pool.fake.generations == []


async def test_models_get_through_the_official_client(pool: Pool) -> None:
    client = gemini_client(pool)
    model = await client.aio.models.get(model="gemini-3-pro-image")
    assert model.name == "models/gemini-3-pro-image"
    assert set(model.supported_actions or []) == {"generateContent", "streamGenerateContent"}
    renamed = await pool.http.get(f"/v1beta/models/gemini-3-pro-image-preview?key={KEY}")
    assert renamed.status_code == 200 and renamed.json()["name"] == "models/gemini-3-pro-image"
    with pytest.raises(genai_errors.ClientError) as retired:
        await client.aio.models.get(model="gemini-3.1-flash-image")
    assert retired.value.code == 422 and "gemini-nano-banana-2.1" in (retired.value.message or "")
    unknown = await pool.http.get("/v1beta/models/no-such-model", headers={"x-goog-api-key": KEY})
    assert unknown.status_code == 422 and unknown.json()["error"]["status"] == "INVALID_ARGUMENT"


# ---- Anthropic Messages ---------------------------------------------------------------------------------


def anthropic_client(pool: Pool, *, api_key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=pool.url, api_key=api_key, max_retries=0)


def image_block(data_b64: str = TINY_B64) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data_b64}}


MARKDOWN_LINK = re.compile(r"^!\[image 1\]\((\S+)\)$")


async def test_a_message_with_an_image_block_through_the_official_client(pool: Pool) -> None:
    message = await anthropic_client(pool).messages.create(
        model="gemini-3-pro-image", max_tokens=1024, system="You draw.",
        messages=[{"role": "user", "content": [image_block(), {"type": "text", "text": "draw this cat as a lion"}]}],
        extra_body={"size": "1792x1024"}, extra_headers={"anthropic-beta": "anything"},
    )
    assert (message.type, message.role, message.model) == ("message", "assistant", "gemini-3-pro-image")
    assert message.stop_reason == "end_turn" and message.stop_sequence is None and message.id.startswith("msg_")
    assert message.usage.input_tokens == 0 and message.usage.output_tokens == 0
    text, image = message.content
    assert text.type == image.type == "text" and text.text == "fake text"
    link = MARKDOWN_LINK.match(image.text)
    assert link is not None and link.group(1).startswith(pool.url + "/v1/images/files/"), image.text
    async with httpx.AsyncClient() as anonymous:  # a signed link: no key needed
        assert (await anonymous.get(link.group(1))).content == TINY_PNG
    (generation,) = pool.fake.generations
    assert generation.prompt == "draw this cat as a lion" and generation.references == [TINY_B64]
    assert (generation.model, generation.aspect_ratio, generation.image_size) == ("gemini-3-pro-image", "16:9", "2K")
    (row,) = await pool.task_rows()
    assert row.api == "anthropic" and message.id == f"msg_{row.id.hex}"


async def test_an_anthropic_conversation_edits_with_the_earlier_images_as_references(pool: Pool) -> None:
    """As an agent sends it: each turn resends the history, the answers' content as it came."""
    pool.fake.numbered_images = True
    client = anthropic_client(pool)
    messages: list[dict[str, Any]] = []
    for request in ("a cat on a sofa", "now make it red", "add a hat"):
        messages.append({"role": "user", "content": request})
        answer = await client.messages.create(model="gemini-2.5-flash-image", max_tokens=1024, messages=messages)
        messages.append({"role": "assistant", "content": answer.content})
    first, second, third = pool.fake.generations
    made = [b64(numbered_png(n)) for n in (1, 2, 3)]
    assert first.references == [] and first.prompt == "a cat on a sofa"
    assert second.references == [made[0]]
    assert third.references == [made[1], made[0]]  # newest first, read from the kept results
    assert third.prompt.startswith("add a hat\n\n") and third.prompt.endswith("- a cat on a sofa\n- now make it red")
    assert_one_chat(first, second, third, ("a cat on a sofa", "now make it red", "add a hat"))


async def test_without_kept_results_the_images_are_data_urls_and_still_carried(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, store_sync_results=False) as pool:
        pool.fake.numbered_images = True
        client = anthropic_client(pool)
        first = await client.messages.create(model="gemini-2.5-flash-image", max_tokens=64,
                                             messages=[{"role": "user", "content": "a cat"}])
        picture = first.content[-1].text
        assert picture == f"![image 1](data:image/png;base64,{b64(numbered_png(1))})"
        history = [{"role": "user", "content": "a cat"}, {"role": "assistant", "content": first.content},
                   {"role": "user", "content": "now red"}]
        await client.messages.create(model="gemini-2.5-flash-image", max_tokens=64, messages=history)
        assert pool.fake.generations[1].references == [b64(numbered_png(1))]


async def test_a_message_streams_through_the_official_client_in_chinese(pool: Pool) -> None:
    pool.fake.generate_delay = 0.3
    client = anthropic_client(pool)
    async with client.messages.stream(
        model="gemini-3-pro-image", max_tokens=1024, messages=[{"role": "user", "content": "一只猫，画成油画"}],
        extra_body={"size": "3:4"},
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert texts[0] == "fake text" and MARKDOWN_LINK.match(texts[1]) and len(texts) == 2
    assert [block.text for block in final.content] == texts and final.stop_reason == "end_turn"
    assert final.model == "gemini-3-pro-image"
    (generation,) = pool.fake.generations
    assert generation.prompt == "一只猫，画成油画" and generation.aspect_ratio == "3:4"


async def test_a_streamed_message_sends_anthropics_events_and_pings_while_it_waits(pool: Pool) -> None:
    events = await anthropic_client(pool).messages.create(
        model="gemini-2.5-flash-image", max_tokens=1024, stream=True, messages=[{"role": "user", "content": "a fox"}],
    )
    kinds = [event.type async for event in events]
    assert kinds == ["message_start", *["content_block_start", "content_block_delta", "content_block_stop"] * 2,
                     "message_delta", "message_stop"]
    pool.fake.generation_gate = asyncio.Event()  # the generation ends once a ping has come
    body = {"model": "gemini-2.5-flash-image", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    lines: list[str] = []
    async with pool.http.stream("POST", "/v1/messages", json=body, headers={"x-api-key": KEY}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            lines += [line] if line else []
            if line == "event: ping":
                pool.fake.generation_gate.set()
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start" and names[1] == "ping" and names[-1] == "message_stop"
    assert json.loads(lines[lines.index("event: ping") + 1][len("data: "):]) == {"type": "ping"}
    delta = json.loads(lines[lines.index("event: message_delta") + 1][len("data: "):])
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


async def test_anthropic_errors_in_anthropics_shape_through_the_client(pool: Pool) -> None:
    client = anthropic_client(pool)
    not_image = base64.b64encode(b"just text, not an image").decode()
    with pytest.raises(anthropic.UnprocessableEntityError) as bad_image:
        await client.messages.create(model="gemini-2.5-flash-image", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "text", "text": "x"}, image_block(not_image)]}])
    assert bad_image.value.body["type"] == "error" and bad_image.value.type == "invalid_request_error"
    assert bad_image.value.error_code == "reference_not_image" and bad_image.value.api_message
    with pytest.raises(anthropic.AuthenticationError) as wrong_key:
        await anthropic_client(pool, api_key="wrong").messages.create(
            model="gemini-2.5-flash-image", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert wrong_key.value.type == "authentication_error" and wrong_key.value.error_code == "api_key_invalid"
    with pytest.raises(anthropic.UnprocessableEntityError) as unknown_model:
        await client.messages.create(model="claude-opus-4", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert unknown_model.value.error_code == "model_unknown" and "gemini-3-pro-image" in unknown_model.value.api_message
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}}
    with pytest.raises(anthropic.UnprocessableEntityError) as unsupported:
        await client.messages.create(model="gemini-2.5-flash-image", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "text", "text": "x"}, document]}])
    assert unsupported.value.error_code == "content_block_unsupported" and '"document"' in unsupported.value.api_message
    with pytest.raises(anthropic.UnprocessableEntityError) as by_file:
        await client.messages.create(model="gemini-2.5-flash-image", max_tokens=10, messages=[{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}])
    assert by_file.value.error_code == "image_source_unsupported"
    assert pool.fake.generations == [] and await pool.task_count() == 0
    # Blocks this face cannot use are passed over in earlier turns (an agent's own history).
    earlier = [{"role": "user", "content": [{"type": "text", "text": "read this"}, document]},
               {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "draw", "input": {}}]},
               {"role": "user", "content": "now draw a fox"}]
    answer = await client.messages.create(model="gemini-2.5-flash-image", max_tokens=10, messages=earlier)
    assert answer.stop_reason == "end_turn" and pool.fake.generations[0].prompt.startswith("now draw a fox\n\n")


async def test_a_failed_anthropic_task_is_an_error_before_the_stream_and_an_error_event_after(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, api_keys=KEY) as pool:
        (instance_id,) = pool.instance_ids
        refusal = "I can't make that image."
        pool.fake.script_generations(
            instance_id, FakeOutcome.error("quota_exhausted", retry_safe=False),
            FakeOutcome.error("quota_exhausted", retry_safe=False),
            FakeOutcome.error("blocked", retry_safe=False, text=refusal),
            FakeOutcome.error("blocked", retry_safe=False, text=refusal),
        )
        client = anthropic_client(pool)
        flash = {"model": "gemini-2.5-flash-image", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(**flash)
        assert limited.value.type == "rate_limit_error" and limited.value.error_code == "quota_exhausted"
        assert limited.value.response.headers["retry-after"]
        # The one account is out of this model now: a stream is refused before it starts, with a status.
        with pytest.raises(anthropic.RateLimitError) as before:
            async for _ in await client.messages.create(**flash, stream=True):
                pass
        assert before.value.status_code == 429 and before.value.error_code == "model_exhausted"
        # A task that fails once the stream has started: an error event, as Anthropic sends one.
        with pytest.raises(anthropic.APIStatusError) as in_stream:
            async for _ in await client.messages.create(**{**flash, "model": "gemini-3-pro-image"}, stream=True):
                pass
        assert in_stream.value.status_code == 200 and in_stream.value.body["type"] == "error"
        assert in_stream.value.type == "rate_limit_error" and in_stream.value.error_code == "quota_exhausted"
        other = {**flash, "model": "gemini-nano-banana-2.1"}
        refused = await client.messages.create(**other)
        assert refused.stop_reason == "refusal" and [b.text for b in refused.content] == [refusal]
        async with client.messages.stream(**other) as stream:
            streamed = await stream.get_final_message()
        assert streamed.stop_reason == "refusal" and [b.text for b in streamed.content] == [refusal]
        assert len(pool.fake.generations) == 4


# ---- shut-down models and the operator's aliases, on every face ---------------------------------------------


def _face_requests(model: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(face, path, httpx arguments) of one generation naming `model` on every face."""
    chat = {"model": model, "messages": [{"role": "user", "content": "x"}]}
    return [
        ("old", "/generate", {"json": {"prompt": "x", "model": model}}),
        ("old", "/tasks", {"json": {"prompt": "x", "model": model}}),
        ("old", "/generate-with-file", {"data": {"prompt": "x", "model": model},
                                        "files": {"reference_images": ("a.png", TINY_PNG, "image/png")}}),
        ("openai", "/v1/images/generations", {"json": {"prompt": "x", "model": model}}),
        ("openai", "/v1/images/edits", {"data": {"prompt": "x", "model": model}, "files": {"image": ("a.png", TINY_PNG, "image/png")}}),
        ("openai", "/v1/chat/completions", {"json": chat}),
        ("openai", "/v1/chat/completions", {"json": {**chat, "stream": True}}),
        ("gemini", f"/v1beta/models/{model}:generateContent", {"json": {"contents": [{"parts": [{"text": "x"}]}]}}),
        ("gemini", f"/v1/models/{model}:generateContent", {"json": {"contents": [{"parts": [{"text": "x"}]}]}}),
        ("anthropic", "/v1/messages", {"json": {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}}),
    ]


def _error_of(face: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """(code, message, param) of an error in the face's own shape."""
    if face == "old":
        return body["error"], body["message"], None
    error = body["error"]
    if face == "openai":
        return error["code"], error["message"], error["param"]
    if face == "anthropic":
        return error["details"]["error_code"], error["message"], None
    return error["details"][0]["reason"], error["message"], None


@pytest.mark.parametrize(
    ("model", "successor", "day"),
    [
        ("gemini-3.1-flash-image", "gemini-nano-banana-2.1", "2026-10-29"),
        ("gemini-3.1-flash-image-preview", "gemini-nano-banana-2.1", "2026-10-29"),
        ("imagen-4.0-ultra-generate-001", "gemini-3-pro-image", "2026-08-17"),
    ],
)
async def test_every_face_refuses_a_retired_model_naming_its_successor(pool: Pool, model: str, successor: str, day: str) -> None:
    for language, words in (("en", "shut down"), ("zh", "停用")):
        for face, path, arguments in _face_requests(model):
            headers = {"Authorization": f"Bearer {KEY}", "x-goog-api-key": KEY, "Accept-Language": language}
            response = await pool.http.post(path, **arguments, headers=headers)
            assert response.status_code == 422, (path, response.text[:300])
            code, message, param = _error_of(face, response.json())
            assert code == "model_retired", (path, response.text[:300])
            assert model in message and successor in message and day in message and words in message, message
            if face == "openai":
                assert param == "model"
    assert pool.fake.generations == [] and await pool.task_count() == 0


ALIASES = "gemini-3.1-flash-image=gemini-nano-banana-2.1, imagen-4.0-generate-001=gemini-3-pro-image-preview"


async def test_the_operators_aliases_run_their_target_on_every_face(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, api_keys=KEY, model_aliases=ALIASES) as pool:
        headers = {"Authorization": f"Bearer {KEY}", "x-goog-api-key": KEY, "Accept-Language": "en"}
        for old, target in (("gemini-3.1-flash-image", "gemini-nano-banana-2.1"), ("imagen-4.0-generate-001", "gemini-3-pro-image")):
            for face, path, arguments in _face_requests(old):
                before = len(pool.fake.generations)
                response = await pool.http.post(path, **arguments, headers=headers)
                assert response.status_code in (200, 202), (path, response.text[:300])
                if path == "/tasks":
                    task_id = response.json()["task_id"]

                    async def done(task_id: str = task_id) -> bool:
                        return (await pool.http.get(f"/tasks/{task_id}", headers=headers)).json()["done"]

                    await await_until(done, timeout=10, what="the task to finish")
                    answered = (await pool.http.get(f"/tasks/{task_id}", headers=headers)).json()["model"]
                elif arguments["json" if "json" in arguments else "data"].get("stream"):
                    chunks = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
                    answered = {json.loads(chunk)["model"] for chunk in chunks}.pop()
                else:
                    body = response.json()
                    answered = body.get("model") or body.get("modelVersion")
                assert answered == target, (path, response.text[:300])  # the answer says which model ran
                assert len(pool.fake.generations) == before + 1 and pool.fake.generations[-1].model == target, path
        rows = await pool.task_rows()
        assert rows and {r.model for r in rows} == {"gemini-nano-banana-2.1", "gemini-3-pro-image"}
        # The official client, too; a shut-down model the operator did not map is still refused.
        client = openai_client(pool)
        answer = await client.images.generate(model="gemini-3.1-flash-image", prompt="x")
        assert answer.model == "gemini-nano-banana-2.1"  # type: ignore[attr-defined]
        assert (await client.models.retrieve("imagen-4.0-generate-001")).id == "gemini-3-pro-image"
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await client.images.generate(model="imagen-4.0-fast-generate-001", prompt="x")
        assert refused.value.body["code"] == "model_retired" and "gemini-3.1-flash-lite-image" in refused.value.body["message"]
        assert [m.id for m in (await client.models.list()).data] == TODAYS_MODELS  # aliases are not models


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("gemini-3.1-flash-image=gemini-9-ultra", "unknown model"),
        ("imagen-4.0-generate-001=gemini-3.1-flash-image", "shut down"),
        ("gemini-3.1-flash-image", "name=model"),
        ("=gemini-3-pro-image", "name=model"),
        ("gemini-3.1-flash-image=gemini-3-pro-image,gemini-3.1-flash-image=gemini-nano-banana-2.1", "twice"),
        ("gemini-3-pro-image=gemini-nano-banana-2.1", "current model"),
    ],
)
def test_bad_aliases_stop_the_gateway_naming_the_setting(tmp_path: Path, value: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        IsolatedSettings(data_dir=tmp_path, model_aliases=value)
    assert "GATEWAY_MODEL_ALIASES" in str(caught.value) and words in str(caught.value)


def test_bad_aliases_in_the_environment_stop_the_gateway_process(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_RUNTIME": "fake",
           "GATEWAY_MODEL_ALIASES": "gemini-3.1-flash-image=gemini-3.1-flash-image-preview"}
    done = subprocess.run([sys.executable, "-m", "gateway"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "GATEWAY_MODEL_ALIASES" in done.stderr + done.stdout
    assert not (tmp_path / "gateway.db").exists()  # refused before anything started

"""Input that used to give a 500 or a traceback, on both listeners and both databases: control characters in
text fields (422, naming the fields), JSON nested without end (400, no traceback), malformed JSON (400), and
content types other than JSON or multipart on a request that changes state (415). The panel's own forms
(urlencoded, behind its CSRF check) keep working on the panel's routes.

Choice: control characters are refused, not stripped (a prompt is the user's words; changing them silently is
worse than saying no). Tab, newline and carriage return are text and pass.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.api.bodies import MAX_JSON_DEPTH, json_depth_exceeds
from gateway.app import create_admin_app
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import Pool, open_pool

EN = {"Accept-Language": "en"}
JSON_TYPE = {"content-type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
async def pool(database_url: str, tmp_path: Path) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, FakeRuntime(), instances=1) as opened:
        yield opened


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# ---- control characters ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/generate", "/tasks"])
async def test_a_nul_in_the_prompt_is_a_422_naming_it_and_stores_nothing(pool: Pool, path: str) -> None:
    before = await pool.task_count()
    response = await pool.http.post(path, json={"prompt": "a cat\x00 on a mat"}, headers=EN)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "control_characters" and "prompt" in body["message"]
    chinese = await pool.http.post(path, json={"prompt": "猫\x00"})
    assert chinese.status_code == 422 and "prompt" in chinese.json()["message"] and "控制字符" in chinese.json()["message"]
    assert await pool.task_count() == before and pool.fake.generations == []


@pytest.mark.parametrize(
    "raw",
    [b'{"prompt": "bell \\u0007"}', b'{"prompt": "escape \\u001b[31m"}', b'{"prompt": "c1 \\u0085"}',
     b'{"prompt": "lone surrogate \\ud800"}', b'{"prompt": "del \\u007f"}'],
    ids=["BEL", "ESC", "NEL", "surrogate", "DEL"],
)
async def test_other_control_characters_are_refused_too(pool: Pool, raw: bytes) -> None:
    response = await pool.http.post("/generate", content=raw, headers={**EN, **JSON_TYPE})
    assert response.status_code == 422 and response.json()["error"] == "control_characters", response.text


async def test_every_field_with_a_control_character_is_named(pool: Pool) -> None:
    body = {"prompt": "p\x00", "model": "gemini\x00", "aspect_ratio": "1:1"}
    response = await pool.http.post("/generate", json=body, headers=EN)
    assert response.status_code == 422
    assert "prompt, model" in response.json()["message"]


async def test_the_form_endpoint_refuses_them_as_well(pool: Pool) -> None:
    files = [("reference_images", ("r.png", b"\x89PNG\r\n\x1a\n" + b"0" * 20, "image/png"))]
    response = await pool.http.post("/generate-with-file", data={"prompt": "x\x00y"}, files=files, headers=EN)
    assert response.status_code == 422 and response.json()["error"] == "control_characters"


async def test_tabs_newlines_and_carriage_returns_are_text(pool: Pool) -> None:
    response = await pool.http.post("/generate", json={"prompt": "line one\r\n\tline two\n一只猫"})
    assert response.status_code == 200 and response.json()["success"] is True, response.text
    rows = await pool.task_rows()
    assert rows[-1].prompt == "line one\r\n\tline two\n一只猫"


# ---- JSON depth, malformed JSON ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/generate", "/tasks"])
async def test_json_nested_without_end_is_a_400_without_a_traceback(
    pool: Pool, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await pool.http.post(path, content=DEEP, headers={**EN, **JSON_TYPE})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "body_too_deep" and str(MAX_JSON_DEPTH) in response.json()["message"]
    assert _tracebacks(caplog) == []
    nested_in_a_field = b'{"prompt": "p", "extra": ' + b"{\"a\": " * 5000 + b"1" + b"}" * 5000 + b"}"
    response = await pool.http.post(path, content=nested_in_a_field, headers={**EN, **JSON_TYPE})
    assert response.status_code == 400 and response.json()["error"] == "body_too_deep"
    assert await pool.task_count() == 0


def test_brackets_inside_strings_do_not_count() -> None:
    deep_text = b'{"prompt": "' + b"[" * 5000 + b'"}'
    assert not json_depth_exceeds(deep_text)
    assert not json_depth_exceeds(b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    assert json_depth_exceeds(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert not json_depth_exceeds(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)


# ---- the admin listener --------------------------------------------------------------------------------


@pytest.fixture
async def admin(database_url: str, tmp_path: Path) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_admin_app(make_settings(database_url, tmp_path), runtime=FakeRuntime())
    async with AsyncTestClient(app) as client:
        yield client


async def test_admin_json_bodies_are_bounded_and_checked(admin: AsyncTestClient[Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for path, method in (("/api/instances", "POST"), ("/api/selectors", "PUT")):
        deep = await admin.request(method, path, content=DEEP, headers={**EN, **JSON_TYPE})
        assert deep.status_code == 400 and deep.json()["error"] == "body_too_deep", (path, deep.text)
        broken = await admin.request(method, path, content=b'{"name": ', headers={**EN, **JSON_TYPE})
        assert broken.status_code == 400, (path, broken.text)
    assert _tracebacks(caplog) == []
    assert (await admin.get("/api/instances")).json()["instances"] == []


async def test_an_instance_name_with_a_nul_is_refused(admin: AsyncTestClient[Any]) -> None:
    response = await admin.post("/api/instances", json={"name": "a\x00b"}, headers=EN)
    assert response.status_code == 422, response.text
    assert (await admin.get("/api/instances")).json()["instances"] == []


# ---- content types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
@pytest.mark.parametrize("path", ["/generate", "/tasks", "/generate-with-file"])
async def test_the_generation_api_takes_json_or_multipart_only(pool: Pool, path: str, content_type: str | None) -> None:
    headers = {**EN, **({"content-type": content_type} if content_type else {})}
    response = await pool.http.post(path, content=b'{"prompt": "spend the quota"}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["error"] == "unsupported_media_type" and "application/json" in response.json()["message"]
    assert pool.fake.generations == [] and await pool.task_count() == 0


CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # a sandboxed frame or a file: page
    {"Sec-Fetch-Site": "cross-site"},
]


@pytest.mark.parametrize("browser", CROSS_SITE, ids=["origin", "null_origin", "sec_fetch_site"])
async def test_a_form_from_a_page_on_another_site_is_refused(pool: Pool, browser: dict[str, str]) -> None:
    """A multipart form needs no CORS preflight: a page the operator visits could post one to spend the quota."""
    files = {"reference_images": ("r.png", TINY_PNG, "image/png")}
    response = await pool.http.post("/generate-with-file", data={"prompt": "spend"}, files=files, headers={**EN, **browser})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "origin_mismatch"
    assert pool.fake.generations == [] and await pool.task_count() == 0
    # The same form from the gateway's own origin, or from a client that is not a browser, is served.
    same = {**EN, "Origin": pool.url, "Sec-Fetch-Site": "same-origin"}
    for headers in (same, EN):
        served = await pool.http.post("/generate-with-file", data={"prompt": "p"}, files=files, headers=headers)
        assert served.status_code == 200 and served.json()["success"] is True, served.text


async def test_json_with_a_charset_still_works(pool: Pool) -> None:
    headers = {"content-type": "application/json; charset=utf-8"}
    response = await pool.http.post("/generate", content=b'{"prompt": "p"}', headers=headers)
    assert response.status_code == 200 and response.json()["success"] is True


async def test_the_management_api_takes_json_or_multipart_only(admin: AsyncTestClient[Any]) -> None:
    created = await admin.post("/api/instances", content=b'{"name": "x"}', headers={**EN, "content-type": "text/plain"})
    assert created.status_code == 415, created.text
    form = await admin.post("/api/instances", content=b"name=x", headers={**EN, "content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    assert (await admin.get("/api/instances")).json()["instances"] == []
    instance_id = (await admin.post("/api/instances", json={"name": "ok"})).json()["instance_id"]
    start = await admin.post(f"/api/instances/{instance_id}/start", content=b"go", headers={"content-type": "text/plain"})
    assert start.status_code == 415
    assert (await admin.get(f"/api/instances/{instance_id}")).json()["instance"]["target"] == "stopped"
    session = await admin.put(f"/api/instances/{instance_id}/session", content=b"[]", headers={"content-type": "text/plain"})
    assert session.status_code == 415
    # No body at all (curl -X POST): nothing to mistake, so it is served; an untyped body is read as JSON here.
    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200
    untyped_deep = await admin.post("/api/instances", content=DEEP, headers=EN)
    assert untyped_deep.status_code == 400 and untyped_deep.json()["error"] == "body_too_deep"


async def test_the_panels_own_forms_still_post_urlencoded(admin: AsyncTestClient[Any]) -> None:
    response = await admin.post("/lang", content=b"lang=en", headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code != 415 and response.status_code < 500, response.text
    plain = await admin.post("/lang", content=b"lang=en", headers={"content-type": "text/plain"})
    assert plain.status_code == 415

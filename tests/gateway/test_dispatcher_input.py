"""Bad input and access on the generation API: a clear 4xx in Chinese or English, nothing dispatched, nothing
stored. The checks run before the database is touched, so one SQLite pool serves the whole module."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.pool import Pool, open_pool

PNG = base64.b64encode(TINY_PNG).decode()
LIMITS = {"max_prompt_chars": 200, "max_reference_images": 3, "max_reference_bytes": 1000, "max_body_bytes": 8000}
EN = {"Accept-Language": "en"}


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pool]:
    tmp = tmp_path_factory.mktemp("input")
    async with open_pool(f"sqlite+aiosqlite:///{tmp}/gateway.db", tmp, FakeRuntime(), instances=1, **LIMITS) as opened:
        yield opened


@pytest.fixture
async def untouched(pool: Pool) -> AsyncIterator[None]:
    """The request must neither reach an instance nor leave a task row."""
    generations, tasks = len(pool.fake.generations), await pool.task_count()
    yield
    assert len(pool.fake.generations) == generations
    assert await pool.task_count() == tasks


BIG_PNG = base64.b64encode(TINY_PNG + b"\0" * 1200).decode()

JSON_CASES: list[tuple[str, Any, int, str, str]] = [
    # (id, body, status, error key, a word of the English message)
    ("no prompt", {"aspect_ratio": "1:1"}, 422, "prompt_missing", "prompt"),
    ("empty prompt", {"prompt": ""}, 422, "prompt_missing", "prompt"),
    ("blank prompt", {"prompt": "  \n "}, 422, "prompt_missing", "prompt"),
    ("prompt not text", {"prompt": 42}, 422, "field_type", "prompt"),
    ("prompt too long", {"prompt": "x" * 201}, 422, "prompt_too_long", "201"),
    ("unknown ratio", {"prompt": "p", "aspect_ratio": "7:3"}, 422, "aspect_ratio_unknown", "16:9"),
    ("ratio not text", {"prompt": "p", "aspect_ratio": 1.5}, 422, "field_type", "aspect_ratio"),
    ("broken base64", {"prompt": "p", "reference_image_b64": "@@@not base64@@@"}, 422, "reference_not_base64", "#1"),
    ("not an image", {"prompt": "p", "reference_images_b64": [PNG, base64.b64encode(b"hello").decode()]}, 422, "reference_not_image", "#2"),
    ("data URL not base64", {"prompt": "p", "reference_image_b64": "data:image/png,abc"}, 422, "reference_not_base64", "#1"),
    ("empty data URL", {"prompt": "p", "reference_image_b64": "data:image/png;base64,"}, 422, "reference_empty", "#1"),
    ("references not a list", {"prompt": "p", "reference_images_b64": PNG}, 422, "field_type", "reference_images_b64"),
    ("reference not text", {"prompt": "p", "reference_images_b64": [7]}, 422, "reference_not_string", "#1"),
    ("too many references", {"prompt": "p", "reference_image_b64": PNG, "reference_images_b64": [PNG] * 3}, 422, "too_many_references", "3"),
    ("reference too large", {"prompt": "p", "reference_images_b64": [BIG_PNG]}, 413, "reference_too_large", "1000"),
    ("body not an object", ["prompt"], 400, "body_not_object", "object"),
]


@pytest.mark.parametrize("path", ["/generate", "/tasks"])
@pytest.mark.parametrize(("body", "status", "key", "word"), [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
async def test_bad_json_is_refused_before_dispatch(
    pool: Pool, untouched: None, path: str, body: Any, status: int, key: str, word: str
) -> None:
    english = await pool.http.post(path, json=body, headers=EN)
    assert english.status_code == status, english.text
    assert english.json()["success"] is False and english.json()["error"] == key
    assert word in english.json()["message"]
    chinese = await pool.http.post(path, json=body)
    assert chinese.status_code == status and chinese.json()["message"] != english.json()["message"]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in chinese.json()["message"])


async def test_a_body_that_is_not_json(pool: Pool, untouched: None) -> None:
    response = await pool.http.post("/generate", content=b'{"prompt": ', headers={**EN, "content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "body_not_json"


async def test_a_body_over_the_limit(pool: Pool, untouched: None) -> None:
    body = json.dumps({"prompt": "p", "padding": "x" * 9000}).encode()
    response = await pool.http.post("/generate", content=body, headers={**EN, "content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["message"]


def _files(*contents: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("reference_images", (f"f{i}.png", data, "image/png")) for i, data in enumerate(contents)]


FORM_CASES: list[tuple[str, dict[str, str], list[Any], int, str]] = [
    ("no prompt", {"aspect_ratio": "1:1"}, _files(TINY_PNG), 422, "prompt_missing"),
    ("unknown ratio", {"prompt": "p", "aspect_ratio": "square"}, _files(TINY_PNG), 422, "aspect_ratio_unknown"),
    ("not an image", {"prompt": "p"}, _files(b"just text"), 422, "reference_not_image"),
    ("empty file", {"prompt": "p"}, _files(b""), 422, "reference_empty"),
    ("too many files", {"prompt": "p"}, _files(*[TINY_PNG] * 4), 422, "too_many_references"),
    ("file too large", {"prompt": "p"}, _files(TINY_PNG + b"\0" * 1200), 413, "reference_too_large"),
]


@pytest.mark.parametrize(("data", "files", "status", "key"), [c[1:] for c in FORM_CASES], ids=[c[0] for c in FORM_CASES])
async def test_bad_forms_are_refused_before_dispatch(
    pool: Pool, untouched: None, data: dict[str, str], files: list[Any], status: int, key: str
) -> None:
    response = await pool.http.post("/generate-with-file", data=data, files=files or None, headers=EN)
    assert response.status_code == status, response.text
    assert response.json()["error"] == key


async def test_generate_with_file_wants_a_form(pool: Pool, untouched: None) -> None:
    response = await pool.http.post("/generate-with-file", content=b"prompt=p", headers={**EN, "content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"


async def test_a_valid_request_still_works_after_all_that(pool: Pool) -> None:
    response = await pool.http.post("/generate-with-file", data={"prompt": "p"}, files=_files(TINY_PNG))
    assert response.status_code == 200 and response.json()["success"] is True


# ---- API keys ------------------------------------------------------------------------------------------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[Pool]:
    url = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    async with open_pool(url, tmp_path, FakeRuntime(), instances=1, api_keys="key-one, key-two") as opened:
        yield opened


async def test_api_keys_guard_generation_tasks_and_metrics(keyed: Pool) -> None:
    http = keyed.http
    missing = await http.post("/generate", json={"prompt": "p"}, headers=EN)
    assert missing.status_code == 401 and missing.json()["error"] == "api_key_missing"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = await http.post("/generate", json={"prompt": "p"}, headers={"Authorization": "Bearer key-three"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "api_key_invalid"
    assert (await http.post("/tasks", json={"prompt": "p"})).status_code == 401
    assert (await http.get("/tasks/anything")).status_code == 401
    assert (await http.post("/generate-with-file", data={"prompt": "p"}, files=_files(TINY_PNG))).status_code == 401
    assert (await http.get("/metrics")).status_code == 401
    assert keyed.fake.generations == [] and await keyed.task_count() == 0

    bearer = await http.post("/generate", json={"prompt": "p"}, headers={"Authorization": "Bearer key-two"})
    assert bearer.status_code == 200 and bearer.json()["success"] is True
    header = await http.post("/generate", json={"prompt": "p"}, headers={"X-API-Key": "key-one"})
    assert header.status_code == 200 and header.json()["success"] is True
    assert (await http.get("/metrics", headers={"Authorization": "Bearer key-one"})).status_code == 200


async def test_health_stays_open_with_keys(keyed: Pool) -> None:
    response = await keyed.http.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "healthy"


async def test_no_keys_means_open(pool: Pool) -> None:
    assert (await pool.http.get("/metrics")).status_code == 200

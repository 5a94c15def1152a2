"""Durable asynchronous tasks and output images, on the fake runtime, on SQLite and Postgres: Idempotency-Key
(same key and body → the same task, another body → 409), signed webhooks retried with every attempt recorded,
queued tasks resumed by the next gateway, and the answer's format and content hashes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select, text

from gateway.app import GATEWAY_APPLICATION, Fleet, create_api_app
from gateway.db.engine import create_db_engine
from gateway.db.models import Task, TaskInput
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import DISPATCH_FAST, Pool, open_pool, serve
from tests.polling import await_until
from tests.ports import serving

SECRET = "webhook-test-secret"


async def row(pool: Pool, task_id: str) -> Task:
    await pool.fleet.dispatcher.settled()
    async with pool.fleet.sessions() as session:
        found = await session.scalar(select(Task).where(Task.id == __import__("uuid").UUID(task_id)))
    assert found is not None
    return found


# ---- Idempotency-Key ------------------------------------------------------------------------------------


async def test_the_same_key_and_body_is_the_same_task_and_another_body_a_conflict(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        body = {"prompt": "一只猫", "aspect_ratio": "1:1"}
        headers = {"Idempotency-Key": "order-42", "Accept-Language": "en"}
        first, again = await asyncio.gather(
            pool.http.post("/tasks", json=body, headers=headers), pool.http.post("/tasks", json=body, headers=headers)
        )
        assert first.status_code == again.status_code == 202
        assert first.json()["task_id"] == again.json()["task_id"]
        other = await pool.http.post("/tasks", json={**body, "prompt": "一只狗"}, headers=headers)
        assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
        task_id = first.json()["task_id"]
        await await_until(lambda: _done(pool, task_id), timeout=5, what="the task to finish")
        later = await pool.http.post("/tasks", json=body, headers=headers)
        assert later.json()["task_id"] == task_id and later.json()["status"] == "succeeded"
        assert [g.task_id for g in pool.fake.generations] == [task_id]
        stored = await row(pool, task_id)
        assert stored.idempotency_key == "order-42" and len(stored.request_hash or "") == 64 and stored.api == "tasks"
        bad = await pool.http.post("/tasks", json=body, headers={"Idempotency-Key": "x" * 101})
        assert bad.status_code == 422 and bad.json()["error"] == "idempotency_key_invalid"


async def _done(pool: Pool, task_id: str) -> bool:
    return (await pool.http.get(f"/tasks/{task_id}")).json()["done"]


async def test_openai_images_with_a_key_answer_the_same_images_without_running_again(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=2) as pool:
        client = openai.AsyncOpenAI(base_url=f"{pool.url}/v1", api_key="none", max_retries=0)
        headers = {"Idempotency-Key": "batch-7"}
        first = await client.images.generate(prompt="a fox", n=2, extra_headers=headers)
        again = await client.images.generate(prompt="a fox", n=2, extra_headers=headers)
        assert [d.b64_json for d in again.data] == [d.b64_json for d in first.data]
        assert len(pool.fake.generations) == 2
        with pytest.raises(openai.ConflictError) as conflict:
            await client.images.generate(prompt="a wolf", n=2, extra_headers=headers)
        assert conflict.value.body["code"] == "idempotency_key_reused"
        rows = await pool.task_rows()
        assert sorted(r.idempotency_key for r in rows) == ["batch-7:0", "batch-7:1"] and {r.api for r in rows} == {"openai"}


# ---- webhooks ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def receiver(statuses: list[int]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback webhook receiver answering the given statuses in turn (then 200); records each request."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"headers": dict(self.headers), "body": body})
            self.send_response(statuses[len(received) - 1] if len(received) <= len(statuses) else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server) as port:
        yield f"http://127.0.0.1:{port}/hook", received


async def test_a_callback_is_signed_retried_and_every_attempt_recorded(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    # Private addresses allowed here only so that a loopback receiver can stand in for the client's server.
    settings = {"webhook_secret": SECRET, "webhook_backoff": 0.05, "webhook_attempts": 3, "fetch_private_addresses": True}
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with receiver([500]) as (url, received):
            accepted = await pool.http.post("/tasks", json={"prompt": "a fox", "callback_url": url, "output_format": "jpeg"})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            await await_until(lambda: _count(received, 2), timeout=10, what="two callback attempts")
            await pool.fleet.dispatcher.webhooks.settled()
        first, second = received
        assert first["body"] == second["body"]
        payload = json.loads(second["body"])
        assert payload["task_id"] == task_id and payload["status"] == "succeeded" and payload["output_format"] == "jpeg"
        image = base64.b64decode(payload["generated_images"][0])
        assert image.startswith(b"\xff\xd8") and payload["image_hashes"] == [hashlib.sha256(image).hexdigest()]
        headers = {k.lower(): v for k, v in second["headers"].items()}
        expected = hmac.new(SECRET.encode(), headers["x-fleet-timestamp"].encode() + b"." + second["body"], hashlib.sha256)
        assert headers["x-fleet-signature"] == "sha256=" + expected.hexdigest()
        attempts = (await row(pool, task_id)).callback_attempts
        assert [(a["attempt"], a["status"], a["ok"]) for a in attempts] == [(1, 500, False), (2, 200, True)]


async def _count(received: list[Any], wanted: int) -> bool:
    return len(received) >= wanted


async def test_bad_callbacks_are_refused_before_anything_is_stored(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, webhook_secret=SECRET) as pool:
        for url, code in (("http://127.0.0.1:9/hook", "callback_url_refused"), ("http://169.254.169.254/", "callback_url_refused"),
                          ("ftp://example.com/x", "callback_url_invalid"), (42, "field_type")):
            refused = await pool.http.post("/tasks", json={"prompt": "x", "callback_url": url})
            assert refused.status_code == 422 and refused.json()["error"] == code, refused.text
    # A second gateway on the same database: with its key (each data folder would make its own).
    async with open_pool(database_url, tmp_path / "unsigned", fake, instances=0, encryption_key=key_of(tmp_path)) as pool:
        refused = await pool.http.post("/tasks", json={"prompt": "x", "callback_url": "https://example.com/hook"})
        assert refused.status_code == 422 and refused.json()["error"] == "callback_url_not_configured"
        assert await pool.task_count() == 0 and pool.fake.generations == []


def key_of(data_dir: Path) -> str:
    """The encryption key a gateway made in its data folder."""
    return (data_dir / "encryption_key").read_text().strip()


# ---- a queued task outlives its gateway -----------------------------------------------------------------


async def _kept_inputs(fleet: Fleet, task_id: str, data_dir: Path) -> bool:
    """Whether the task's inputs are kept where the store keeps them: a file (SQLite) or a row (Postgres)."""
    if fleet.settings.result_store_kind == "files":
        return (data_dir / "requests" / f"{task_id}.json").exists()
    async with fleet.sessions() as session:
        return await session.scalar(select(TaskInput.task_id).where(TaskInput.task_id == uuid.UUID(task_id))) is not None


async def _queue_behind_a_running_task(fleet: Fleet, settings: Any, fake: FakeRuntime) -> tuple[str, str]:
    """One instance busy with a first task, a second task queued behind it; returns both ids."""
    from tests.gateway.pool import start_instances

    await start_instances(fleet, 1)
    fake.generate_delay = 20.0  # the first task holds the only instance until the gateway stops
    async with serve(create_api_app(settings, fleet=fleet)) as url:
        import httpx

        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            running = (await http.post("/tasks", json={"prompt": "first"})).json()["task_id"]
            await await_until(lambda: _started(fake), timeout=5, what="the first generation to start")
            queued = (await http.post("/tasks", json={"prompt": "second", "output_format": "webp"})).json()["task_id"]
    return running, queued


async def test_a_queued_task_is_resumed_by_the_next_gateway(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    settings = make_settings(database_url, tmp_path, **{**DISPATCH_FAST, "generation_timeout": 30.0})
    fleet = await Fleet.open(settings, runtime=fake)
    running, queued = await _queue_behind_a_running_task(fleet, settings, fake)
    assert await _kept_inputs(fleet, queued, tmp_path)
    await fleet.close()  # a restart: the queued task stays queued, its inputs kept
    fake.generate_delay = 0.0

    fleet = await Fleet.open(settings, runtime=fake)
    try:
        result = await await_until(lambda: fleet.dispatcher.task(queued),
                                   until=lambda task: task.status in ("succeeded", "failed"), timeout=20,
                                   what="the queued task to end after the restart")
        assert result.status == "succeeded", result
        assert base64.b64decode(result.images_b64[0])[8:12] == b"WEBP" and result.output_format == "webp"
        assert [g.prompt for g in fake.generations] == ["first", "second"]
        assert (await fleet.dispatcher.task(running)).error_code == "gateway_shutdown"
        assert not await _kept_inputs(fleet, queued, tmp_path)  # removed once the task ended
    finally:
        await fleet.close()


@pytest.mark.postgres
async def test_a_queued_task_is_resumed_even_while_the_stopped_gateways_connection_lingers(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    """The CI flake of the test above: Postgres removes a closed connection from pg_stat_activity a moment after
    the client left, so the next gateway could see its predecessor "connected", take it for a live replica and
    leave the queued task to it, forever. Held open here on purpose, under the stopped gateway's name."""
    settings = make_settings(postgres_url, tmp_path, **{**DISPATCH_FAST, "generation_timeout": 30.0, "heartbeat_timeout": 3600.0})
    fleet = await Fleet.open(settings, runtime=fake)
    _running, queued = await _queue_behind_a_running_task(fleet, settings, fake)
    lingering = create_db_engine(postgres_url, application_name=f"{GATEWAY_APPLICATION}{fleet.dispatcher.owners.origin}")
    try:
        async with lingering.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await fleet.close()
            fake.generate_delay = 0.0
            fleet = await Fleet.open(settings, runtime=fake)
            try:
                result = await await_until(lambda: fleet.dispatcher.task(queued),
                                           until=lambda task: task.status in ("succeeded", "failed"), timeout=20,
                                           what="the queued task to end after the restart")
                assert result.status == "succeeded", result
            finally:
                await fleet.close()
    finally:
        await lingering.dispose()


async def _started(fake: FakeRuntime) -> bool:
    return bool(fake.generations)


# ---- output images -------------------------------------------------------------------------------------------


async def test_output_formats_and_content_hashes(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        plain = (await pool.generate()).json()
        assert base64.b64decode(plain["generated_images"][0]) == TINY_PNG  # PNG: the page's own bytes
        assert plain["image_hashes"] == [hashlib.sha256(TINY_PNG).hexdigest()] and plain["output_format"] == "png"
        jpeg = (await pool.generate(output_format="jpeg", output_quality=70)).json()
        image = base64.b64decode(jpeg["generated_images"][0])
        assert image.startswith(b"\xff\xd8\xff") and jpeg["image_hashes"] == [hashlib.sha256(image).hexdigest()]
        stored = await row(pool, jpeg["task_id"])
        assert stored.output_format == "jpeg" and stored.image_hashes == jpeg["image_hashes"] and stored.api == "generate"
        again = (await pool.http.get(f"/tasks/{jpeg['task_id']}")).json()
        assert again["image_hashes"] == jpeg["image_hashes"] and again["generated_images"] == jpeg["generated_images"]

        client = openai.AsyncOpenAI(base_url=f"{pool.url}/v1", api_key="none", max_retries=0)
        webp = await client.images.generate(prompt="x", output_format="webp", output_compression=50, response_format="url")
        fetched = await pool.http.get(webp.data[0].url)
        assert fetched.headers["content-type"] == "image/webp" and fetched.content[8:12] == b"WEBP"
        assert webp.data[0].url.split("?")[0].endswith("/0.webp")

        for body, code in (({"output_format": "gif"}, "output_format_unknown"), ({"output_quality": 0}, "output_quality_out_of_range"),
                           ({"output_quality": "high"}, "output_quality_out_of_range")):
            refused = await pool.generate(**body)
            assert refused.status_code == 422 and refused.json()["error"] == code
        bad = await pool.http.post("/v1/images/generations", json={"prompt": "x", "output_format": "bmp"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "output_format"
        assert len(pool.fake.generations) == 3


def test_an_idempotency_fingerprint_ignores_what_the_gateway_found_about_a_conversation() -> None:
    from dataclasses import replace  # noqa: PLC0415

    from gateway.dispatcher import GenerationRequest  # noqa: PLC0415
    from gateway.dispatcher.durable import TaskMeta, fingerprint  # noqa: PLC0415

    meta = TaskMeta(api="openai")
    asked = GenerationRequest(prompt="now red", aspect_ratio="1:1", chat_turn="now red")
    # the task that made the last image, found then and not on a retry a while later: the same request
    found = replace(asked, continue_chat=str(uuid.uuid4()), turn_references=0)
    assert fingerprint(asked, meta) == fingerprint(found, meta)
    assert fingerprint(asked, meta) != fingerprint(replace(asked, prompt="now blue"), meta)

"""Servers the gateway does not trust cannot hold it or fill its memory (issue 21, points 1 and 5).

A webhook receiver that answers with an endless body, a gzip bomb or headers dripped a byte at a time, and an image
URL that answers with a gzip bomb, each met through the API (a task's `callback_url`, a chat message's image).
Memory is Python's own allocations (tracemalloc: the gateway runs in this process), its peak bounded generously.
"""

from __future__ import annotations

import contextlib
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.db.models import Task
from gateway.runtime.fake import FakeRuntime
from tests.gateway.pool import Pool, open_pool
from tests.hostile import hostile_server
from tests.polling import await_until

SECRET = "hostile-test-secret"
BOMB = 64 * 1024 * 1024  # unpacked; about 64 KiB on the wire
PEAK_BOUND = 16 * 1024 * 1024  # a quarter of the bomb: the bomb was never unpacked
HOOKS = {"webhook_secret": SECRET, "webhook_attempts": 1, "webhook_timeout": 1.0, "webhook_backoff": 0.05,
         "fetch_private_addresses": True}  # private addresses only so that loopback stands in for the receiver


@contextlib.contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The peak of Python's allocations (bytes) while the block runs, in the list yielded (filled at its end)."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


async def attempts_of(pool: Pool, task_id: str) -> list[dict[str, Any]]:
    async with pool.fleet.sessions() as session:
        task = await session.scalar(select(Task).where(Task.id == uuid.UUID(task_id)))
    return list(task.callback_attempts or []) if task is not None else []


async def delivered_once(pool: Pool, url: str) -> dict[str, Any]:
    """Submits a task calling back `url`; its one recorded attempt (waited for generously)."""
    accepted = await pool.http.post("/tasks", json={"prompt": "a fox", "callback_url": url})
    assert accepted.status_code == 202, accepted.text
    task_id = accepted.json()["task_id"]

    async def recorded() -> bool:
        return len(await attempts_of(pool, task_id)) == 1

    await await_until(recorded, timeout=30, what="the webhook attempt to end and be recorded")
    (attempt,) = await attempts_of(pool, task_id)
    return attempt


async def test_a_receiver_answering_an_endless_body_ends_the_attempt_on_its_status(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, **HOOKS) as pool:
        with hostile_server("endless") as (base, receiver):
            attempt = await delivered_once(pool, f"{base}/hook")
            assert attempt["ok"] is True and attempt["status"] == 200, attempt
            await await_until(lambda: receiver.requests[0]["ended"], timeout=30, what="the gateway to hang up")
            assert receiver.requests[0]["headers"]["accept-encoding"] == "identity"


async def test_a_receiver_dripping_its_headers_meets_one_deadline_for_the_whole_attempt(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, **HOOKS) as pool:
        with hostile_server("drip", pause=0.1) as (base, receiver):
            attempt = await delivered_once(pool, f"{base}/hook")  # each byte comes well within a read's timeout
            assert attempt["ok"] is False and attempt["error"].startswith("timeout"), attempt
            await await_until(lambda: receiver.requests[0]["ended"], timeout=30, what="the gateway to hang up")


async def test_a_receiver_answering_a_gzip_bomb_is_never_unpacked(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, **HOOKS) as pool:
        with hostile_server("bomb", bomb_bytes=BOMB) as (base, receiver):
            receiver.packed_bomb()  # packed before measuring: the server's own bytes are not the gateway's
            with peak_allocated() as peak:
                attempt = await delivered_once(pool, f"{base}/hook")
    assert attempt["ok"] is True and attempt["status"] == 200, attempt
    print(f"\nwebhook gzip bomb of {BOMB >> 20} MiB: peak Python allocations {peak[0] / 2**20:.1f} MiB")
    assert peak[0] < PEAK_BOUND


async def test_a_chat_image_answered_compressed_is_refused_without_unpacking(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = {"fetch_private_addresses": True, "fetch_timeout": 10.0, "max_reference_bytes": 1024 * 1024}
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with hostile_server("bomb", bomb_bytes=BOMB) as (base, server):
            server.packed_bomb()
            image = {"type": "image_url", "image_url": {"url": f"{base}/cat.png"}}
            messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]
            with peak_allocated() as peak:
                answer = await pool.http.post("/v1/chat/completions", json={"messages": messages})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "image_url_compressed" and "gzip" in answer.json()["error"]["message"]
        assert server.requests[0]["headers"]["accept-encoding"] == "identity"
        assert pool.fake.generations == []
    print(f"\nimage gzip bomb of {BOMB >> 20} MiB: peak Python allocations {peak[0] / 2**20:.1f} MiB")
    assert peak[0] < PEAK_BOUND


async def test_a_plain_image_is_still_fetched(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    from gateway.runtime.fake import TINY_PNG

    settings = {"fetch_private_addresses": True, "fetch_timeout": 10.0, "max_reference_bytes": 4096}
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with hostile_server("image", content=TINY_PNG) as (base, _server):
            image = {"type": "image_url", "image_url": {"url": f"{base}/cat.png"}}
            messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]
            answer = await pool.http.post("/v1/chat/completions", json={"messages": messages})
        assert answer.status_code == 200, answer.text
        assert len(pool.fake.generations) == 1

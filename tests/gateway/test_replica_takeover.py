"""Two gateway processes on one Postgres, each with its own data folder, sharing fake instances (tests/gateway/
replicas.py): results and signed URLs made on one are served by the other; a replica SIGKILLed with queued tasks
and a pending webhook leaves them to the other, which runs every task once, in order, and delivers the webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.db.engine import create_db_engine
from gateway.db.models import Task, WebhookDelivery
from tests.gateway.replicas import Replica, SharedFake
from tests.gateway.test_durable_tasks import SECRET, receiver
from tests.polling import wait_until

pytestmark = pytest.mark.postgres

BEATS = {"HEARTBEAT_INTERVAL": "0.5", "HEARTBEAT_TIMEOUT": "2", "WEBHOOK_SECRET": SECRET}


@contextlib.contextmanager
def two_replicas(postgres_url: str, tmp_path: Path, fake: SharedFake, **settings: str) -> Iterator[tuple[Replica, Replica]]:
    a = Replica(postgres_url, tmp_path / "a", fake.url, {**BEATS, **settings})
    b = Replica(postgres_url, tmp_path / "b", fake.url, {**BEATS, **settings})
    try:
        a.start()
        b.start()
        yield a, b
    except BaseException:
        print("---- replica a\n" + a.log_tail() + "\n---- replica b\n" + b.log_tail())
        raise
    finally:
        a.stop()
        b.stop()


@contextlib.contextmanager
def shared_fake(delay: float = 0.0) -> Iterator[SharedFake]:
    with SharedFake(delay) as fake:
        yield fake


def start_instances(replica: Replica, count: int) -> list[str]:
    with replica.admin() as admin:
        ids = []
        for n in range(count):
            created = admin.post("/api/instances", json={"name": f"r{n}"})
            assert created.status_code in (200, 201), created.text
            ids.append(created.json()["instance_id"])
            assert admin.post(f"/api/instances/{ids[-1]}/start").status_code in (200, 202)

        def ready() -> bool:
            views = [admin.get(f"/api/instances/{i}").json()["instance"] for i in ids]
            return all((v["status"], v["login_state"]) == ("running", "logged_in") for v in views)

        wait_until(ready, timeout=30, what=f"{count} instances running and signed in")
    return ids


def task(replica: Replica, task_id: str) -> dict[str, Any]:
    with replica.api() as api:
        return api.get(f"/tasks/{task_id}").json()


def ended(replica: Replica, task_id: str) -> bool:
    return task(replica, task_id)["status"] in ("succeeded", "failed")


def scalar(database_url: str, query: Any) -> Any:
    async def read() -> Any:
        engine = create_db_engine(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.scalar(query)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def callback_attempts(database_url: str, task_id: str) -> list[dict[str, Any]]:
    return list(scalar(database_url, select(Task.callback_attempts).where(Task.id == uuid.UUID(task_id))) or [])


def pending_attempts(database_url: str, task_id: str) -> list[int]:
    """The attempt numbers the outbox row of a task's webhook records."""
    attempts = scalar(database_url, select(WebhookDelivery.attempts).where(WebhookDelivery.task_id == uuid.UUID(task_id)))
    return [a["attempt"] for a in attempts or []]


def test_a_task_and_a_signed_url_made_on_one_replica_are_served_by_the_other(postgres_url: str, tmp_path: Path) -> None:
    with shared_fake() as fake, two_replicas(postgres_url, tmp_path, fake) as (a, b):
        start_instances(a, 1)
        with a.api() as api_a, b.api() as api_b:
            made = api_a.post("/tasks", json={"prompt": "made on a"})
            assert made.status_code == 202, made.text
            task_id = made.json()["task_id"]
            wait_until(lambda: ended(b, task_id), timeout=30, what="the task, read on b, to end")
            on_b = task(b, task_id)
            assert on_b["status"] == "succeeded", on_b
            assert on_b["generated_images"] == task(a, task_id)["generated_images"] and on_b["generated_images"]

            image = api_a.post("/v1/images/generations", json={"prompt": "a url", "response_format": "url"})
            assert image.status_code == 200, image.text
            url = httpx.URL(image.json()["data"][0]["url"])
            fetched = api_b.get(url.raw_path.decode())  # the same link, asked of the other replica
            assert fetched.status_code == 200, fetched.text
            assert fetched.content == api_a.get(url.raw_path.decode()).content and fetched.content[:4] == b"\x89PNG"
        assert not list((tmp_path / "a").glob("results/*")) and not list((tmp_path / "b").glob("results/*"))


def test_a_sigkilled_replicas_queued_tasks_run_once_each_in_order_on_the_other(postgres_url: str, tmp_path: Path) -> None:
    with shared_fake(delay=3.0) as fake, two_replicas(postgres_url, tmp_path, fake) as (a, b):
        start_instances(a, 1)
        with a.api() as api_a, b.api() as api_b:
            running = api_a.post("/tasks", json={"prompt": "t0"}).json()["task_id"]
            wait_until(lambda: bool(fake.generations()), timeout=10, what="the first generation to start")
            queued: dict[str, str] = {}
            for prompt, api in (("q1", api_a), ("q2", api_a), ("b1", api_b), ("q3", api_a), ("q4", api_a)):
                answer = api.post("/tasks", json={"prompt": prompt})
                assert answer.status_code == 202 and answer.json()["status"] == "queued", answer.text
                queued[prompt] = answer.json()["task_id"]
                time.sleep(0.02)  # distinct admission times
        fake.set_delay(0.2)
        a.kill()
        killed_at = time.monotonic()
        for prompt, task_id in queued.items():
            wait_until(lambda task_id=task_id: ended(b, task_id), timeout=60, what=f"task {prompt} to end on b")
        print(f"\nb finished a's queue {time.monotonic() - killed_at:.1f} s after the SIGKILL")
        assert {prompt: task(b, task_id)["status"] for prompt, task_id in queued.items()} == dict.fromkeys(queued, "succeeded")
        gone = task(b, running)
        assert (gone["status"], gone["error_code"]) == ("failed", "abandoned"), gone
        generations = fake.generations()
        ran = [g.prompt for g in generations if g.outcome == "ok"]
        assert ran == ["t0", "q1", "q2", "b1", "q3", "q4"], ran  # FIFO across both queues, by admission
        per_task = [g.task_id for g in generations if g.outcome == "ok"]
        assert len(per_task) == len(set(per_task)), per_task  # no task generated twice


def test_a_webhook_pending_on_a_sigkilled_replica_is_delivered_by_the_other(postgres_url: str, tmp_path: Path) -> None:
    with shared_fake() as fake, two_replicas(postgres_url, tmp_path, fake, WEBHOOK_BACKOFF="4", WEBHOOK_ATTEMPTS="3") as (a, b):
        start_instances(a, 1)
        with receiver([500]) as (url, received), a.api() as api_a:
            made = api_a.post("/tasks", json={"prompt": "hooked", "callback_url": url})
            assert made.status_code == 202, made.text
            task_id = made.json()["task_id"]
            wait_until(lambda: len(received) >= 1, timeout=20, what="the first delivery (answered 500)")
            wait_until(lambda: pending_attempts(postgres_url, task_id), until=lambda found: found == [1], timeout=10,
                       what="the failed attempt written to the outbox")
            a.kill()  # its second attempt was due 4 s later
            wait_until(lambda: len(received) >= 2, timeout=30, what="the other replica's delivery")
            time.sleep(0.5)  # a third delivery would be a duplicate
        assert len(received) == 2
        first, second = (json.loads(r["body"]) for r in received)
        assert first == second and second["task_id"] == task_id and second["status"] == "succeeded"
        assert task(b, task_id)["status"] == "succeeded"  # the survivor serves the task too
        wait_until(lambda: callback_attempts(postgres_url, task_id), until=lambda found: len(found) == 2, timeout=10,
                   what="both attempts recorded")
        attempts = callback_attempts(postgres_url, task_id)
        assert [(x["attempt"], x["status"], x["ok"]) for x in attempts] == [(1, 500, False), (2, 200, True)]


def test_a_hooked_task_running_on_a_sigkilled_replica_ends_abandoned_and_its_webhook_says_so(
    postgres_url: str, tmp_path: Path
) -> None:
    with shared_fake(delay=6.0) as fake, two_replicas(postgres_url, tmp_path, fake) as (a, b):
        start_instances(a, 1)
        with receiver([]) as (url, received), a.api() as api_a:
            made = api_a.post("/tasks", json={"prompt": "cut short", "callback_url": url})
            assert made.status_code == 202, made.text
            task_id = made.json()["task_id"]
            wait_until(lambda: bool(fake.generations()), timeout=10, what="the generation to start")
            a.kill()  # mid-generation: nothing of this task reached the outbox on a
            wait_until(lambda: len(received) >= 1, timeout=30, what="the survivor's webhook")
            time.sleep(0.5)  # a second delivery would be a duplicate
        assert len(received) == 1
        told = json.loads(received[0]["body"])
        assert (told["task_id"], told["status"], told["success"], told["error_code"]) == (task_id, "failed", False, "abandoned")
        assert (task(b, task_id)["status"], task(b, task_id)["error_code"]) == ("failed", "abandoned")

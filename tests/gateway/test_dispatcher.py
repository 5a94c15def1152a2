"""The dispatcher through the generation API, on the fake runtime, on SQLite and Postgres: leases, the queue,
retries, cooldowns, asynchronous tasks, metrics. Overlap is read from the fake instances' own records."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.runtime.fake import TINY_PNG, FakeOutcome, FakeRuntime
from tests.gateway.pool import Pool, open_pool
from tests.polling import await_until


@pytest.fixture
async def pool(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=2) as opened:
        yield opened


def assert_no_overlap(fake: FakeRuntime) -> None:
    """No fake instance ever ran two generations at once, and none was ever sent one while busy."""
    assert fake.busy_rejections == 0
    by_instance: dict[str, list[tuple[float, float]]] = {}
    for g in fake.generations:
        assert g.ended is not None
        by_instance.setdefault(g.instance_id, []).append((g.started, g.ended))
    for spans in by_instance.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end


# ---- the old shapes ---------------------------------------------------------------------------------


async def test_generate_answers_in_the_old_shape_and_records_the_task(pool: Pool) -> None:
    response = await pool.generate(aspect_ratio="16:9")
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["message"] == "图片生成成功。"
    assert base64.b64decode(body["generated_images"][0]) == TINY_PNG
    assert body["ai_text_response"] == "fake text"
    assert body["attempts"] == 1 and body["error_code"] is None and body["instance"] in ("i0", "i1")
    assert {"queued_ms", "run_ms", "total_ms"} <= body["timings"].keys()
    (row,) = await pool.task_rows()
    assert str(row.id) == body["task_id"] and row.status == "succeeded" and row.mode == "sync"
    assert row.instance_name == body["instance"] and row.attempts == 1 and row.image_count == 1
    assert row.aspect_ratio == "16:9" and row.started_at is not None and row.finished_at is not None
    assert row.timings["run_ms"] >= 0 and row.error_code is None
    (generation,) = pool.fake.generations
    assert generation.task_id == body["task_id"] and generation.aspect_ratio == "16:9"


async def test_reference_images_arrive_without_their_data_url_prefix(pool: Pool) -> None:
    raw = base64.b64encode(TINY_PNG).decode()
    response = await pool.generate(
        reference_image_b64=f"data:image/png;base64,{raw}", reference_images_b64=[raw, f"data:image/png;base64,{raw}"]
    )
    assert response.json()["success"] is True
    (generation,) = pool.fake.generations
    assert generation.references == [raw, raw, raw]
    assert (await pool.task_rows())[0].reference_count == 3


async def test_generate_with_file_takes_multipart_uploads(pool: Pool) -> None:
    files = [("reference_images", ("a.png", TINY_PNG, "image/png")), ("reference_images", ("b.png", TINY_PNG, "image/png"))]
    response = await pool.http.post("/generate-with-file", data={"prompt": "画一只狗", "aspect_ratio": "1:1"}, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    (generation,) = pool.fake.generations
    assert generation.prompt == "画一只狗" and generation.aspect_ratio == "1:1"
    assert [base64.b64decode(r) for r in generation.references] == [TINY_PNG, TINY_PNG]


async def test_old_client_with_requests_library(pool: Pool) -> None:
    """Exactly what the old guide shows, with the blocking `requests` client its users have."""
    import requests

    def old_client() -> tuple[dict, dict]:
        result = requests.post(f"{pool.url}/generate", json={"prompt": "一只可爱的小猫", "aspect_ratio": "16:9"}).json()
        health = requests.get(f"{pool.url}/health").json()
        return result, health

    result, health = await asyncio.to_thread(old_client)
    assert result["success"] is True and result["generated_images"] and "task_id" in result
    assert health["status"] == "healthy" and health["concurrency_capacity"] == 2
    assert health["browser_instances"] == {"total": 2, "running": 2, "available": 2, "busy": 0}


# ---- leases --------------------------------------------------------------------------------------------


async def test_least_recently_used_first(pool: Pool) -> None:
    names = [(await pool.generate()).json()["instance"] for _ in range(4)]
    assert names[0] != names[1] and names[:2] == names[2:]


async def test_concurrent_tasks_spread_and_never_share_an_instance(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=3) as pool:
        fake.generate_delay = 0.15
        responses = await asyncio.gather(*(pool.generate(prompt=f"p{i}") for i in range(12)))
        assert all(r.status_code == 200 and r.json()["success"] for r in responses)
        assert sorted(len(pool.ran_on(i)) for i in pool.instance_ids) == [4, 4, 4]
        assert_no_overlap(fake)
        await await_until(lambda: _leases_free(pool), timeout=5, what="every lease freed")


async def _leases_free(pool: Pool) -> bool:
    views = [await pool.fleet.instances.get(i) for i in pool.instance_ids]
    return not any(v.is_busy for v in views)


async def test_an_expired_lease_does_not_block_the_instance(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    """A gateway that died holding a lease: once it expires, the instance serves again."""
    from sqlalchemy import update

    from gateway.db.models import Instance

    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        (iid,) = pool.instance_ids
        async with pool.fleet.sessions.begin() as session:
            stale = datetime.now(UTC) - timedelta(seconds=1)
            await session.execute(update(Instance).values(lease_task_id=uuid.uuid4(), lease_expires_at=stale))
        response = await pool.generate()
        assert response.json()["success"] is True and response.json()["instance_id"] == iid


# ---- the queue -----------------------------------------------------------------------------------------


async def test_queue_is_first_in_first_out(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        fake.generation_gate = asyncio.Event()  # p0 holds the one instance while the others line up
        calls = [asyncio.create_task(pool.generate(prompt="p0"))]
        await await_until(lambda: _running(pool), timeout=5, what="a generation running")
        for i in range(1, 5):
            calls.append(asyncio.create_task(pool.generate(prompt=f"p{i}")))
            # each one queued before the next arrives
            await await_until(lambda n=i: _queued(pool, n), timeout=5, what=f"{i} tasks queued")
        fake.generation_gate.set()
        responses = await asyncio.gather(*calls)
        assert [g.prompt for g in fake.generations] == [f"p{i}" for i in range(5)]
        assert [r.json()["timings"]["queued_ms"] > 0 for r in responses] == [False, True, True, True, True]


async def test_full_queue_answers_429_with_retry_after_and_stores_nothing(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, queue_max=2) as pool:
        fake.generate_delay = 0.5
        admitted = [asyncio.create_task(pool.generate(prompt=f"p{i}")) for i in range(3)]
        await await_until(lambda: _queued(pool, 2), timeout=5, what="two tasks queued")
        rejected = await pool.http.post("/generate", json={"prompt": "one too many"}, headers={"Accept-Language": "en"})
        assert rejected.status_code == 429
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"] == "queue_full" and "queue is full" in rejected.json()["message"]
        assert all(r.json()["success"] for r in await asyncio.gather(*admitted))
        assert await pool.task_count() == 3
        assert "one too many" not in [g.prompt for g in fake.generations]


async def _queued(pool: Pool, count: int) -> bool:
    return pool.fleet.dispatcher.queue_length() == count


async def test_waiting_too_long_answers_503_and_the_task_fails(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, queue_wait_timeout=0.2) as pool:
        fake.generate_delay = 1.0
        first = asyncio.create_task(pool.generate(prompt="slow"))
        await await_until(lambda: _running(pool), timeout=5, what="a generation running")
        late = await pool.generate(prompt="late")
        assert late.status_code == 503 and late.json()["error"] == "queue_timeout"
        assert int(late.headers["retry-after"]) >= 1
        assert (await first).json()["success"] is True
        rows = {row.prompt: row for row in await pool.task_rows()}
        assert rows["late"].status == "failed" and rows["late"].error_code == "queue_timeout"
        assert rows["late"].instance_id is None and "late" not in [g.prompt for g in fake.generations]


async def _running(pool: Pool) -> bool:
    return any(g.ended is None for g in pool.fake.generations)


async def test_nothing_running_answers_503_saying_so(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=0) as pool:
        response = await pool.http.post("/generate", json={"prompt": "x"}, headers={"Accept-Language": "en"})
        assert response.status_code == 503 and response.json()["error"] == "no_instance_running"
        assert "No browser instance is running" in response.json()["message"]
        assert "retry-after" in response.headers
        assert (await pool.http.post("/tasks", json={"prompt": "x"})).status_code == 503
        assert await pool.task_count() == 0


async def test_signed_out_or_spent_pools_say_which(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        (iid,) = pool.instance_ids
        fake.script_generations(iid, FakeOutcome.error("quota_exhausted", retry_safe=True))
        failed = (await pool.generate()).json()
        assert failed["success"] is False and failed["error_code"] == "quota_exhausted"
        spent = await pool.generate()
        assert spent.status_code == 429 and spent.json()["error"] == "model_exhausted"
        assert 0 < int(spent.headers["retry-after"]) <= 25 * 3600  # the next midnight Pacific

        fake.set_login_state(iid, "needs_login")
        await await_until(lambda: _login_state(pool, iid, "needs_login"), timeout=5, what="the instance needs_login")
        signed_out = await pool.generate()
        assert signed_out.status_code == 503 and signed_out.json()["error"] == "no_instance_logged_in"


async def _login_state(pool: Pool, iid: str, state: str) -> bool:
    return (await pool.fleet.instances.get(iid)).login_state == state


async def test_a_client_that_disconnects_while_queued_leaves_the_queue(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1) as pool:
        fake.generate_delay = 0.6
        first = asyncio.create_task(pool.generate(prompt="first"))
        await await_until(lambda: _running(pool), timeout=5, what="a generation running")
        with pytest.raises(httpx.ReadTimeout):
            await pool.http.post("/generate", json={"prompt": "impatient"}, timeout=0.2)
        await await_until(lambda: _queued(pool, 0), timeout=5, what="the queue empty")
        assert (await first).json()["success"] is True
        rows = {row.prompt: row for row in await pool.task_rows()}
        await await_until(lambda: _status(pool, "impatient", "failed"), timeout=5, what="the impatient task failed")
        rows = {row.prompt: row for row in await pool.task_rows()}
        assert rows["impatient"].error_code == "client_disconnected"
        assert [g.prompt for g in fake.generations] == ["first"]


async def _status(pool: Pool, prompt: str, status: str) -> bool:
    return any(row.prompt == prompt and row.status == status for row in await pool.task_rows())


# ---- failures and retries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome", [FakeOutcome.reset(), FakeOutcome.refused(), FakeOutcome.http(500), FakeOutcome.http(503)], ids=str
)
async def test_an_infrastructure_failure_is_retried_once_elsewhere(pool: Pool, outcome: FakeOutcome) -> None:
    first, second = pool.lru_order()
    pool.fake.script_generations(first, outcome)
    body = (await pool.generate()).json()
    assert body["success"] is True and body["attempts"] == 2 and body["instance_id"] == second
    assert [t["outcome"] for t in body["timings"]["tries"]] == ["instance_unreachable", "succeeded"]
    (row,) = await pool.task_rows()
    assert row.attempts == 2 and str(row.instance_id) == second and row.status == "succeeded"
    kinds = [e.kind for e in await pool.fleet.instances.events(first)]
    assert "attempt_suspect" in kinds


async def test_a_container_killed_mid_task_is_retried_and_restarted(pool: Pool) -> None:
    first, second = pool.lru_order()
    pool.fake.set_generate_delay(first, 0.3)
    call = asyncio.create_task(pool.generate())
    await await_until(lambda: _running(pool), timeout=5, what="a generation running")
    pool.fake.kill(first)
    body = (await call).json()
    assert body["success"] is True and body["instance_id"] == second and body["attempts"] == 2
    await await_until(lambda: _has_event(pool, first, "died"), timeout=5, what="a 'died' event")
    await await_until(lambda: _status_is(pool, first, "running"), timeout=10, what="the instance running again")


async def _has_event(pool: Pool, iid: str, kind: str) -> bool:
    return kind in [e.kind for e in await pool.fleet.instances.events(iid)]


async def _status_is(pool: Pool, iid: str, status: str) -> bool:
    return (await pool.fleet.instances.get(iid)).status == status


async def test_retries_stop_at_max_attempts(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=3, max_attempts=2) as pool:
        for iid in pool.instance_ids:
            fake.script_generations(iid, FakeOutcome.reset())
        body = (await pool.generate()).json()
        assert body["success"] is False and body["error_code"] == "instance_unreachable" and body["attempts"] == 2
        assert len(fake.generations) == 2


async def test_quota_blocks_the_model_on_that_account_and_the_task_goes_elsewhere(pool: Pool) -> None:
    first, second = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error("quota_exhausted", retry_safe=True))
    body = (await pool.generate()).json()
    # A quota answer ran nothing: the retry elsewhere is not counted as a spent attempt.
    assert body["success"] is True and body["instance_id"] == second and body["attempts"] == 1
    view = await pool.fleet.instances.get(first)
    assert view.cooldown_until is None  # the account is not rested, only that model on it
    (block,) = view.unavailable_models
    assert block.kind == "quota" and block.until is not None and block.until > datetime.now(UTC) + timedelta(minutes=1)
    assert await _has_event(pool, first, "model_blocked")
    later = [(await pool.generate()).json()["instance_id"] for _ in range(3)]
    assert later == [second] * 3


async def test_needs_login_takes_the_instance_out_of_the_pool(pool: Pool) -> None:
    first, second = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error("needs_login", retry_safe=True))
    body = (await pool.generate()).json()
    assert body["success"] is True and body["instance_id"] == second
    await await_until(lambda: _login_state(pool, first, "needs_login"), timeout=5, what="the instance needs_login")
    assert [(await pool.generate()).json()["instance_id"] for _ in range(2)] == [second, second]


@pytest.mark.parametrize("code", ["internal_error", "blocked", "needs_login", "ui_changed"])
async def test_a_failure_after_the_prompt_was_accepted_is_not_retried(pool: Pool, code: str) -> None:
    first, _ = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error(code, retry_safe=False))
    response = await pool.http.post("/generate", json={"prompt": "x"}, headers={"Accept-Language": "en"})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is False and body["error_code"] == code and body["attempts"] == 1
    assert body["generated_images"] == [] and body["message"]
    assert len(pool.fake.generations) == 1
    (row,) = await pool.task_rows()
    assert row.status == "failed" and row.error_code == code and row.error_message


async def test_a_retry_safe_failure_is_retried(pool: Pool) -> None:
    first, second = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error("ui_changed", retry_safe=True))
    body = (await pool.generate()).json()
    assert body["success"] is True and body["instance_id"] == second


async def test_a_busy_instance_sends_the_task_on_without_spending_an_attempt(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=2, max_attempts=1) as pool:
        first, second = pool.lru_order()
        fake.script_generations(first, FakeOutcome.http(409))
        body = (await pool.generate()).json()
        assert body["success"] is True and body["instance_id"] == second and body["attempts"] == 1


async def test_an_instance_that_never_answers_times_out_without_a_retry(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=2, generation_timeout=0.3) as pool:
        first, _ = pool.lru_order()
        fake.set_generate_delay(first, 3.0)
        body = (await pool.generate()).json()
        assert body["success"] is False and body["error_code"] == "timeout" and body["attempts"] == 1


# ---- asynchronous tasks ----------------------------------------------------------------------------------


async def test_async_task_runs_in_the_background_and_its_result_expires(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    """With results kept as files (the database's store has its own tests: test_result_stores.py)."""
    async with open_pool(database_url, tmp_path, fake, instances=1, task_result_ttl=60, result_store="files") as pool:
        fake.generate_delay = 0.2
        accepted = await pool.http.post("/tasks", json={"prompt": "later", "aspect_ratio": "4:3"})
        assert accepted.status_code == 202
        task_id = accepted.json()["task_id"]
        assert accepted.headers["location"] == f"/tasks/{task_id}" == accepted.json()["status_url"]
        pending = (await pool.http.get(f"/tasks/{task_id}")).json()
        assert pending["status"] in ("queued", "running") and pending["done"] is False

        async def done() -> bool:
            return (await pool.http.get(f"/tasks/{task_id}")).json()["done"]

        await await_until(done, timeout=5, what="the task to finish")
        finished = (await pool.http.get(f"/tasks/{task_id}")).json()
        assert finished["success"] is True and finished["status"] == "succeeded"
        assert base64.b64decode(finished["generated_images"][0]) == TINY_PNG and finished["ai_text_response"] == "fake text"
        stored = list((tmp_path / "results").iterdir())
        assert [p.name for p in stored] == [f"{task_id}.json"]

        # Past its time: retention prunes the file, the row forgets it; the status stays readable.
        old = datetime.now().timestamp() - 120
        import os

        os.utime(stored[0], (old, old))
        assert (await pool.fleet.retention.purge_once()).expired == 1
        await pool.fleet.dispatcher.prune_once()
        assert not stored[0].exists()
        gone = await pool.http.get(f"/tasks/{task_id}", headers={"Accept-Language": "en"})
        assert gone.status_code == 410 and gone.json()["error"] == "task_result_gone"


async def test_sync_results_can_be_read_back_by_task_id(pool: Pool) -> None:
    body = (await pool.generate()).json()
    again = (await pool.http.get(f"/tasks/{body['task_id']}")).json()
    assert again["generated_images"] == body["generated_images"] and again["status"] == "succeeded"


async def test_unknown_tasks_are_404(pool: Pool) -> None:
    for task_id in (str(uuid.uuid4()), "not-a-task-id"):
        response = await pool.http.get(f"/tasks/{task_id}", headers={"Accept-Language": "en"})
        assert response.status_code == 404 and response.json()["error"] == "task_not_found"


async def test_a_failed_async_task_reports_why(pool: Pool) -> None:
    first, _ = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error("blocked", retry_safe=False))
    task_id = (await pool.http.post("/tasks", json={"prompt": "x"})).json()["task_id"]

    async def done() -> bool:
        return (await pool.http.get(f"/tasks/{task_id}")).json()["done"]

    await await_until(done, timeout=5, what="the task to finish")
    body = (await pool.http.get(f"/tasks/{task_id}")).json()
    assert body["success"] is False and body["error_code"] == "blocked" and body["generated_images"] == []


# ---- metrics and health --------------------------------------------------------------------------------


async def test_metrics_count_outcomes_queue_and_instances(pool: Pool) -> None:
    first, _ = pool.lru_order()
    pool.fake.script_generations(first, FakeOutcome.error("blocked", retry_safe=False))
    await pool.generate()
    await pool.generate()
    text = (await pool.http.get("/metrics")).text
    assert 'aistudio_tasks_total{outcome="blocked"} 1.0' in text
    assert 'aistudio_tasks_total{outcome="succeeded"} 1.0' in text
    assert "aistudio_queue_length 0.0" in text
    assert 'aistudio_instances{status="running"} 2.0' in text
    assert "aistudio_attempt_seconds_count 2.0" in text
    assert "aistudio_queue_wait_seconds_count" in text


async def test_each_fleet_has_its_own_metrics_registry(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/{{}}.db"
    async with open_pool(url.format("a"), tmp_path / "a", FakeRuntime(), instances=1) as a:
        async with open_pool(url.format("b"), tmp_path / "b", FakeRuntime(), instances=0) as b:
            await a.generate()
            assert a.fleet.dispatcher.metrics.registry is not b.fleet.dispatcher.metrics.registry
            assert 'aistudio_tasks_total{outcome="succeeded"}' not in (await b.http.get("/metrics")).text

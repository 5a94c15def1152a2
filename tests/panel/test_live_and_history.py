"""Live updates over server-sent events, the task history, and the panel's labels in both languages."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.db.models import EventKind, LoginState, Status, Target, Task, TaskStatus
from gateway.db.types import utcnow
from gateway.i18n import catalog
from gateway.panel.i18n import panel_catalog
from tests.panel.conftest import csrf_token, served
from tests.polling import await_until

TEMPLATES = Path(__file__).resolve().parents[2] / "gateway" / "panel" / "templates"


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


async def next_event(events: AsyncIterator[tuple[str, str]], wanted: str, contains: str = "", timeout: float = 10) -> str:
    async def find() -> str:
        async for event, data in events:
            if event == wanted and contains in data:
                return data
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(find(), timeout)


async def test_the_pool_stream_follows_changes_and_forgets_a_viewer_who_leaves(admin_app: Litestar) -> None:
    watcher = admin_app.state.pool_watcher
    async with served(admin_app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("GET", "/live/pool") as stream:
            events = sse_events(stream)
            first = await next_event(events, "pool")
            assert 'data-figure="total"' in first and "card-" not in first
            assert watcher.watchers == 1 and watcher.polling
            await client.post("/api/instances", json={"name": "seen-live"})
            changed = await next_event(events, "pool", "seen-live")
            assert 'class="card"' in changed
        # The viewer is gone: its wait ends, and with nobody watching the poller stops.
        await await_until(lambda: (watcher.watchers, watcher.polling), until=lambda seen: seen == (0, False), timeout=5,
                          what="the viewer forgotten and the poller stopped")


async def test_the_instance_stream_shows_its_state_its_events_and_its_end(admin_app: Litestar) -> None:
    async with served(admin_app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        instance_id = (await client.post("/api/instances", json={"name": "watched"})).json()["instance_id"]
        assert (await client.get("/live/instances/nope")).status_code == 404
        async with client.stream("GET", f"/live/instances/{instance_id}") as stream:
            events = sse_events(stream)
            summary = await next_event(events, "summary")
            assert 'data-status="stopped"' in summary
            assert "data-kind=\"created\"" in await next_event(events, "events")
            await client.post(f"/api/instances/{instance_id}/start")
            await next_event(events, "summary", 'data-status="running"')
            await next_event(events, "events", 'data-kind="ready"')
            await client.post(f"/api/instances/{instance_id}/stop")
            await next_event(events, "summary", 'data-status="stopped"')
            assert (await client.delete(f"/api/instances/{instance_id}")).status_code == 200
            assert "watched" not in await next_event(events, "gone")  # says it is gone, by id


async def test_many_viewers_share_one_poller(admin_app: Litestar) -> None:
    watcher = admin_app.state.pool_watcher
    async with served(admin_app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("GET", "/live/pool") as one, client.stream("GET", "/live/pool") as two:
            first, second = sse_events(one), sse_events(two)
            await next_event(first, "pool")
            await next_event(second, "pool")
            assert watcher.watchers == 2 and watcher.polling
        await await_until(lambda: (watcher.watchers, watcher.polling), until=lambda seen: seen == (0, False), timeout=5,
                          what="the viewer forgotten and the poller stopped")


async def add_task(app: Litestar, **values: Any) -> None:
    """A task row as the dispatcher writes it."""
    async with app.state.fleet.sessions.begin() as session:
        session.add(Task(id=uuid.uuid4(), **values))


async def test_task_history_filters_by_outcome_and_instance(panel: AsyncTestClient[Any], admin_app: Litestar) -> None:
    one = (await panel.post("/api/instances", json={"name": "one"})).json()["instance_id"]
    two = (await panel.post("/api/instances", json={"name": "two"})).json()["instance_id"]
    now = utcnow()
    await add_task(admin_app, status=TaskStatus.SUCCEEDED, prompt="a cat " * 100, aspect_ratio="16:9",
                   instance_id=uuid.UUID(one), instance_name="one", attempts=1, created_at=now - timedelta(seconds=9),
                   started_at=now - timedelta(seconds=8), finished_at=now - timedelta(seconds=5))
    await add_task(admin_app, status=TaskStatus.FAILED, prompt="<img src=x onerror=alert(1)>", instance_id=uuid.UUID(two),
                   instance_name="two", attempts=2, error_code="quota_exhausted", created_at=now - timedelta(seconds=3),
                   started_at=now - timedelta(seconds=3), finished_at=now)
    page = await panel.get("/tasks")
    assert page.text.count("data-task-id=") == 2
    assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "3.0 s" in page.text and "quota_exhausted" in page.text  # run time, error code
    failed = await panel.get("/tasks?outcome=failed", headers={"HX-Request": "true"})
    assert failed.text.count("data-task-id=") == 1 and 'data-outcome="failed"' in failed.text
    assert "<html" not in failed.text  # the fragment only
    by_instance = await panel.get(f"/tasks?instance_id={one}")
    assert by_instance.text.count("data-task-id=") == 1 and 'data-outcome="succeeded"' in by_instance.text
    api = (await panel.get("/api/tasks", params={"outcome": "succeeded"})).json()["tasks"]
    assert len(api) == 1 and api[0]["prompt_truncated"] and len(api[0]["prompt"]) == 200 and api[0]["run_ms"] == 3000
    assert (await panel.get("/api/tasks", params={"outcome": "exploded"})).status_code == 422
    assert (await panel.get("/tasks?outcome=exploded")).status_code == 422


async def test_the_overview_of_fifty_instances_shows_every_card(panel: AsyncTestClient[Any]) -> None:
    for number in range(50):
        assert (await panel.post("/api/instances", json={"name": f"pool-{number:02d}"})).status_code == 200
    page = await panel.get("/")
    assert page.text.count('class="card"') == 50
    assert re.search(r'data-figure="total">\s*<span class="figure-value">50<', page.text)
    fragment = await panel.get("/", headers={"HX-Request": "true"})
    assert fragment.text.count('class="card"') == 50 and "<html" not in fragment.text
    assert csrf_token(page.text)


def test_every_panel_label_exists_in_both_languages() -> None:
    zh, en = panel_catalog("zh"), panel_catalog("en")
    assert zh.keys() == en.keys()
    used = set()
    for template in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z_]+)'\)", template.read_text()))
        used |= set(re.findall(r"\bt\('([a-z_]+)',", template.read_text()))
    dynamic = {f"status_{s}" for s in Status} | {f"status_{t}" for t in Target} | {f"login_{s}" for s in LoginState}
    dynamic |= {f"task_{s}" for s in TaskStatus} | {f"event_{k}" for k in EventKind}
    api_zh = catalog("zh")  # panel_text falls back to the API's messages by the same key
    missing = sorted(key for key in used | dynamic if key not in zh and key not in api_zh)
    assert not missing, missing

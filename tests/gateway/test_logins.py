"""Logins that last, on the gateway's side (the fake instance answers as the real one does): a stored session
survives passing failures, a dead import changes nothing, the previous login comes back, and a region block
takes an instance out of the pool with its reason. On each database."""

from __future__ import annotations

import json
import uuid
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import select

from gateway.app import Fleet
from gateway.db.models import Instance
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import passes_until
from tests.gateway.test_proxies import create, events, start_and_wait, view, view_until

Client = AsyncTestClient[Any]
GOOD = {"cookies": [{"name": "SID", "value": "acct-b", "domain": ".google.com", "path": "/"}], "origins": []}
DEAD = {"cookies": [{"name": "SID", "value": "dead-acct", "domain": ".google.com", "path": "/"}], "origins": []}


async def _pending(fleet: Fleet, instance_id: str) -> str | None:
    async with fleet.sessions() as session:
        return await session.scalar(select(Instance.pending_session).where(Instance.id == uuid.UUID(instance_id)))


async def test_a_stored_session_survives_passing_failures_and_a_definite_refusal_drops_it(fleet: Fleet, fake: FakeRuntime) -> None:
    created = await fleet.instances.create("waits")
    instance_id = created.instance_id
    answer = await fleet.instances.import_session(instance_id, json.dumps(GOOD).encode())
    assert answer["pending"] is True
    await fleet.instances.start(instance_id)
    await passes_until(fleet, lambda: _started(fleet, fake, instance_id))
    fake.fail_session_imports(instance_id, 503, 507, 409)  # a starting browser, a full volume, a task
    await passes_until(fleet, lambda: _logged_in(fleet, instance_id), timeout=10)
    assert await _pending(fleet, instance_id) is None
    said = [e.message for e in await fleet.instances.events(instance_id) if e.kind == "session_imported"]
    assert any("stored session imported" in m for m in said) and not any("rejected" in m for m in said), said

    await fleet.instances.stop(instance_id)
    await passes_until(fleet, lambda: _status(fleet, instance_id, "stopped"))
    await fleet.instances.import_session(instance_id, json.dumps(DEAD).encode())
    await fleet.instances.start(instance_id)
    await passes_until(fleet, lambda: _dropped(fleet, instance_id), timeout=10)
    said = [e.message for e in await fleet.instances.events(instance_id) if e.kind == "session_imported"]
    assert any("rejected" in m and "not signed in" in m for m in said), said


async def test_a_dead_import_is_refused_and_the_previous_login_can_be_restored(admin: Client, fake: FakeRuntime) -> None:
    instance_id = (await create(admin, "keeps"))["instance_id"]
    await start_and_wait(admin, instance_id)
    first = {"cookies": [{"name": "SID", "value": "acct-a", "domain": ".google.com", "path": "/"}], "origins": []}
    assert (await admin.put(f"/api/instances/{instance_id}/session", json=first)).status_code == 200
    refused = await admin.put(f"/api/instances/{instance_id}/session", json=DEAD, headers={"Accept-Language": "en"})
    assert refused.status_code == 422 and "not signed in" in refused.text, refused.text
    assert fake.volumes[instance_id]["session"] == first  # nothing replaced
    assert (await admin.put(f"/api/instances/{instance_id}/session", json=GOOD)).status_code == 200
    restored = await admin.post(f"/api/instances/{instance_id}/session/restore", headers={"Accept-Language": "en"})
    assert restored.status_code == 200 and "previous login" in restored.json()["message"], restored.text
    assert fake.volumes[instance_id]["session"] == first
    assert (await view(admin, instance_id))["login_state"] == "logged_in"


async def test_restore_without_a_previous_login_is_a_clear_422(admin: Client) -> None:
    instance_id = (await create(admin, "fresh"))["instance_id"]
    await start_and_wait(admin, instance_id)
    answer = await admin.post(f"/api/instances/{instance_id}/session/restore", headers={"Accept-Language": "en"})
    assert answer.status_code == 422 and "no previous login" in answer.text


async def test_a_region_block_takes_the_instance_out_of_the_pool_with_its_reason(admin: Client, fake: FakeRuntime) -> None:
    instance_id = (await create(admin, "far"))["instance_id"]
    assert (await start_and_wait(admin, instance_id))["available"] is True
    fake.set_out_of_region(instance_id, "AI Studio sent the page to https://ai.google.dev/gemini-api/docs/available-regions")
    shown = await view_until(admin, instance_id, "aistudio_reach", "region_blocked")
    assert shown["available"] is False and "available-regions" in shown["page_error"]
    assert shown["login_state"] == "logged_in"  # the login itself is fine
    said = [e["message"] for e in await events(admin, instance_id) if e["kind"] == "aistudio_reach_changed"]
    assert any("not served" in m for m in said), said
    page = (await admin.get(f"/instances/{instance_id}", headers={"Accept-Language": "zh"})).text
    assert 'data-login-advice="region_blocked"' in page and "代理" in page
    fake.set_reachable(instance_id)
    assert (await view_until(admin, instance_id, "aistudio_reach", "reachable"))["available"] is True


async def _started(fleet: Fleet, fake: FakeRuntime, instance_id: str) -> bool:
    return (await fleet.instances.get(instance_id)).status == "running"


async def _status(fleet: Fleet, instance_id: str, status: str) -> bool:
    return (await fleet.instances.get(instance_id)).status == status


async def _logged_in(fleet: Fleet, instance_id: str) -> bool:
    return await _pending(fleet, instance_id) is None and (await fleet.instances.get(instance_id)).login_state == "logged_in"


async def _dropped(fleet: Fleet, instance_id: str) -> bool:
    return await _pending(fleet, instance_id) is None

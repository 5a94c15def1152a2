"""The management API's side of moving in: an instance created with the old id it replaces and the session it
brings (kept in its row until it is ready), and a session imported into a stopped instance. Fake runtime,
SQLite and Postgres."""

from __future__ import annotations

import json
import time
from typing import Any

from litestar.testing import AsyncTestClient

from gateway.runtime.fake import FakeRuntime
from tests.polling import await_until

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en", "Content-Type": "application/json"}
COOKIES = [{"name": "SID", "value": "acct-old", "domain": ".google.com", "path": "/", "expires": time.time() + 86400,
            "httpOnly": True, "secure": True, "sameSite": "Lax"}]


async def wait_for(admin: Client, instance_id: str, check: Any, timeout: float = 5.0) -> dict[str, Any]:
    return await await_until(lambda: _view(admin, instance_id), until=check, timeout=timeout, what="the instance's view")


async def _view(admin: Client, instance_id: str) -> dict[str, Any]:
    return (await admin.get(f"/api/instances/{instance_id}")).json()["instance"]


async def listing(admin: Client) -> list[dict[str, Any]]:
    return (await admin.get("/api/instances")).json()["instances"]


async def test_create_with_legacy_id_and_session_delivers_it_at_the_first_start(admin: Client, fake: FakeRuntime) -> None:
    fake.default_login_state = "needs_login"
    created = await admin.post("/api/instances", json={"name": "alpha", "legacy_id": "a1b2c3d4", "session": COOKIES}, headers=EN)
    assert created.status_code == 200, created.text
    instance_id = created.json()["instance_id"]
    assert created.json()["instance"]["legacy_id"] == "a1b2c3d4"
    assert [v["legacy_id"] for v in await listing(admin)] == ["a1b2c3d4"]
    assert instance_id not in fake.volumes  # nothing reaches an instance before it runs

    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200
    view = await wait_for(admin, instance_id, lambda v: v["status"] == "running" and v["login_state"] == "logged_in")
    assert view["legacy_id"] == "a1b2c3d4"
    assert fake.volumes[instance_id]["session"]["cookies"] == COOKIES
    events = (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"]
    messages = [e["message"] for e in events if e["kind"] == "session_imported"]
    assert any("stored session imported: 1 cookies" in m for m in messages), messages
    assert "acct-old" not in json.dumps(events)  # a session is never logged

    # Delivered once: a restart keeps the session the instance saved, the row holds nothing any more.
    fake.volumes[instance_id]["session"]["cookies"] = []
    await admin.post(f"/api/instances/{instance_id}/stop")
    await wait_for(admin, instance_id, lambda v: v["status"] == "stopped")
    await admin.post(f"/api/instances/{instance_id}/start")
    await wait_for(admin, instance_id, lambda v: v["status"] == "running")
    assert fake.volumes[instance_id]["session"]["cookies"] == []


async def test_an_old_instance_is_migrated_once(admin: Client) -> None:
    first = await admin.post("/api/instances", json={"name": "alpha", "legacy_id": "a1b2c3d4"})
    assert first.status_code == 200
    again = await admin.post("/api/instances", json={"name": "alpha-2", "legacy_id": "a1b2c3d4", "session": COOKIES}, headers=EN)
    assert again.status_code == 409 and again.json()["error"] == "instance_legacy_taken"
    assert again.json()["message"] == 'Old instance "a1b2c3d4" was already migrated (instance "alpha").'
    zh = await admin.post("/api/instances", json={"name": "alpha-3", "legacy_id": "a1b2c3d4"}, headers={"Accept-Language": "zh"})
    assert zh.status_code == 409 and "已经迁移过" in zh.json()["message"]
    assert [v["name"] for v in await listing(admin)] == ["alpha"]  # nothing else was created


async def test_bad_legacy_ids_and_sessions_are_422_and_create_nothing(admin: Client) -> None:
    cases = [
        ({"name": "x", "legacy_id": "../../etc"}, "instance_legacy_id_invalid"),
        ({"name": "x", "legacy_id": ""}, "instance_legacy_id_invalid"),
        ({"name": "x", "legacy_id": "a" * 65}, "instance_legacy_id_invalid"),
        ({"name": "x", "session": [{"name": "SID", "value": "v"}]}, "session_invalid"),  # no domain
        ({"name": "x", "session": {"origins": []}}, "session_invalid"),
        ({"name": "x", "session": [{"name": "SID", "value": "v", "domain": ".google.com", "expires": "soon"}]}, "session_invalid"),
    ]
    for body, error in cases:
        answer = await admin.post("/api/instances", json=body, headers=EN)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"] == error and answer.json()["message"]
    huge = [{"name": "X", "value": "v" * (5 * 1024 * 1024), "domain": "a.b"}]
    too_large = await admin.post("/api/instances", json={"name": "x", "session": huge}, headers=EN)
    assert too_large.status_code == 413
    assert await listing(admin) == []


async def test_a_session_imported_into_a_stopped_instance_waits_for_its_start(admin: Client, fake: FakeRuntime) -> None:
    fake.default_login_state = "needs_login"
    instance_id = (await admin.post("/api/instances", json={"name": "later"})).json()["instance_id"]
    stored = await admin.put(f"/api/instances/{instance_id}/session", content=json.dumps(COOKIES), headers=EN)
    assert stored.status_code == 200, stored.text
    assert stored.json()["pending"] is True and stored.json()["cookies"] == 1
    assert stored.json()["message"].startswith('Session stored for instance "later" (1 cookies)')
    refused = await admin.put(f"/api/instances/{instance_id}/session", content=b"{broken", headers=EN)
    assert refused.status_code == 422 and refused.json()["error"] == "session_invalid"

    await admin.post(f"/api/instances/{instance_id}/start")
    await wait_for(admin, instance_id, lambda v: v["status"] == "running" and v["login_state"] == "logged_in")
    assert fake.volumes[instance_id]["session"]["cookies"] == COOKIES  # the valid one, not the refused one
    # Running now: an import goes to the instance at once, as before.
    live = await admin.put(f"/api/instances/{instance_id}/session", content=json.dumps(COOKIES), headers=EN)
    assert live.status_code == 200 and live.json()["pending"] is False

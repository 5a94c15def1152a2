"""The management API through Litestar's test client, on SQLite and Postgres, with the fake runtime.

Every rejected request is checked to leave what is stored unchanged.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.polling import await_until

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en"}


async def create(admin: Client, name: str) -> str:
    response = await admin.post("/api/instances", json={"name": name})
    assert response.status_code == 200, response.text
    return response.json()["instance_id"]


async def instance(admin: Client, instance_id: str) -> dict[str, Any]:
    response = await admin.get(f"/api/instances/{instance_id}")
    assert response.status_code == 200, response.text
    return response.json()["instance"]


async def wait_status(admin: Client, instance_id: str, status: str, timeout: float = 5.0) -> dict[str, Any]:
    return await await_until(lambda: instance(admin, instance_id), until=lambda view: view["status"] == status,
                             timeout=timeout, what=f"status {status}")


async def _engine_health(admin: Client) -> dict[str, Any]:
    return (await admin.get("/api/stats")).json()["stats"]["engine"]


async def started(admin: Client, name: str = "a") -> str:
    instance_id = await create(admin, name)
    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200
    await wait_status(admin, instance_id, "running")
    return instance_id


async def snapshot(admin: Client) -> list[dict[str, Any]]:
    """What is stored, minus what changes by itself (probes)."""
    body = (await admin.get("/api/instances")).json()
    return [{k: v for k, v in i.items() if k not in ("is_busy", "available")} for i in body["instances"]]


async def test_old_envelopes_for_create_list_get_start_stop_delete(admin: Client, fake: FakeRuntime) -> None:
    created = await admin.post("/api/instances", json={"name": "账号-1"})
    assert created.status_code == 200
    body = created.json()
    assert body["success"] is True and body["message"] == "实例“账号-1”已创建。"
    instance_id = body["instance_id"]

    listing = (await admin.get("/api/instances")).json()
    assert listing["success"] is True and listing["total_count"] == 1 and listing["concurrency_count"] == 0
    (item,) = listing["instances"]
    for key in ("instance_id", "name", "status", "created_at", "last_used", "error_message", "is_busy"):
        assert key in item
    assert item["name"] == "账号-1" and item["status"] == "stopped" and item["is_busy"] is False

    start = await admin.post(f"/api/instances/{instance_id}/start", headers=EN)
    assert start.status_code == 200 and start.json()["changed"] is True
    assert start.json()["instance"]["target"] == "running"
    view = await wait_status(admin, instance_id, "running")
    assert view["login_state"] == "logged_in" and view["available"] is True
    assert (await admin.get("/api/instances")).json()["concurrency_count"] == 1

    stop = await admin.post(f"/api/instances/{instance_id}/stop")
    assert stop.status_code == 200 and stop.json()["changed"] is True
    await wait_status(admin, instance_id, "stopped")

    deleted = await admin.delete(f"/api/instances/{instance_id}", headers=EN)
    assert deleted.status_code == 200 and deleted.json() == {
        "success": True, "instance_id": instance_id, "message": 'Instance "账号-1" deleted.'
    }
    assert (await admin.get("/api/instances")).json()["total_count"] == 0
    assert instance_id not in fake.containers and instance_id not in fake.volumes


async def test_stats_counts_the_pool(admin: Client) -> None:
    running = await started(admin, "r1")
    await started(admin, "r2")
    await create(admin, "idle")
    stats = (await admin.get("/api/stats")).json()
    assert stats["success"] is True
    s = stats["stats"]
    assert (s["total_instances"], s["running_instances"], s["available_instances"], s["concurrency_capacity"]) == (3, 2, 2, 2)
    assert s["stopped_instances"] == 1 and s["busy_instances"] == 0 and s["engine"]["name"] == "fake"
    assert running


ROUTES_WITH_ID = [
    ("GET", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/stop"), ("GET", "/events"), ("GET", "/logs"),
    ("GET", "/session"), ("PUT", "/session"),
]


@pytest.mark.parametrize("bad_id", [str(uuid.UUID(int=1)), "not-a-uuid"])
async def test_unknown_id_is_404(admin: Client, bad_id: str) -> None:
    kept = await create(admin, "kept")
    before = await snapshot(admin)
    for method, suffix in ROUTES_WITH_ID:
        response = await admin.request(method, f"/api/instances/{bad_id}{suffix}", json={}, headers=EN)
        assert response.status_code == 404, (method, suffix)
        assert response.json() == {
            "success": False, "error": "instance_not_found",
            "message": f"Instance {bad_id} does not exist.", "detail": f"Instance {bad_id} does not exist.",
        }
    assert await snapshot(admin) == before and before[0]["instance_id"] == kept


async def test_duplicate_name_is_409_and_changes_nothing(admin: Client) -> None:
    await create(admin, "dup")
    before = await snapshot(admin)
    response = await admin.post("/api/instances", json={"name": "dup"})
    assert response.status_code == 409 and response.json()["error"] == "instance_name_taken"
    assert "dup" in response.json()["message"]
    assert await snapshot(admin) == before


async def test_invalid_names_are_422_and_valid_ones_accepted(admin: Client) -> None:
    for name in ["", "   ", "a b", "x" * 65, "<script>alert(1)</script>", "a/b", "名字!", "tab\tname"]:
        response = await admin.post("/api/instances", json={"name": name})
        assert response.status_code == 422 and response.json()["error"] == "instance_name_invalid", name
        assert "1–64" in response.json()["message"]  # Chinese by default
    assert (await admin.get("/api/instances")).json()["total_count"] == 0
    for name in ["a", "x" * 64, "谷歌账号_2", "team-A_01"]:
        instance_id = await create(admin, name)
        assert (await instance(admin, instance_id))["name"] == name


async def test_malformed_body_is_400_without_a_trace(admin: Client) -> None:
    for body in [b"not json", b'{"nam": "x"}', b'{"name": 5}', b"[]", b"", b'{"name": null}']:
        response = await admin.post("/api/instances", content=body, headers={"Content-Type": "application/json", **EN})
        assert response.status_code == 400, body
        assert response.json()["error"] == "invalid_body" and "Traceback" not in response.text
    assert (await admin.get("/api/instances")).json()["total_count"] == 0


async def test_start_of_running_and_stop_of_stopped_are_idempotent(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    events_before = (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"]
    again = await admin.post(f"/api/instances/{instance_id}/start", headers=EN)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["message"] == 'Instance "a" is already running.'
    assert again.json()["instance"]["status"] == "running"
    assert (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"] == events_before
    assert fake.starts(instance_id) == 1

    stopped_id = await create(admin, "b")
    stop = await admin.post(f"/api/instances/{stopped_id}/stop")
    assert stop.status_code == 200 and stop.json()["changed"] is False
    assert stop.json()["instance"]["status"] == "stopped" and "已停止" in stop.json()["message"]


async def test_delete_of_running_is_409_and_keeps_it_running(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    before = await snapshot(admin)
    response = await admin.delete(f"/api/instances/{instance_id}", headers=EN)
    assert response.status_code == 409 and response.json()["error"] == "instance_delete_running"
    assert "stop it before deleting" in response.json()["message"]
    assert await snapshot(admin) == before
    assert fake.containers[instance_id].phase == "running"


async def test_engine_down_is_503_naming_the_engine_and_reads_keep_working(admin: Client, fake: FakeRuntime) -> None:
    stopped_id = await create(admin, "stopped-one")
    running_id = await started(admin, "running-one")
    await admin.post(f"/api/instances/{running_id}/stop")
    await wait_status(admin, running_id, "stopped")
    before = await snapshot(admin)
    fake.engine_down("connection refused on /var/run/docker.sock")

    for method, path in [("POST", f"/api/instances/{stopped_id}/start"), ("DELETE", f"/api/instances/{running_id}"),
                         ("GET", f"/api/instances/{running_id}/logs")]:
        response = await admin.request(method, path, headers=EN)
        assert response.status_code == 503, (method, path, response.text)
        assert response.json()["message"] == "The fake engine is unavailable: connection refused on /var/run/docker.sock"
    zh = await admin.post(f"/api/instances/{stopped_id}/start")
    assert zh.status_code == 503 and zh.json()["message"].startswith("运行引擎 fake 不可用")

    assert await snapshot(admin) == before  # nothing stored changed
    assert (await admin.get("/api/instances")).status_code == 200
    engine = await await_until(lambda: _engine_health(admin), until=lambda seen: seen["ok"] is False, timeout=3,
                               what="a reconcile pass to notice the outage")
    assert "docker.sock" in engine["reason"]
    assert running_id in fake.volumes  # the refused delete removed nothing


async def test_oversize_session_is_413_and_nothing_reaches_the_instance(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    small = json.dumps({"cookies": [{"name": "SID", "value": "ok"}], "origins": []}).encode()
    assert (await admin.put(f"/api/instances/{instance_id}/session", content=small)).status_code == 200
    huge = json.dumps({"cookies": [{"name": "X", "value": "v" * (5 * 1024 * 1024)}]}).encode()
    response = await admin.put(f"/api/instances/{instance_id}/session", content=huge, headers=EN)
    assert response.status_code == 413 and response.json()["error"] == "session_too_large"
    assert "the limit is 5242880 bytes" in response.json()["message"]
    assert fake.volumes[instance_id]["session"]["cookies"] == [{"name": "SID", "value": "ok"}]


async def test_session_import_and_export_pass_through_to_the_instance(admin: Client, fake: FakeRuntime) -> None:
    fake.default_login_state = "needs_login"
    instance_id = await started(admin)
    cookies = [{"name": "SID", "value": "secret-sid-value", "domain": ".google.com"}]
    imported = await admin.put(f"/api/instances/{instance_id}/session", content=json.dumps(cookies), headers=EN)
    assert imported.status_code == 200, imported.text
    assert imported.json()["cookies"] == 1 and imported.json()["login_state"] == "logged_in"
    exported = await admin.get(f"/api/instances/{instance_id}/session")
    assert exported.status_code == 200 and exported.json()["cookies"] == cookies
    assert exported.headers["cache-control"] == "no-store"
    events = (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"]
    assert "session_imported" in [e["kind"] for e in events] and "secret-sid-value" not in json.dumps(events)  # never logged

    unreadable = await admin.put(f"/api/instances/{instance_id}/session", content=b"{broken", headers=EN)
    assert unreadable.status_code == 422 and unreadable.json()["error"] == "session_invalid"
    assert fake.volumes[instance_id]["session"]["cookies"] == cookies


async def test_session_of_a_stopped_instance_cannot_be_exported(admin: Client) -> None:
    instance_id = await create(admin, "off")
    response = await admin.get(f"/api/instances/{instance_id}/session")
    assert response.status_code == 409 and response.json()["error"] == "instance_not_running"
    # An import into it is kept until it runs (tests/legacy/test_api.py).


async def test_events_tell_what_happened(admin: Client) -> None:
    instance_id = await started(admin)
    events = (await admin.get(f"/api/instances/{instance_id}/events?limit=10")).json()
    assert events["success"] is True
    assert [e["kind"] for e in reversed(events["events"])] == ["created", "start_requested", "started", "ready"]
    assert (await admin.get(f"/api/instances/{instance_id}/events?limit=0")).status_code == 400


async def test_logs_tail_and_follow_as_server_sent_events(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    for n in range(5):
        fake.containers[instance_id].log(f"line {n}")
    tail = (await admin.get(f"/api/instances/{instance_id}/logs?tail=2")).json()
    assert tail["lines"] == ["line 3", "line 4"]
    assert (await admin.get(f"/api/instances/{instance_id}/logs?tail=abc")).status_code == 400

    # Litestar's test client runs the app on a loop in another thread and returns a response only when its
    # body is complete, so what happens during the stream is done from a timer, on the app's loop.
    async def while_streaming() -> None:
        try:
            await await_until(lambda: fake.containers[instance_id].followers, timeout=5,
                              what="the stream to send its tail and wait for more", pause=0.01)
            fake.containers[instance_id].log("live line")
        finally:
            fake.kill(instance_id)  # the stream ends when the container does (a failed wait must not hang it)

    timer = threading.Timer(0.05, admin.blocking_portal.call, args=(while_streaming,))
    timer.start()
    try:
        response = await admin.get(f"/api/instances/{instance_id}/logs?follow=1&tail=1", timeout=5)
    finally:
        timer.join()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.replace("\r\n", "\n").split("\n\n") if block.strip()]
    parsed = [dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in b.split("\n")) for b in events]
    assert [(e.get("event"), e.get("data")) for e in parsed] == [
        ("log", "line 4"), ("log", "live line"), ("log", "killed, exit code 137"), ("end", ""),
    ]


async def test_unknown_route_and_method_are_localized(admin: Client) -> None:
    missing = await admin.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["message"] == "没有这个地址：/api/nothing"
    wrong = await admin.put("/api/stats", headers=EN)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


class ExplodingRuntime(FakeRuntime):
    """An engine with a bug: inspect raises something nobody expects."""

    async def inspect(self, instance_id: str):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("secret internal detail")


async def test_unexpected_error_is_a_generic_500_without_a_trace(sqlite_url: str, tmp_path: Path) -> None:
    app = create_admin_app(make_settings(sqlite_url, tmp_path), runtime=ExplodingRuntime())
    async with AsyncTestClient(app) as admin:
        instance_id = await create(admin, "x")
        response = await admin.post(f"/api/instances/{instance_id}/start", headers=EN)
        assert response.status_code == 500 and response.json()["error"] == "internal_error"
        assert "secret" not in response.text and "Traceback" not in response.text


async def test_api_listener_health_has_the_old_shape(api: Client) -> None:
    body = (await api.get("/health")).json()
    assert body["status"] == "healthy"
    assert body["browser_instances"] == {"total": 0, "running": 0, "available": 0, "busy": 0}
    assert body["concurrency_capacity"] == 0 and body["active_tasks"] == 0 and body["database"] == "ok"
    assert (await api.get("/api/instances")).status_code == 404  # management stays on the admin listener

"""The fleet-wide selectors override through the management API, with the fake runtime, on SQLite and Postgres:
stored once, pushed to every running instance, delivered to one that starts later, refused with the reason
(and nothing changed) when it is not a valid override; and the page check relayed from an instance."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import Fleet, create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY, make_settings
from tests.gateway.pool import serve
from tests.gateway.test_management_api import create, started
from tests.polling import await_until

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en"}
OVERRIDE = {"version": "fix-1", "roles": {"run_button": ["ms-run-button button.renamed"], "prompt_textarea": ["textarea"]}}


async def put(admin: Client, document: Any, **headers: str) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return await admin.put("/api/selectors", content=body, headers={"Content-Type": "application/json", **EN, **headers})


async def selectors_events(admin: Client, instance_id: str) -> list[str]:
    events = (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"]
    return [e["message"] for e in events if e["kind"] == "selectors_changed"]


async def test_pushed_to_every_running_instance_and_to_one_started_later(admin: Client, fake: FakeRuntime) -> None:
    first, second = await started(admin, "a"), await started(admin, "b")
    stopped = await create(admin, "later")

    answer = await put(admin, OVERRIDE)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["success"], body["pushed"], body["failed"]) == (True, 2, 0)
    assert {(r["name"], r["ok"], r["version"]) for r in body["results"]} == {("a", True, "fix-1"), ("b", True, "fix-1")}
    assert body["message"] == "Selectors override saved and pushed to 2 of 2 running instance(s)."
    assert fake.volumes[first]["selectors"] == OVERRIDE and fake.volumes[second]["selectors"] == OVERRIDE
    stored = (await admin.get("/api/selectors")).json()
    assert stored["override"] == OVERRIDE and stored["updated_at"] is not None and "run_button" in stored["known_roles"]
    # One event per instance: pushed to the running ones, due at the next start for the stopped one.
    assert (await selectors_events(admin, first)) == ["selectors override set (version fix-1); pushed (version fix-1)"]
    assert (await selectors_events(admin, stopped)) == ["selectors override set (version fix-1); delivered at its next start"]

    assert (await admin.post(f"/api/instances/{stopped}/start")).status_code == 200

    async def delivered() -> bool:
        return fake.volumes.get(stopped, {}).get("selectors") == OVERRIDE

    await await_until(delivered, timeout=5, what="the override delivered at start")
    await await_until(lambda: _has_event(admin, stopped, "delivered at start (version fix-1)"), timeout=5,
                      what="the delivery's event")

    removed = await admin.delete("/api/selectors", headers=EN)
    assert removed.status_code == 200 and removed.json()["removed"] is True and removed.json()["pushed"] == 3
    assert all("selectors" not in fake.volumes[i] for i in (first, second, stopped))
    assert (await admin.get("/api/selectors")).json()["override"] is None
    assert (await selectors_events(admin, first))[0] == "selectors override removed; pushed (version packaged)"


async def _has_event(admin: Client, instance_id: str, text: str) -> bool:
    return any(text in message for message in await selectors_events(admin, instance_id))


async def test_an_instance_that_kept_an_old_override_loses_it_when_it_starts(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await create(admin, "stale")
    fake.volumes[instance_id] = {"selectors": {"roles": {"run_button": ["old"]}}}  # left from before a reset
    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200

    async def cleared() -> bool:
        return "selectors" not in fake.volumes[instance_id]

    await await_until(cleared, timeout=5, what="the old override removed")
    await await_until(lambda: _has_event(admin, instance_id, "removed at start"), timeout=5, what="the removal's event")


async def test_a_failed_push_is_reported_for_that_instance_only(admin: Client, fake: FakeRuntime) -> None:
    good, bad = await started(admin, "good"), await started(admin, "bad")
    fake.refuse_selectors(bad)
    body = (await put(admin, OVERRIDE)).json()
    assert (body["pushed"], body["failed"]) == (1, 1)
    failed = next(r for r in body["results"] if not r["ok"])
    assert failed["name"] == "bad" and "injected selectors failure" in failed["error"]
    assert "Not reached: bad: HTTP 500: injected selectors failure" in body["message"]
    assert fake.volumes[good]["selectors"] == OVERRIDE and "selectors" not in fake.volumes.get(bad, {})
    assert (await selectors_events(admin, bad))[0].startswith("selectors override set (version fix-1); push failed: HTTP 500")


async def test_a_delivery_at_start_never_undoes_a_change_made_meanwhile(admin: Client, fake: FakeRuntime) -> None:
    fake.selectors_removal_delay = 0.5  # the delivery at start ("no override": remove any) is still on its way
    instance_id = await create(admin, "racing")
    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200
    await await_until(lambda: fake.selectors_removals["begun"], timeout=5, what="the delivery at start to begin")
    assert (await put(admin, OVERRIDE)).status_code == 200
    await await_until(lambda: fake.selectors_removals["done"], timeout=5, what="the delivery at start to end")
    assert fake.volumes[instance_id].get("selectors") == OVERRIDE


@contextlib.asynccontextmanager
async def admin_replica(database_url: str, data_dir: Path, fake: FakeRuntime) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway of its own (a replica) on the shared database and the shared (fake) instances, served over HTTP."""
    settings = make_settings(database_url, data_dir, secret_key="shared-secret-key-of-the-replicas-0123456789",
                             encryption_key=REPLICA_ENCRYPTION_KEY)
    fleet = await Fleet.open(settings, runtime=fake)
    try:
        async with serve(create_admin_app(settings, fleet=fleet)) as base, httpx.AsyncClient(base_url=base, timeout=60) as http:
            yield http
    finally:
        await fleet.close()


async def test_an_older_push_crossing_a_newer_one_from_another_replica_leaves_the_newer(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    newer = {"version": "newer", "roles": {"run_button": ["button.newer"]}}
    async with admin_replica(database_url, tmp_path / "a", fake) as first, admin_replica(database_url, tmp_path / "b", fake) as other:
        instance_id = await started(first, "shared")  # type: ignore[arg-type]
        fake.held_selectors_puts = {1}  # the first replica's push is on its way while the other replica changes it
        older_push = asyncio.ensure_future(put(first, {"version": "older", "roles": {"run_button": ["button.older"]}}))
        await await_until(lambda: fake.selectors_puts == 1, timeout=10, what="the first replica's push under way")
        answer = await put(other, newer)
        assert answer.status_code == 200 and answer.json()["results"][0]["revision"] == 2
        fake.held_selectors_puts.clear()
        late = await older_push
        assert late.status_code == 200, late.text
        result = late.json()["results"][0]
        assert (result["ok"], result["stale"], result["revision"], result["version"]) == (True, True, 2, "newer")
        assert fake.volumes[instance_id]["selectors"] == newer
        stored = (await first.get("/api/selectors")).json()
        assert (stored["override"], stored["revision"]) == (newer, 2)
        assert "not applied: the instance has a newer change (revision 2)" in " ".join(await selectors_events(first, instance_id))
        # A removal is a change too, with the next revision.
        assert (await first.delete("/api/selectors")).json()["results"][0]["revision"] == 3
        assert "selectors" not in fake.volumes[instance_id] and fake.volumes[instance_id]["selectors_revision"] == 3


BAD = [
    pytest.param(b"{roles:", 400, "The selectors override is not valid JSON", id="not-json"),
    pytest.param(b"[]", 422, "must be a JSON object", id="not-an-object"),
    pytest.param({"roles": {"run_buton": ["button"]}}, 422, 'Unknown role "run_buton"', id="unknown-role"),
    pytest.param({"roles": {"run_button": []}}, 422, "roles.run_button must be a non-empty list", id="empty-list"),
    pytest.param({"roles": {"run_button": [""]}}, 422, "roles.run_button[0] must be a non-empty string", id="empty-string"),
    pytest.param({"run_button": ["button"]}, 422, "Unknown key(s) in the selectors override: run_button", id="role-at-top"),
    pytest.param({"roles": {}}, 422, "changes nothing", id="nothing"),
    pytest.param({"roles": ["run_button"]}, 422, '"roles" must be an object', id="roles-not-object"),
]


@pytest.mark.parametrize(("document", "status", "message"), BAD)
async def test_a_bad_override_is_refused_and_nothing_changes(admin: Client, fake: FakeRuntime, document: Any, status: int, message: str) -> None:
    instance_id = await started(admin, "a")
    assert (await put(admin, OVERRIDE)).status_code == 200
    before = (await admin.get("/api/selectors")).json()
    events_before = await selectors_events(admin, instance_id)

    answer = await put(admin, document)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["message"] and answer.json()["success"] is False
    assert (await admin.get("/api/selectors")).json() == before
    assert fake.volumes[instance_id]["selectors"] == OVERRIDE
    assert await selectors_events(admin, instance_id) == events_before


async def test_the_refusal_reads_in_chinese_by_default(admin: Client) -> None:
    answer = await admin.put("/api/selectors", content=b'{"roles": {"run_button": []}}')
    assert answer.status_code == 422 and answer.json()["message"] == "roles.run_button 必须是非空的选择器列表。"


async def test_the_api_needs_the_admin_token(database_url: str, tmp_path, fake: FakeRuntime) -> None:
    app = create_admin_app(make_settings(database_url, tmp_path, admin_token="s3cret-token-0123456789"), runtime=fake)
    async with AsyncTestClient(app) as client:
        assert (await client.get("/api/selectors")).status_code == 401
        assert (await client.put("/api/selectors", content=json.dumps(OVERRIDE))).status_code == 401
        authorized = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert (await client.get("/api/selectors", headers=authorized)).json()["override"] is None


async def test_diagnose_is_relayed_from_a_running_instance_only(admin: Client) -> None:
    running = await started(admin, "up")
    report = await admin.get(f"/api/instances/{running}/diagnose")
    assert report.status_code == 200 and report.json()["report"]["roles"][0]["role"] == "prompt_textarea"
    stopped = await create(admin, "down")
    refused = await admin.get(f"/api/instances/{stopped}/diagnose", headers=EN)
    assert refused.status_code == 409 and refused.json()["message"] == 'Instance "down" is not running (status stopped); start it first.'

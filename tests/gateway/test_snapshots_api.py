"""An instance's page snapshots through the management API, with the fake runtime, on SQLite and Postgres: listed,
taken on request, downloaded as a zip whose headers are the gateway's own; unknown ids are 404 naming them, a
snapshot id of another shape is 422 before anything reaches the instance."""

from __future__ import annotations

import io
import uuid
import zipfile
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.runtime.fake import FakeRuntime
from tests.gateway.test_management_api import create, started

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh-CN"}


def snapshot_paths(fake: FakeRuntime) -> list[str]:
    """Every path the fake instances were asked under /snapshots (wraps the fake's transport from now on)."""
    seen: list[str] = []
    handler = fake.http_transport.handler

    async def recording(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/snapshots"):
            seen.append(request.url.path)
        return await handler(request)

    fake.http_transport.handler = recording
    return seen


async def test_listed_taken_and_downloaded_as_a_zip(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin, "snap")
    kept = fake.fake_snapshot(instance_id, task_id="task-1")
    listing = await admin.get(f"/api/instances/{instance_id}/snapshots")
    assert listing.status_code == 200, listing.text
    [only] = listing.json()["snapshots"]
    assert (only["id"], only["reason"], only["task_id"]) == (kept.id, "ui_changed", "task-1")
    assert set(only["files"]) == {"page.html", "screenshot.png", "pagecheck.json", "meta.json"}

    taken = await admin.post(f"/api/instances/{instance_id}/snapshots", json={"reason": "canary"}, headers=EN)
    assert taken.status_code == 201, taken.text
    body = taken.json()
    assert body["snapshot"]["reason"] == "canary" and body["message"] == f'Page snapshot {body["snapshot"]["id"]} taken on "snap".'
    zh = await admin.post(f"/api/instances/{instance_id}/snapshots", headers=ZH)
    assert zh.status_code == 201 and zh.json()["snapshot"]["reason"] == "manual" and "页面快照" in zh.json()["message"]
    assert len((await admin.get(f"/api/instances/{instance_id}/snapshots")).json()["snapshots"]) == 3

    fake.fake_snapshot_media_type = "text/html"  # the instance's own media type is never passed on
    download = await admin.get(f"/api/instances/{instance_id}/snapshots/{kept.id}")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"] == f'attachment; filename="snapshot-{kept.id}.zip"'
    assert download.headers["x-content-type-options"] == "nosniff"
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert sorted(names) == sorted(f"{kept.id}/{name}" for name in only["files"])


async def test_a_ui_changed_failure_leaves_a_snapshot_on_the_fake_instance(admin: Client, fake: FakeRuntime) -> None:
    from gateway.runtime.fake import FakeOutcome

    instance_id = await started(admin, "fails")
    fake.script_generations(instance_id, FakeOutcome.error("ui_changed", retry_safe=False))
    container = fake.containers[instance_id]
    answer = await fake.http_transport.handle_async_request(httpx.Request(
        "POST", f"{container.endpoint}/generate", json={"prompt": "x", "task_id": "t-ui"},
        headers={"Authorization": f"Bearer {container.token}"},
    ))
    assert answer.status_code == 200
    [snap] = (await admin.get(f"/api/instances/{instance_id}/snapshots")).json()["snapshots"]
    assert (snap["reason"], snap["task_id"]) == ("ui_changed", "t-ui")


@pytest.mark.parametrize("bad_id", ["..%2F..%2Fsession", "storage_state.json", "20261128-070000-123-UI", "x" * 300])
async def test_a_snapshot_id_of_another_shape_is_422_and_never_sent(admin: Client, fake: FakeRuntime, bad_id: str) -> None:
    instance_id = await started(admin, "shape")
    sent = snapshot_paths(fake)
    answer = await admin.get(f"/api/instances/{instance_id}/snapshots/{bad_id}", headers=EN)
    assert answer.status_code in (404, 422), answer.text  # an encoded slash may stop at the router (404)
    if answer.status_code == 422:
        assert answer.json()["error"] == "snapshot_id_invalid" and "is not a page snapshot id" in answer.json()["message"]
    assert sent == []
    zh = await admin.get(f"/api/instances/{instance_id}/snapshots/not-an-id", headers=ZH)
    assert zh.status_code == 422 and "不是页面快照编号" in zh.json()["message"]


async def test_unknown_ids_are_404_naming_them(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin, "known")
    missing = "20000101-000000-000-manual"
    answer = await admin.get(f"/api/instances/{instance_id}/snapshots/{missing}", headers=EN)
    assert answer.status_code == 404 and answer.json()["message"] == f'Instance "known" has no page snapshot {missing}.'
    nobody = str(uuid.UUID(int=7))
    for method, suffix in (("GET", ""), ("POST", ""), ("GET", f"/{missing}")):
        response = await admin.request(method, f"/api/instances/{nobody}/snapshots{suffix}", headers=EN)
        assert response.status_code == 404 and nobody in response.json()["message"], (method, suffix)


async def test_bad_reasons_are_422_and_a_stopped_instance_is_409(admin: Client) -> None:
    instance_id = await started(admin, "reasons")
    for body in (b'{"reason": "../x"}', b'{"reason": 5}', b"not json", b'{"other": 1}'):
        answer = await admin.post(f"/api/instances/{instance_id}/snapshots", content=body,
                                  headers={**EN, "Content-Type": "application/json"})
        assert answer.status_code == 422 and answer.json()["error"] == "snapshot_reason_invalid", body
    stopped = await create(admin, "off")
    answer = await admin.get(f"/api/instances/{stopped}/snapshots", headers=EN)
    assert answer.status_code == 409 and "is not running" in answer.json()["message"]

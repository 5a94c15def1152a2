"""The panel's page snapshots, in process (fake runtime), behind the admin token: the section on the instance
page in zh and en, the list with its download links, the button that takes one, a stopped instance saying why
inside the section, and a failed ui_changed task linking to its instance's snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.panel.rendering import render_fragment
from gateway.runtime.fake import FakeRuntime
from tests.panel.test_access import signed_in
from tests.panel.test_selectors_panel import running_instance

HTMX_EN = {"HX-Request": "true", "Accept-Language": "en"}
HTMX_ZH = {"HX-Request": "true", "Accept-Language": "zh-CN"}


def fake_of(app: Litestar) -> FakeRuntime:
    return app.state.fleet.runtime


async def test_the_section_lists_snapshots_with_download_links_in_zh_and_en(
    guarded: AsyncTestClient[Any], guarded_app: Litestar
) -> None:
    csrf = await signed_in(guarded)
    instance_id = await running_instance(guarded, csrf, "snaps")
    kept = fake_of(guarded_app).fake_snapshot(instance_id, task_id="task-12345678")

    en_page = await guarded.get(f"/instances/{instance_id}", headers={"Accept-Language": "en"})
    assert "Page snapshots" in en_page.text and 'data-action="take-snapshot"' in en_page.text
    assert f'hx-get="/instances/{instance_id}/snapshots"' in en_page.text
    zh_page = await guarded.get(f"/instances/{instance_id}", headers={"Accept-Language": "zh-CN"})
    assert "页面快照" in zh_page.text and "立即拍一张快照" in zh_page.text

    en = await guarded.get(f"/instances/{instance_id}/snapshots", headers=HTMX_EN)
    assert en.status_code == 200 and "<html" not in en.text
    assert f'data-snapshot-id="{kept.id}"' in en.text and "Page changed (ui_changed)" in en.text and "task-123" in en.text
    assert f'href="/api/instances/{instance_id}/snapshots/{kept.id}"' in en.text and "Download (.zip)" in en.text
    zh = await guarded.get(f"/instances/{instance_id}/snapshots", headers=HTMX_ZH)
    assert "页面已变化（ui_changed）" in zh.text and "下载（.zip）" in zh.text

    download = await guarded.get(f"/api/instances/{instance_id}/snapshots/{kept.id}")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"].startswith("attachment;")


async def test_the_button_takes_one_and_shows_the_new_list(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    instance_id = await running_instance(guarded, csrf, "button")
    empty = await guarded.get(f"/instances/{instance_id}/snapshots", headers=HTMX_EN)
    assert "No page snapshots on this instance." in empty.text
    taken = await guarded.post(f"/instances/{instance_id}/snapshots", headers={**HTMX_ZH, "X-CSRFToken": csrf})
    assert taken.status_code == 200 and "已在“button”上拍下页面快照" in taken.text and "手动拍摄" in taken.text
    assert (await guarded.post(f"/instances/{instance_id}/snapshots", headers=HTMX_EN)).status_code == 403  # no CSRF token


async def test_a_stopped_instance_says_why_inside_the_section(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    assert (await guarded.post("/instances", data={"name": "off"}, headers={**HTMX_EN, "X-CSRFToken": csrf})).status_code == 200
    instance_id = (await guarded.get("/api/instances")).json()["instances"][0]["instance_id"]
    answer = await guarded.get(f"/instances/{instance_id}/snapshots", headers=HTMX_EN)
    assert answer.status_code == 200 and "data-snapshots-error" in answer.text and "is not running" in answer.text


async def test_a_failed_ui_changed_task_links_to_its_instances_snapshots(guarded: AsyncTestClient[Any], guarded_app: Litestar) -> None:
    csrf = await signed_in(guarded)
    instance_id = await running_instance(guarded, csrf, "history")
    page = await guarded.get("/tasks", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    # The history's rows for a failed ui_changed task and for a success, rendered from the page's own template.
    engine = guarded_app.template_engine
    task = {"task_id": "t1", "status": "failed", "error_code": "ui_changed", "error_message": "no selector", "instance_id": instance_id,
            "instance_name": "history", "created_at": datetime.now(UTC), "prompt": "p", "aspect_ratio": "1:1",
            "wait_ms": 1, "run_ms": 1, "total_ms": 2, "attempts": 1}
    for lang, label in (("en", "page snapshots"), ("zh", "页面快照")):
        html = render_fragment(engine, "tasks.html", "tasks", {"tasks": [task], "self_url": "/tasks", "lang": lang})
        assert f'href="/instances/{instance_id}#snapshots" data-snapshots-link>{label}</a>' in html
    task_ok = {**task, "status": "succeeded", "error_code": None}
    html = render_fragment(engine, "tasks.html", "tasks", {"tasks": [task_ok], "self_url": "/tasks", "lang": "en"})
    assert "data-snapshots-link" not in html

"""The panel's page check and selectors override page, in process (fake runtime), behind the admin token:
the same services as the API, CSRF-checked, refusals shown beside the textarea with nothing stored."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import AsyncTestClient

from tests.panel.test_access import signed_in
from tests.polling import await_until

HTMX = {"HX-Request": "true", "Accept-Language": "en"}


async def running_instance(client: AsyncTestClient[Any], csrf: str, name: str) -> str:
    headers = {**HTMX, "X-CSRFToken": csrf}
    assert (await client.post("/instances", data={"name": name}, headers=headers)).status_code == 200
    listing = (await client.get("/api/instances")).json()["instances"]
    instance_id = next(i["instance_id"] for i in listing if i["name"] == name)
    assert (await client.post(f"/instances/{instance_id}/start", headers=headers)).status_code == 200
    await await_until(lambda: client.get(f"/api/instances/{instance_id}"),
                      until=lambda r: r.json()["instance"]["status"] == "running", timeout=5, what="the instance running")
    return instance_id


async def test_the_page_check_button_loads_the_report(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    instance_id = await running_instance(guarded, csrf, "pc")
    page = await guarded.get(f"/instances/{instance_id}")
    assert f'hx-get="/instances/{instance_id}/pagecheck"' in page.text and 'data-action="pagecheck"' in page.text
    fragment = await guarded.get(f"/instances/{instance_id}/pagecheck", headers=HTMX)
    assert fragment.status_code == 200
    assert 'data-role="prompt_textarea" class="found"' in fragment.text and "<html" not in fragment.text


async def test_the_page_check_of_a_stopped_instance_says_why_in_the_message_area(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    assert (await guarded.post("/instances", data={"name": "off"}, headers={**HTMX, "X-CSRFToken": csrf})).status_code == 200
    instance_id = (await guarded.get("/api/instances")).json()["instances"][0]["instance_id"]
    answer = await guarded.get(f"/instances/{instance_id}/pagecheck", headers=HTMX)
    assert answer.status_code == 409 and answer.headers["hx-retarget"] == "#flash" and "is not running" in answer.text


async def test_the_override_is_saved_pushed_and_reset_from_the_panel(guarded: AsyncTestClient[Any]) -> None:
    csrf = await signed_in(guarded)
    instance_id = await running_instance(guarded, csrf, "target")
    page = await guarded.get("/selectors")
    assert page.status_code == 200 and "data-selectors-document" in page.text and "prompt_textarea" in page.text

    document = json.dumps({"roles": {"run_button": ["button.new-run"]}})
    saved = await guarded.post("/selectors", data={"document": document}, headers={**HTMX, "X-CSRFToken": csrf})
    assert saved.status_code == 200 and "pushed to 1 of 1" in saved.text
    assert f'data-instance-id="{instance_id}" data-ok="true"' in saved.text
    assert (await guarded.get("/api/selectors")).json()["override"] == {"roles": {"run_button": ["button.new-run"]}}

    refused = await guarded.post("/selectors", data={"document": '{"roles": {"run_button": []}}'}, headers={**HTMX, "X-CSRFToken": csrf})
    assert refused.status_code == 422 and "data-selectors-error" in refused.text and "non-empty list" in refused.text
    assert (await guarded.get("/api/selectors")).json()["override"] == {"roles": {"run_button": ["button.new-run"]}}

    reset = await guarded.post("/selectors/reset", headers={**HTMX, "X-CSRFToken": csrf})
    assert reset.status_code == 200 and "back on the packaged selectors" in reset.text
    assert (await guarded.get("/api/selectors")).json()["override"] is None


async def test_a_save_without_the_csrf_token_changes_nothing(guarded: AsyncTestClient[Any]) -> None:
    await signed_in(guarded)
    answer = await guarded.post("/selectors", data={"document": '{"roles": {"run_button": ["x"]}}'}, headers=HTMX)
    assert answer.status_code == 403
    assert (await guarded.get("/api/selectors")).json()["override"] is None

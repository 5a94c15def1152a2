"""The panel's playground: in process on the fake runtime (the form, its refusals, the card, the image and the
gallery), and in a real Chromium against a real gateway, real instances and the simulator (an image made,
shown, downloadable; Chinese and English; a phone screen)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.runtime.fake import TINY_PNG
from tests.instance.harness import png_bytes, signed_in_state
from tests.panel.conftest import csrf_token, save_screenshot
from tests.panel.harness import Gateway, login
from tests.polling import await_until
from tests.simulator.fixtures import control

HTMX = {"HX-Request": "true"}


async def running_instance(panel: AsyncTestClient[Any], name: str) -> str:
    instance_id = (await panel.post("/api/instances", json={"name": name})).json()["instance_id"]
    await panel.post(f"/api/instances/{instance_id}/start")
    await await_until(lambda: panel.get(f"/api/instances/{instance_id}"),
                      until=lambda r: r.json()["instance"]["status"] == "running", timeout=10, what="the instance running")
    return instance_id


async def test_the_playground_makes_an_image_and_shows_it_with_its_account(panel: AsyncTestClient[Any]) -> None:
    await running_instance(panel, "试用-1")
    page = await panel.get("/playground")
    assert page.status_code == 200 and 'data-nav="playground"' in page.text and "提示词" in page.text
    assert '<option value="gemini-nano-banana-2.1" selected>' in page.text  # today's default model first
    headers = {**HTMX, "X-CSRFToken": csrf_token(page.text)}
    made = await panel.post("/playground/generate", headers=headers, data={
        "prompt": "一座灯塔，黄昏", "model": "gemini-3-pro-image", "aspect_ratio": "16:9", "image_size": "2K", "count": "2",
    }, files={"references": ("cat.png", TINY_PNG, "image/png")})
    assert made.status_code == 201, made.text
    task_ids = re.findall(r'data-task-id="([0-9a-f-]+)"', made.text)
    assert len(task_ids) == 2 and "hx-trigger=\"every 1s\"" in made.text

    async def card() -> str:
        return (await panel.get(f"/playground/tasks/{task_ids[0]}", headers=HTMX)).text

    done = await await_until(card, until=lambda text: 'data-status="succeeded"' in text, timeout=10, what="the task done")
    assert "试用-1" in done and "every 1s" not in done and "一座灯塔，黄昏" in done
    assert "gemini-3-pro-image" in done and "16:9" in done and "2K" in done
    image = await panel.get(f"/playground/tasks/{task_ids[0]}/images/0")
    assert image.status_code == 200 and image.content == TINY_PNG and image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    download = await panel.get(f"/playground/tasks/{task_ids[0]}/images/0?download=true")
    assert download.headers["content-disposition"] == f'attachment; filename="{task_ids[0]}-1.png"'
    assert (await panel.get(f"/playground/tasks/{task_ids[0]}/images/1")).status_code == 404
    # The gallery lists what is kept, with the same card.
    later = await panel.get("/playground")
    assert f'data-task-id="{task_ids[0]}"' in later.text.split("data-gallery", 1)[1]
    english = await panel.get("/playground", headers={"Accept-Language": "en"}, cookies={"fleet_lang": "en"})
    assert "Prompt" in english.text and "Recent results" in english.text


@pytest.mark.parametrize(("fields", "files", "status", "words"), [
    ({"prompt": "", "model": ""}, None, 422, "prompt"),
    ({"prompt": "x", "model": "no-such-model"}, None, 422, "no-such-model"),
    ({"prompt": "x", "model": "gemini-3.1-flash-image"}, None, 422, "gemini-nano-banana-2.1"),
    ({"prompt": "x", "aspect_ratio": "5:1"}, None, 422, "5:1"),
    ({"prompt": "x", "count": "99"}, None, 422, "99"),
    ({"prompt": "x"}, [("references", ("a.txt", b"not an image", "text/plain"))], 422, "1"),
    ({"prompt": "x"}, [("references", (f"{n}.png", TINY_PNG, "image/png")) for n in range(5)], 422, "4"),
])
async def test_a_refused_form_says_why_and_runs_nothing(panel: AsyncTestClient[Any], fields: dict[str, str],
                                                        files: Any, status: int, words: str) -> None:
    page = await panel.get("/playground")
    headers = {**HTMX, "X-CSRFToken": csrf_token(page.text), "Accept-Language": "en"}
    refused = await panel.post("/playground/generate", headers=headers, data=fields, files=files or {})
    assert refused.status_code == status and 'class="flash error"' in refused.text and words in refused.text, refused.text
    assert "Traceback" not in refused.text
    assert (await panel.get("/api/tasks")).json()["tasks"] == []


async def test_the_model_picks_its_own_choices_and_unknown_tasks_are_404(panel: AsyncTestClient[Any]) -> None:
    flash = await panel.get("/playground/options?model=gemini-2.5-flash-image", headers=HTMX)
    assert flash.status_code == 200 and "data-size" not in flash.text and 'value="21:9"' in flash.text
    pro = await panel.get("/playground/options?model=gemini-3-pro-image", headers=HTMX)
    assert 'value="4K"' in pro.text
    assert (await panel.get("/playground/tasks/not-a-task", headers=HTMX)).status_code == 404
    assert (await panel.get("/playground/tasks/00000000-0000-0000-0000-000000000000/images/0")).status_code == 404


# In a real browser ----------------------------------------------------------------------------------------


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.mark.browser
def test_the_playground_in_chromium_makes_an_image_from_a_dropped_reference(
    page: Any, browser: Any, gateway: Gateway, simulator_server: str, tmp_path: Path,
) -> None:
    control(simulator_server, "/_sim/reset", {})
    instance_id = gateway.create_running("playground-1")
    state = signed_in_state(simulator_server, "acct-playground")
    assert gateway.api.put(f"/api/instances/{instance_id}/session", content=json.dumps(state)).status_code == 200
    gateway.wait_instance(instance_id, lambda v: v["login_state"] == "logged_in", what="signed in")
    try:
        login(page, gateway.admin_url, gateway.token)
        page.click("[data-nav=playground]")
        page.fill("[data-prompt]", "一只戴帽子的猫")
        page.select_option("[data-model]", "gemini-3-pro-image")
        expect(page.locator("[data-size]")).to_be_visible()  # the model's own choices, swapped in by htmx
        page.select_option("[data-ratio]", "3:4")
        # Drop a file on the zone, as from a file manager.
        reference = base64.b64encode(png_bytes(16, 16)).decode()
        page.evaluate("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "cat.png", {type: "image/png"}));
            const zone = document.querySelector("[data-drop-zone]");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""", reference)
        expect(page.locator("[data-reference-names]")).to_have_text("cat.png")
        page.click("[data-action=playground-generate]")
        card = page.locator("#playground-results .pg-card").first
        expect(card).to_have_attribute("data-status", "succeeded", timeout=90_000)
        image = card.locator("img[data-result-image]")
        expect(image).to_be_visible()
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        expect(card.locator("[data-account]")).to_have_text("playground-1")
        assert card.locator("a[data-download]").get_attribute("download") is not None
        (generation,) = control(simulator_server, "/_sim/record")["generations"]
        assert generation["prompt"] == "一只戴帽子的猫" and generation["aspect_ratio"] == "3:4"
        assert generation["model"] == "gemini-3-pro-image" and len(generation["uploads"]) == 1
        save_screenshot(page, "playground")
        with page.expect_download() as download:
            card.locator("a[data-download]").click()
        assert download.value.suggested_filename.endswith("-1.png")

        page.reload()
        expect(page.locator("[data-gallery] img[data-result-image]").first).to_be_visible()
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="en-US")
        try:
            small = phone.new_page()
            login(small, gateway.admin_url, gateway.token)
            small.goto(gateway.admin_url + "/playground")
            expect(small.locator("h1")).to_have_text("Playground")
            assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            # Every tab of the menu within the screen (they wrap), none cut off at its right edge.
            assert small.evaluate("[...document.querySelectorAll('.nav a')].every(a => a.getBoundingClientRect().right <= window.innerWidth)")
            expect(small.locator("[data-gallery] img[data-result-image]").first).to_be_visible()
            save_screenshot(small, "playground-phone")
        finally:
            phone.close()
    finally:
        gateway.api.delete(f"/api/instances/{instance_id}")

"""The panel in a real Chromium, against a real gateway with real instances (local runtime) and the simulator."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.instance.harness import signed_in_state
from tests.panel.conftest import save_screenshot
from tests.panel.harness import Gateway, login, sign_in_through_the_live_view
from tests.simulator.fixtures import control, signin_field_centres

pytestmark = pytest.mark.browser
LONG = 60_000  # ms: an instance start on a busy 2-core machine


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def card(page: Any, name: str) -> Any:
    return page.locator(".card", has=page.locator(".card-name", has_text=name))


def generate(gateway: Gateway, instance_id: str, prompt: str) -> dict[str, Any]:
    """One generation through the gateway's generation API (the only instance running takes it)."""
    body = {"prompt": prompt, "aspect_ratio": "1:1"}
    answer = httpx.post(gateway.api_url + "/generate", json=body, timeout=90, trust_env=False)
    assert answer.status_code == 200, answer.text
    return answer.json()


def session_file(tmp_path: Path, simulator: str, account: str, shape: str = "storage_state") -> Path:
    state = signed_in_state(simulator, account)
    content: Any = state if shape == "storage_state" else state["cookies"]
    path = tmp_path / f"{account}.json"
    path.write_text(json.dumps(content))
    return path


def stop_and_delete_through_the_panel(page: Any, gateway: Gateway, name: str) -> None:
    page.goto(gateway.admin_url + "/")
    target = card(page, name)
    target.locator("[data-action=stop]").click()
    expect(target).to_have_attribute("data-status", "stopped", timeout=LONG)
    page.once("dialog", lambda dialog: dialog.accept())
    target.locator("[data-action=delete]").click()
    expect(target).to_have_count(0)


def test_create_start_sign_in_by_cookie_file_generate_stop_delete(page: Any, gateway: Gateway, simulator_server: str, tmp_path: Path) -> None:
    control(simulator_server, "/_sim/reset", {})
    control(simulator_server, "/_sim/config", {"latency_ms": 3000})  # long enough to see the card busy
    login(page, gateway.admin_url, gateway.token)

    page.fill("#new-name", "studio-a")
    page.click("[data-action=create]")
    expect(page.locator("#flash")).to_contain_text("studio-a")
    studio = card(page, "studio-a")
    expect(studio).to_have_attribute("data-status", "stopped")  # arrived by the live stream, no reload
    expect(page.locator("#new-name")).to_have_value("")

    studio.locator("[data-action=start]").click()
    expect(studio).to_have_attribute("data-status", "running", timeout=LONG)
    expect(studio.locator("[data-login]")).to_have_attribute("data-login", "needs_login")
    expect(page.locator("[data-figure=needs_login] .figure-value")).to_have_text("1")
    instance_id = studio.get_attribute("data-instance-id")

    # Sign it in by uploading a cookie file on its page.
    studio.locator(".card-name").click()
    page.wait_for_url(f"**/instances/{instance_id}")
    page.set_input_files("[data-session-file]", str(session_file(tmp_path, simulator_server, "acct-upload", "cookie_list")))
    page.click("[data-action=import-session]")
    expect(page.locator("#flash")).to_contain_text("studio-a")
    expect(page.locator("#summary [data-login]")).to_have_attribute("data-login", "logged_in", timeout=LONG)
    expect(page.locator("#events")).to_contain_text("session imported through the panel")

    # Generate while both pages watch: the overview's card turns busy, then idle; the logs show the task.
    overview = page.context.new_page()
    overview.goto(gateway.admin_url + "/")
    overview_card = card(overview, "studio-a")
    expect(overview_card.locator("[data-activity]")).to_have_text("空闲")
    lines_before = int(page.locator("[data-logs-lines]").get_attribute("data-lines") or 0)
    answers: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: answers.append(generate(gateway, instance_id, "a lighthouse at dusk")))
    worker.start()
    expect(overview_card.locator("[data-activity]")).to_have_text("忙碌", timeout=LONG)
    expect(page.locator("#summary [data-activity]")).to_have_text("忙碌")
    save_screenshot(overview, "overview", for_readme=True)
    worker.join(timeout=90)
    assert answers and answers[0]["success"], answers
    expect(overview_card.locator("[data-activity]")).to_have_text("空闲", timeout=LONG)
    expect(page.locator("[data-logs-lines]")).to_contain_text("ratio 1:1", timeout=LONG)
    expect(page.locator("[data-logs-lines]")).to_contain_text(": ok in ")
    assert int(page.locator("[data-logs-lines]").get_attribute("data-lines") or 0) > lines_before
    page.click("[data-shot-refresh]")
    expect(page.locator("img[data-shot]")).to_be_visible()
    save_screenshot(page, "instance", for_readme=True)
    assert control(simulator_server, "/_sim/record")["generations"][-1]["account"] == "acct-upload"
    overview.close()
    if "generated_images" in answers[0]:  # it went through the dispatcher: the task history has it
        page.goto(f"{gateway.admin_url}/tasks?instance_id={instance_id}")
        row = page.locator(f"tr[data-task-id='{answers[0]['task_id']}']")
        expect(row).to_have_attribute("data-outcome", "succeeded")
        expect(row).to_contain_text("a lighthouse at dusk")
        expect(row).to_contain_text("studio-a")
        save_screenshot(page, "tasks")

    stop_and_delete_through_the_panel(page, gateway, "studio-a")
    assert gateway.api.get(f"/api/instances/{instance_id}").status_code == 404


def test_sign_in_through_the_live_view(page: Any, browser: Any, gateway: Gateway, simulator_server: str) -> None:
    control(simulator_server, "/_sim/reset", {})
    centres = signin_field_centres(browser, simulator_server)
    instance_id = gateway.create_running("studio-live")
    login(page, gateway.admin_url, gateway.token)
    page.goto(f"{gateway.admin_url}/instances/{instance_id}")
    expect(page.locator("#summary [data-login]")).to_have_attribute("data-login", "needs_login", timeout=LONG)
    sign_in_through_the_live_view(page, gateway.admin_url, centres, "studio-live")
    expect(page.locator("#summary [data-login]")).to_have_attribute("data-login", "logged_in", timeout=LONG)
    page.wait_for_function("() => Number(document.querySelector('[data-lv=canvas]').dataset.frames) > 5")
    save_screenshot(page.locator(".liveview-panel"), "liveview", for_readme=True)
    # The simulator names the session after what reached its e-mail field: typed, then pasted.
    state = json.loads(gateway.api.get(f"/api/instances/{instance_id}/session").content)
    assert {c["name"]: c["value"] for c in state["cookies"]}["SID"] == "acct-live"
    gateway.api.post(f"/api/instances/{instance_id}/stop")


def test_copy_a_session_from_another_instance(page: Any, gateway: Gateway, simulator_server: str, tmp_path: Path) -> None:
    source = gateway.create_running("studio-source")
    target = gateway.create_running("studio-target")
    state = signed_in_state(simulator_server, "acct-copied")
    assert gateway.api.put(f"/api/instances/{source}/session", content=json.dumps(state)).status_code == 200
    login(page, gateway.admin_url, gateway.token)
    page.goto(f"{gateway.admin_url}/instances/{target}")
    page.select_option("#copy-source", source)
    page.click("[data-action=copy-session]")
    expect(page.locator("#flash")).to_contain_text("studio-source")
    expect(page.locator("#summary [data-login]")).to_have_attribute("data-login", "logged_in", timeout=LONG)
    with page.expect_download() as download:  # the panel's own link, with the session cookie
        page.click("[data-action=download-session]")
    assert download.value.suggested_filename == "studio-target-session.json"
    copied = json.loads(Path(download.value.path()).read_text())
    assert {c["name"]: c["value"] for c in copied["cookies"]}["SID"] == "acct-copied"
    for instance_id in (source, target):
        gateway.api.post(f"/api/instances/{instance_id}/stop")


def test_a_name_with_a_script_shows_as_text(page: Any, gateway: Gateway) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    login(page, gateway.admin_url, gateway.token)
    # htmx runs the scripts of what it swaps in before it fires afterSettle, so count the flash's settled swaps.
    page.evaluate("window.__flashSettled = 0;"
                  "document.getElementById('flash').addEventListener('htmx:afterSettle', () => window.__flashSettled++)")
    page.fill("#new-name", "<script>alert('x')</script>")
    page.click("[data-action=create]")
    expect(page.locator("#flash")).to_contain_text("<script>alert('x')</script>")  # the refusal names it
    assert page.locator("#flash script").count() == 0
    page.wait_for_function("() => window.__flashSettled > 0")
    assert dialogs == []


def test_the_test_proxy_button_reports_and_keeps_what_was_typed(page: Any, gateway: Gateway) -> None:
    from tests.proxies import ProxyThread

    proxy = ProxyThread("socks5", username="u", password="pw-secret").start()
    try:
        login(page, gateway.admin_url, gateway.token)
        page.fill("#new-proxy", proxy.url())
        page.click("[data-action=test-proxy]")
        flash = page.locator("#flash .flash")
        expect(flash).to_have_class("flash ok")  # the target answers or not: the proxy itself logged us in
        expect(flash).to_contain_text(f"127.0.0.1:{proxy.port}")
        assert "pw-secret" not in page.content()
        expect(page.locator("#new-proxy")).to_have_value(proxy.url())  # a test does not clear the form
        save_screenshot(page, "proxy-test-ok")
        page.fill("#new-proxy", proxy.url().replace("pw-secret", "wrong"))
        page.click("[data-action=test-proxy]")
        expect(page.locator("#flash .flash.error")).to_be_visible()
    finally:
        proxy.close()


def test_english_by_the_switch_or_the_browser_language(page: Any, browser: Any, gateway: Gateway) -> None:
    login(page, gateway.admin_url, gateway.token)
    expect(page.locator("[data-figure=total] .figure-label")).to_have_text("总实例数")
    page.click("[data-lang-switch=en]")
    expect(page.locator("[data-figure=total] .figure-label")).to_have_text("Total instances")
    expect(page.locator("[data-figure=capacity] .figure-label")).to_have_text("Concurrency capacity")
    page.reload()
    expect(page.locator(".nav")).to_contain_text("Tasks")
    english = browser.new_context(locale="en-US")
    try:
        other = english.new_page()
        other.goto(gateway.admin_url + "/login")
        expect(other.locator("h1")).to_have_text("Sign in to the admin panel")
    finally:
        english.close()


def test_a_phone_sized_screen_gets_one_column_and_no_sideways_scrolling(browser: Any, gateway: Gateway) -> None:
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, locale="zh-CN")
    try:
        page = phone.new_page()
        login(page, gateway.admin_url, gateway.token)
        for number in range(2):
            gateway.api.post("/api/instances", json={"name": f"phone-{number}"})
        page.reload()
        expect(page.locator(".card", has=page.locator(".card-name", has_text="phone-"))).to_have_count(2, timeout=10_000)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        boxes = [page.locator(".card").nth(i).bounding_box() for i in range(2)]
        assert boxes[0]["x"] == boxes[1]["x"]  # stacked, not side by side
        columns = page.evaluate("getComputedStyle(document.querySelector('.figures')).gridTemplateColumns.split(' ').length")
        assert columns == 2
        save_screenshot(page, "overview-phone")
        page.goto(gateway.admin_url + "/tasks")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        phone.close()
        for view in gateway.api.get("/api/instances").json()["instances"]:
            if view["name"].startswith("phone-"):
                gateway.api.delete(f"/api/instances/{view['instance_id']}")


CSP_PAGES = ("/", "/tasks", "/accounts", "/selectors", "/catalogue", "/canary", "/migrate", "/schema")
# Redoc's footer logo is on its CDN: the policy keeps it out on purpose (the page loads nothing from elsewhere).
KEPT_OUT = "https://cdn.redoc.ly/"


def test_the_pages_work_under_their_content_security_policy(page: Any, gateway: Gateway) -> None:
    """Every main page, the live view and an htmx form, with the console watched for anything the policy refused."""
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text and KEPT_OUT not in m.text else None)
    page.on("pageerror", lambda error: refused.append(str(error)))
    instance_id = gateway.create_running("studio-csp")
    login(page, gateway.admin_url, gateway.token)
    for path in CSP_PAGES:
        answer = page.goto(gateway.admin_url + path)
        assert answer is not None and answer.ok, path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
    expect(page.locator("h1")).to_contain_text("AI Studio Fleet management API")  # Redoc rendered the last one
    page.goto(gateway.admin_url + "/")
    page.fill("#new-name", "studio-csp-2")
    page.click("[data-action=create]")
    expect(page.locator("#flash")).to_contain_text("studio-csp-2")
    expect(page.locator("#new-name")).to_have_value("")  # panel.js emptied the form, as hx-on did
    page.goto(f"{gateway.admin_url}/instances/{instance_id}")
    page.wait_for_function("() => Number(document.querySelector('[data-lv=canvas]').dataset.frames) > 2", timeout=LONG)
    page.click("[data-shot-refresh]")
    expect(page.locator("img[data-shot]")).to_be_visible(timeout=LONG)
    expect(page.locator("[data-logs-lines]")).not_to_be_empty(timeout=LONG)
    assert refused == []
    gateway.api.post(f"/api/instances/{instance_id}/stop")
    other = gateway.api.get("/api/instances").json()["instances"]
    for view in other:
        if view["name"] == "studio-csp-2":
            gateway.api.delete(f"/api/instances/{view['instance_id']}")

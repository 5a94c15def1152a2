"""The panel's "Move in" page in Chromium, against a real gateway with real instances (local runtime) and the
simulator, which requires sign-in here: a zip of an old data/ directory, its preview, the confirm, and the
accounts signed in as before; the same zip again changes nothing; a zip that escapes its folder is refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from tests.legacy.old_system import EXPIRED, SIGNED_IN, STRAY_ID, write_old_data, zip_directory
from tests.panel.conftest import save_screenshot
from tests.panel.harness import Gateway, login
from tests.simulator.fixtures import control


def names(gateway: Gateway) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in gateway.api.get("/api/instances").json()["instances"]}


def upload(page: Any, archive: Path, *, start: bool = False) -> None:
    page.set_input_files("[data-migrate-file]", str(archive))
    if start:
        page.check("[data-migrate-start]")
    page.click("[data-action=migrate-preview]")


def test_move_in_from_a_zip_of_the_old_data_directory(gateway: Gateway, page: Any, simulator_server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    control(simulator_server, "/_sim/reset", {})  # sign-in required: only the imported cookies sign in
    archive = tmp_path / "data.zip"
    archive.write_bytes(zip_directory(write_old_data(tmp_path / "data", simulator_server)))

    login(page, gateway.admin_url, gateway.token)
    page.click("[data-nav=migrate]")
    page.wait_for_url(gateway.admin_url + "/migrate")
    upload(page, archive, start=True)
    result = page.locator("[data-migrate-result]")
    expect(result.locator("[data-migrate-phase=preview]")).to_be_visible()
    rows = result.locator("[data-migrate-report] tbody tr")
    expect(rows).to_have_count(3)
    expect(result.locator("tr[data-result=would_create]")).to_have_count(3)
    expect(result.locator(f"tr[data-old-id='{EXPIRED.instance_id}'] [data-session]")).to_contain_text("过期")
    expect(result.locator("[data-migrate-problems]")).to_contain_text(f"browser_{STRAY_ID}_session.json")
    save_screenshot(page, "migrate-preview")
    assert names(gateway) == {}  # the preview changed nothing

    page.click("[data-action=migrate-confirm]")
    expect(result.locator("[data-migrate-phase=done]")).to_be_visible()
    expect(result.locator("tr[data-result=created]")).to_have_count(3)
    save_screenshot(page, "migrate-done")

    views = names(gateway)
    assert sorted(views) == sorted([SIGNED_IN.name, EXPIRED.name, "gamma-one"])
    alpha = gateway.wait_instance(views[SIGNED_IN.name]["instance_id"], lambda v: v["status"] == "running" and v["login_state"] == "logged_in",
                                  timeout=120, what="the migrated account signed in")
    assert alpha["legacy_id"] == SIGNED_IN.instance_id
    gateway.wait_instance(views[EXPIRED.name]["instance_id"], lambda v: v["status"] == "running" and v["login_state"] == "needs_login",
                          timeout=120, what="the expired account running, signed out")
    state = gateway.api.get(f"/api/instances/{alpha['instance_id']}/session").json()
    assert {c["name"]: c["value"] for c in state["cookies"]}["SID"] == SIGNED_IN.account
    # The new instance links to its page, which shows it signed in.
    result.locator(f"tr[data-old-id='{SIGNED_IN.instance_id}'] a").click()
    expect(page.locator("#summary [data-login]")).to_have_attribute("data-login", "logged_in")

    # The same zip again: everything is already here, nothing to confirm.
    page.goto(gateway.admin_url + "/migrate")
    upload(page, archive)
    expect(result.locator("tr[data-result=skipped]")).to_have_count(3)
    expect(result.locator("[data-action=migrate-confirm]")).to_have_count(0)

    # A zip with an entry that escapes its folder: a message, nothing created.
    evil = tmp_path / "evil.zip"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bad:
        bad.writestr("data/browser_instances.json", '{"instances": [{"instance_id": "x1", "name": "x"}]}')
        bad.writestr("data/../../cookies/browser_x1_session.json", "[]")
    evil.write_bytes(out.getvalue())
    page.goto(gateway.admin_url + "/migrate")
    upload(page, evil)
    expect(result.locator("[data-migrate-error]")).to_contain_text("压缩包之外")
    save_screenshot(page, "migrate-refused")
    assert sorted(names(gateway)) == sorted(views)

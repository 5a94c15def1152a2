"""The page check (GET /diagnose) and the selectors override (PUT/DELETE /selectors) in real Chromium against
the simulator: a role the page lost shows as a miss, an override changes what matches without a restart, and a
refused override leaves the current selectors as they were."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.instance.harness import RunningInstance, require_chromium, signed_in_state, start_instance
from tests.simulator.fixtures import control

RUN_MOUNT = {"roles": {"run_button": ["#run-button-mount"]}}


@pytest.fixture(scope="module")
def own(simulator_server: str, tmp_path_factory) -> Iterator[RunningInstance]:
    """An instance of this module's own: its page and its override file change here."""
    require_chromium()
    data_dir = tmp_path_factory.mktemp("pagecheck") / "data"
    with start_instance(simulator_server, data_dir, session=signed_in_state(simulator_server, "acct-pagecheck")) as running:
        yield running


@pytest.fixture
def page(own: RunningInstance, simulator_url: str) -> Iterator[RunningInstance]:
    """The instance idle on a freshly loaded page, with no override; put back that way afterwards."""
    own.client.delete("/selectors")
    reload_page(own)
    yield own
    own.client.delete("/selectors")
    control(simulator_url, "/_sim/reset", {})
    reload_page(own)


def reload_page(inst: RunningInstance) -> None:
    """A fresh load of the chat page; a second try when it raced the driver's own reset after a task."""
    for _ in range(2):
        inst.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
        response = inst.client.post("/navigate", json={"target": "home"})
        if response.status_code in (200, 201):
            return
    raise AssertionError(f"the page did not load: {response.status_code} {response.text}")


def diagnose(inst: RunningInstance) -> dict:
    response = inst.client.get("/diagnose")
    assert response.status_code == 200, response.text
    return response.json()


def role(report: dict, name: str) -> dict:
    return next(r for r in report["roles"] if r["role"] == name)


def override_path(inst: RunningInstance) -> Path:
    return inst.data_dir / "selectors.json"


def test_diagnose_reports_every_role_on_the_live_page(page: RunningInstance) -> None:
    report = diagnose(page)
    status = page.status()
    assert report["url"] == status["page_url"] and "/prompts/new_chat" in report["url"]
    assert (report["login_state"], report["browser"], report["busy"], report["error"]) == ("logged_in", "up", False, None)
    # The simulator names the model where the real page does ([data-test-id="model-name"]).
    assert (report["model"], report["model_source"]) == ("gemini-nano-banana-2.1", "page")
    packaged = json.loads((Path(__file__).parents[2] / "fleet_contract" / "selectors.json").read_text())
    assert [r["role"] for r in report["roles"]] == list(packaged["roles"])
    prompt = role(report, "prompt_textarea")
    assert prompt["matched"] == packaged["roles"]["prompt_textarea"][0] and prompt["index"] == 0
    assert prompt["count"] == 1 and prompt["visible"] is True and prompt["expected"] is True
    assert [c["selector"] for c in prompt["candidates"]] == packaged["roles"]["prompt_textarea"]
    assert report["missing_expected"] == []
    # Nothing is generating: no spinner, no toast; a Playwright-only selector (:has-text) is looked at, not an error.
    assert role(report, "busy_indicator")["matched"] is None and role(report, "toast")["count"] == 0
    dialogs = role(report, "dismiss_dialog")
    assert dialogs["matched"] is None and all(c["error"] is None for c in dialogs["candidates"])


def test_a_missing_role_shows_and_an_override_changes_it_without_a_restart(page: RunningInstance, simulator_url: str) -> None:
    control(simulator_url, "/_sim/config", {"missing_roles": ["run_button"]})
    reload_page(page)
    report = diagnose(page)
    run = role(report, "run_button")
    assert run["matched"] is None and run["count"] == 0 and all(c["count"] == 0 for c in run["candidates"])
    assert report["missing_expected"] == ["run_button"] and report["selectors_source"] == "package"
    pid = page.process.pid

    installed = page.client.put("/selectors", json=RUN_MOUNT)
    assert installed.status_code == 200, installed.text
    assert installed.json()["roles"] == ["run_button"] and installed.json()["version"].startswith("override-")
    on_disk = json.loads(override_path(page).read_text())
    assert on_disk["roles"] == RUN_MOUNT["roles"] and on_disk["version"] == installed.json()["version"]

    report = diagnose(page)
    run = role(report, "run_button")
    assert (run["matched"], run["count"]) == ("#run-button-mount", 1) and report["missing_expected"] == []
    assert report["selectors_source"] == str(override_path(page))
    assert role(report, "prompt_textarea")["index"] == 0  # the roles it does not name keep the packaged candidates
    assert page.status()["selectors_version"] == installed.json()["version"] and page.process.pid == pid

    removed = page.client.delete("/selectors")
    assert removed.status_code == 200 and removed.json()["removed"] is True and removed.json()["source"] == "package"
    assert not override_path(page).exists()
    assert role(diagnose(page), "run_button")["matched"] is None
    assert page.client.delete("/selectors").json()["removed"] is False  # idempotent


def test_an_older_revision_arriving_after_a_newer_one_changes_nothing(page: RunningInstance) -> None:
    newer = {"version": "newer", **RUN_MOUNT}
    older = {"version": "older", "roles": {"run_button": ["button.older"]}}
    applied = page.client.put("/selectors", params={"revision": "7"}, json=newer)
    assert applied.status_code == 200 and (applied.json()["revision"], applied.json()["stale"]) == (7, False)

    for revision in ("6", "7"):  # an older delivery that crossed it, and the same one delivered twice
        late = page.client.put("/selectors", params={"revision": revision}, json=older)
        assert late.status_code == 200, late.text
        assert (late.json()["stale"], late.json()["revision"], late.json()["version"]) == (True, 7, "newer")
    late_removal = page.client.delete("/selectors", params={"revision": "5"})
    assert late_removal.status_code == 200 and late_removal.json()["stale"] is True
    assert json.loads(override_path(page).read_text())["version"] == "newer"
    assert page.status()["selectors_version"] == "newer"
    assert role(diagnose(page), "run_button")["candidates"][0]["selector"] == "#run-button-mount"

    removal = page.client.delete("/selectors", params={"revision": "8"})
    assert removal.json() | {"source": None} == removal.json() | {"removed": True, "revision": 8, "stale": False, "source": None}
    assert page.client.put("/selectors", params={"revision": "8"}, json=older).json()["stale"] is True  # still 8
    assert not override_path(page).exists()
    assert page.client.put("/selectors", params={"revision": "x"}, json=older).status_code == 400


def test_the_driver_uses_the_reloaded_selectors(page: RunningInstance) -> None:
    broken = page.client.put("/selectors", json={"roles": {"run_button": ["ms-run-button button.renamed-by-google"]}})
    assert broken.status_code == 200, broken.text
    failed = page.generate("a red square").json()
    assert failed["success"] is False and failed["error"]["code"] == "ui_changed" and "run_button" in failed["error"]["message"]
    assert page.client.delete("/selectors").status_code == 200
    page.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
    assert page.generate("a red square").json()["success"] is True


BAD_OVERRIDES = [
    pytest.param(b"{not json", 400, "not valid JSON", id="not-json"),
    pytest.param(b'["run_button"]', 422, "JSON object", id="not-an-object"),
    pytest.param(b'{"roles": {"run_buton": ["button"]}}', 422, "unknown role 'run_buton'", id="unknown-role"),
    pytest.param(b'{"roles": {"run_button": []}}', 422, "roles.run_button must be a non-empty list", id="empty-list"),
    pytest.param(b'{"roles": {"run_button": ["  "]}}', 422, "roles.run_button[0] must be a non-empty string", id="empty-string"),
    pytest.param(b'{"roles": {"run_button": "button"}}', 422, "non-empty list", id="not-a-list"),
    pytest.param(b'{"run_button": ["button"]}', 422, "go under 'roles'", id="role-at-top-level"),
    pytest.param(b'{"roles": {}}', 422, "changes nothing", id="nothing"),
    pytest.param(b'{"texts": {"quota_gone": ["x"]}}', 422, "unknown text 'quota_gone'", id="unknown-text"),
    pytest.param(b'{"roles": {"run_button": ["ms-run-button button]"]}}', 422, "roles.run_button[0] is not a valid selector", id="bad-syntax"),
]


@pytest.mark.parametrize(("body", "status", "reason"), BAD_OVERRIDES)
def test_a_bad_override_is_refused_and_the_current_selectors_stay(page: RunningInstance, body: bytes, status: int, reason: str) -> None:
    assert page.client.put("/selectors", json=RUN_MOUNT).status_code == 200
    before_file, before_version = override_path(page).read_bytes(), page.status()["selectors_version"]

    response = page.client.put("/selectors", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert override_path(page).read_bytes() == before_file
    assert page.status()["selectors_version"] == before_version
    assert role(diagnose(page), "run_button")["matched"] == "#run-button-mount"


def test_a_dry_run_checks_without_writing(page: RunningInstance) -> None:
    version = page.status()["selectors_version"]
    checked = page.client.put("/selectors", params={"dry_run": "true"}, json=RUN_MOUNT)
    assert checked.status_code == 200 and checked.json()["dry_run"] is True
    assert not override_path(page).exists() and page.status()["selectors_version"] == version
    assert diagnose(page)["selectors_source"] == "package"


def test_diagnose_beside_a_running_task_neither_waits_for_it_nor_moves_the_page(page: RunningInstance, simulator_url: str) -> None:
    control(simulator_url, "/_sim/config", {"latency_ms": 3000})
    result: dict = {}
    task = threading.Thread(target=lambda: result.update(page.generate("a slow square").json()))
    task.start()
    try:
        page.wait_for(lambda s: s["busy"], what="busy")
        url_before, loads_before = page.status()["page_url"], control(simulator_url, "/_sim/record")["page_loads"]
        report = diagnose(page)
        assert report["busy"] is True and report["url"] == url_before and report["error"] is None
        assert role(report, "prompt_textarea")["matched"] is not None
        assert page.status()["busy"] is True  # answered while the task still runs
        assert control(simulator_url, "/_sim/record")["page_loads"] == loads_before
    finally:
        task.join(timeout=30)
    assert result.get("success") is True

"""Page snapshots in real Chromium against the simulator: a ui_changed failure copies the page (HTML without its
scripts, a real PNG, the page check), a second failure within the interval takes none, the kept count is
bounded, and the zip downloads; bad and unknown ids are refused."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import pytest

from instance.snapshots import scrub_html
from tests.instance.harness import RunningInstance, require_chromium, signed_in_state, start_instance
from tests.simulator.fixtures import control


@pytest.fixture(scope="module")
def own(simulator_server: str, tmp_path_factory) -> Iterator[RunningInstance]:
    """An instance of this module's own (its snapshots directory is looked at here), keeping at most 2."""
    require_chromium()
    data_dir = tmp_path_factory.mktemp("snapshots") / "data"
    session = signed_in_state(simulator_server, "acct-snapshots")
    with start_instance(simulator_server, data_dir, session=session, INSTANCE_SNAPSHOTS_KEPT="2") as running:
        yield running
    control(simulator_server, "/_sim/reset", {})


def listed(inst: RunningInstance) -> list[dict]:
    response = inst.client.get("/snapshots")
    assert response.status_code == 200, response.text
    return response.json()["snapshots"]


def fail_with_missing_run_button(inst: RunningInstance, sim_url: str, task_id: str) -> dict:
    control(sim_url, "/_sim/config", {"missing_roles": ["run_button"]})
    inst.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
    inst.client.post("/navigate", json={"target": "home"})
    answer = inst.generate("a red square", task_id=task_id).json()
    assert answer["success"] is False and answer["error"]["code"] == "ui_changed", answer
    return answer


def test_a_ui_changed_failure_keeps_one_snapshot_and_it_downloads(own: RunningInstance, simulator_url: str) -> None:
    try:
        fail_with_missing_run_button(own, simulator_url, "task-snap-1")
        snapshots = listed(own)
        assert len(snapshots) == 1
        snap = snapshots[0]
        assert snap["reason"] == "ui_changed" and snap["task_id"] == "task-snap-1" and snap["role"] == "run_button"
        assert snap["url"].startswith(simulator_url) and "run_button" in snap["error"]
        assert set(snap["files"]) == {"page.html", "screenshot.png", "pagecheck.json", "meta.json"}
        assert snap["size_bytes"] == sum(snap["files"].values())

        folder = own.data_dir / "snapshots" / snap["id"]
        assert (folder / "screenshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        html = (folder / "page.html").read_text(encoding="utf-8")
        assert "<textarea" in html or "textarea" in html
        check = json.loads((folder / "pagecheck.json").read_text(encoding="utf-8"))
        assert "run_button" in check["missing_expected"]

        # A second failure within the interval (300 s) takes none.
        fail_with_missing_run_button(own, simulator_url, "task-snap-2")
        assert [s["id"] for s in listed(own)] == [snap["id"]]

        download = own.client.get(f"/snapshots/{snap['id']}")
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/zip"
        assert download.headers["content-disposition"].startswith("attachment;")
        names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
        assert sorted(names) == sorted(f"{snap['id']}/{n}" for n in snap["files"])
    finally:
        control(simulator_url, "/_sim/reset", {})


def test_snapshots_on_request_are_bounded_by_the_kept_count(own: RunningInstance) -> None:
    own.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
    ids = []
    for _ in range(3):
        response = own.client.post("/snapshots", json={"reason": "canary"})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    assert [s["id"] for s in listed(own)] == ids[::-1][:2]
    on_disk = sorted(p.name for p in (own.data_dir / "snapshots").iterdir())
    assert on_disk == sorted(ids[1:])


def test_bad_reasons_and_ids_are_refused_and_unknown_ids_are_404(own: RunningInstance) -> None:
    assert own.client.post("/snapshots", json={"reason": "../../etc"}).status_code == 422
    assert own.client.post("/snapshots", content=b"not json").status_code == 400
    assert own.client.get("/snapshots/..%2F..%2Fstorage_state.json").status_code in (404, 422)
    assert own.client.get("/snapshots/storage_state.json").status_code == 422
    missing = own.client.get("/snapshots/20000101-000000-000-manual")
    assert missing.status_code == 404 and "20000101-000000-000-manual" in missing.json()["detail"]


def test_the_html_keeps_no_script_content_and_is_capped() -> None:
    html = '<html><script>var email="a@b.c";</script><SCRIPT type="x">token</SCRIPT><p>kept</p></html>'
    assert scrub_html(html) == b'<html><script></script><SCRIPT type="x"></SCRIPT><p>kept</p></html>'
    big = scrub_html("x" * (5 * 1024 * 1024))
    assert len(big) < 4 * 1024 * 1024 + 200 and b"cut here" in big

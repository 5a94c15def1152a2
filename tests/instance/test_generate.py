"""The driver against the simulator in real Chromium: the happy paths and every page failure."""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest

from instance.images import reencode
from instance.selectors import load_packaged
from tests.instance.conftest import ACCOUNT, sim
from tests.instance.harness import b64, png_bytes, png_size
from tests.simulator.images import image_size

# The default model (gemini-nano-banana-2.1) offers sizes: a request naming none gets the page's default, 1K.
PAGE_SIZE = "1K"
RATIO_SIZES = {ratio: image_size(ratio, PAGE_SIZE) for ratio in (
    "Auto", "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "1:4", "4:1", "1:8", "8:1")}


def test_cjk_prompt_round_trips_and_returns_a_png(inst, simulator_url):
    prompt = "一只可爱的小猫，坐在窗台上 🐱 — «ünïcödé»"
    answer = inst.generate(prompt, aspect_ratio="16:9").json()
    assert answer["success"], answer
    assert answer["error"] is None
    assert len(answer["images_b64"]) == 1
    assert png_size(base64.b64decode(answer["images_b64"][0])) == (1024, 576)
    assert answer["text"] == "Here is your image."
    assert answer["timings"]["total_ms"] >= answer["timings"]["generate_ms"] > 0
    generations = sim(simulator_url, "/_sim/record")["generations"]
    assert [(g["account"], g["prompt"], g["aspect_ratio"]) for g in generations] == [(ACCOUNT, prompt, "16:9")]


@pytest.mark.parametrize("ratio", list(RATIO_SIZES))
def test_every_aspect_ratio_is_selected_on_the_page(inst, simulator_url, ratio):
    answer = inst.generate(f"ratio {ratio}", aspect_ratio=ratio).json()
    assert answer["success"], answer
    assert png_size(base64.b64decode(answer["images_b64"][0])) == RATIO_SIZES[ratio]
    assert sim(simulator_url, "/_sim/record")["generations"][0]["aspect_ratio"] == ratio


@pytest.mark.parametrize("count", [1, 3])
def test_reference_images_are_uploaded_and_not_returned(inst, simulator_url, count):
    refs = [png_bytes(40 + i, 30, (10 * i, 100, 200)) for i in range(count)]
    prefixed = ["data:image/png;base64," + b64(refs[0])] + [b64(r) for r in refs[1:]]
    answer = inst.generate("参考这些图片", aspect_ratio="1:1", reference_images_b64=prefixed).json()
    assert answer["success"], answer
    # Only the model turn's image: the user turn shows the references too.
    assert len(answer["images_b64"]) == 1
    assert png_size(base64.b64decode(answer["images_b64"][0])) == (1024, 1024)
    uploads = sim(simulator_url, "/_sim/record")["generations"][0]["uploads"]
    # The page gets each image as re-encoded from its pixels, never the caller's bytes.
    reencoded = [reencode(r, i, 40_000_000).data for i, r in enumerate(refs)]
    assert [u["sha256"] for u in uploads] == [hashlib.sha256(r).hexdigest() for r in reencoded]
    assert {u["mime"] for u in uploads} == {"image/png"}


def test_several_images_in_one_answer(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"image_count": 3, "image_stagger_ms": 150})
    answer = inst.generate("three please").json()
    assert answer["success"], answer
    assert len(answer["images_b64"]) == 3


def test_dialogs_covering_the_page_are_dismissed(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"dialogs": ["autosave", "preference_vote", "consent"]})
    inst.client.post("/navigate", json={"target": "home"})
    answer = inst.generate("after the dialogs", aspect_ratio="4:3").json()
    assert answer["success"], answer


def test_copyright_dialog_after_upload_is_accepted(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"copyright_dialog": True})
    answer = inst.generate("with reference", reference_images_b64=[b64(png_bytes())]).json()
    assert answer["success"], answer
    assert len(sim(simulator_url, "/_sim/record")["generations"][0]["uploads"]) == 1


def test_legacy_markup_is_driven_through_fallback_selectors(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"markup": "legacy"})
    inst.client.post("/navigate", json={"target": "home"})
    answer = inst.generate("older page", aspect_ratio="9:16", reference_images_b64=[b64(png_bytes())]).json()
    assert answer["success"], answer
    assert png_size(base64.b64decode(answer["images_b64"][0])) == (576, 1024)


@pytest.mark.parametrize(
    ("mode", "code", "retry_safe"),
    [
        ("quota", "quota_exhausted", True),
        ("rate_limit", "rate_limited", True),
        ("internal", "internal_error", False),
    ],
)
def test_page_errors_are_reported_by_code(inst, simulator_url, mode, code, retry_safe):
    sim(simulator_url, "/_sim/config", {"mode": mode, "mode_times": 1})
    answer = inst.generate("will fail").json()
    assert answer["success"] is False
    assert answer["error"]["code"] == code
    assert answer["error"]["retry_safe"] is retry_safe
    assert answer["images_b64"] == []
    # The page is left usable: the next task works.
    assert inst.generate("works again").json()["success"]


def test_blocked_prompt_returns_the_model_text(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"mode": "blocked", "mode_times": 1})
    answer = inst.generate("something not allowed").json()
    assert answer["success"] is False
    assert answer["error"]["code"] == "blocked"
    assert answer["error"]["retry_safe"] is False
    assert answer["text"] == "I can't help with that."


def test_a_hanging_generation_times_out(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"mode": "hang", "mode_times": 1, "hang_ms": 20000})
    answer = inst.generate("never answered").json()
    assert answer["error"]["code"] == "timeout"
    assert answer["error"]["retry_safe"] is False
    assert answer["timings"]["total_ms"] >= 8000


@pytest.mark.parametrize("role", ["run_button", "prompt_textarea", "add_media_button", "aspect_ratio_select"])
def test_missing_element_names_the_role(inst, simulator_url, role):
    sim(simulator_url, "/_sim/config", {"missing_roles": [role]})
    inst.client.post("/navigate", json={"target": "home"})
    answer = inst.generate("x", aspect_ratio="16:9", reference_images_b64=[b64(png_bytes())]).json()
    assert answer["success"] is False
    assert answer["error"]["code"] == "ui_changed"
    assert answer["error"]["role"] == role
    assert answer["error"]["retry_safe"] is True
    assert sim(simulator_url, "/_sim/record")["generations"] == []
    assert inst.status()["browser"] == "up"


def test_second_concurrent_request_gets_409_and_no_second_tab(inst, simulator_url):
    sim(simulator_url, "/_sim/config", {"latency_ms": 1500})
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(inst.generate("first").json()))
    worker.start()
    inst.wait_for(lambda s: s["busy"], timeout=5, what="busy")
    second = inst.generate("second")
    worker.join()
    assert second.status_code == 409
    assert first["success"], first
    record = sim(simulator_url, "/_sim/record")
    assert [g["prompt"] for g in record["generations"]] == ["first"]
    assert record["max_concurrent_by_account"][ACCOUNT] == 1


def test_status_reports_counters_and_versions(inst):
    before = inst.status()["counters"]
    assert inst.generate("count me").json()["success"]
    status = inst.status()
    assert status["counters"]["tasks"] == before["tasks"] + 1
    assert status["counters"]["succeeded"] == before["succeeded"] + 1
    assert status["selectors_version"] == load_packaged().version
    assert status["version"]
    assert status["busy"] is False and status["current_task"] is None

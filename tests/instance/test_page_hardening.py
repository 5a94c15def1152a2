"""The driver against what the real page does today (AISTUDIO.md, December 2026), each as a simulator behaviour."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.instance.conftest import ACCOUNT, sim
from tests.instance.harness import RunningInstance, b64, png_bytes, png_size
from tests.simulator.images import prompt_color


def reload_page(inst: RunningInstance, simulator_url: str, config: dict) -> None:
    """Apply page knobs: the simulator bakes them into the page when it loads."""
    sim(simulator_url, "/_sim/config", config)
    inst.wait_for(lambda s: not s["busy"], what="idle")
    answer = inst.client.post("/navigate", json={"target": "home"})
    assert answer.status_code == 201, answer.text


def generations(simulator_url: str) -> list[dict]:
    return sim(simulator_url, "/_sim/record")["generations"]


def first_image(answer: dict) -> bytes:
    assert answer["success"], answer
    return base64.b64decode(answer["images_b64"][0])


def colour(png: bytes) -> tuple[int, int, int]:
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


# ---- aspect ratio and size ---------------------------------------------------------------------


def test_a_ratio_the_page_applies_late_is_waited_for(inst, simulator_url):
    reload_page(inst, simulator_url, {"select_apply": "late", "select_apply_delay_ms": 400})
    answer = inst.generate("wide, applied late", aspect_ratio="16:9").json()
    assert png_size(first_image(answer)) == (1024, 576)  # the default model at the page's default size, 1K
    assert [g["aspect_ratio"] for g in generations(simulator_url)] == ["16:9"]


def test_a_ratio_the_page_never_shows_is_ui_changed_and_nothing_runs(inst, simulator_url):
    reload_page(inst, simulator_url, {"select_apply": "never"})
    answer = inst.generate("never wide", aspect_ratio="16:9").json()
    assert answer["success"] is False
    assert (answer["error"]["code"], answer["error"]["role"]) == ("ui_changed", "aspect_ratio_select")
    assert answer["error"]["retry_safe"] is True
    assert generations(simulator_url) == []


@pytest.mark.parametrize("apply", ["now", "late"])
def test_image_size_and_model_are_set_on_the_page(inst, simulator_url, apply):
    reload_page(inst, simulator_url, {"select_apply": apply, "select_apply_delay_ms": 300})
    answer = inst.generate("pro at 2K", model="gemini-3-pro-image", aspect_ratio="16:9", image_size="2K").json()
    assert png_size(first_image(answer)) == (2048, 1152)
    [generation] = generations(simulator_url)
    assert (generation["model"], generation["aspect_ratio"], generation["image_size"]) == (
        "gemini-3-pro-image", "16:9", "2K")


def test_an_extreme_ratio_of_the_default_model(inst, simulator_url):
    reload_page(inst, simulator_url, {})
    answer = inst.generate("tall banner", aspect_ratio="1:4").json()
    # The page's own default size (1K) is kept when the request names none.
    assert png_size(first_image(answer)) == (256, 1024)
    assert (generations(simulator_url)[0]["model"], generations(simulator_url)[0]["image_size"]) == (
        "gemini-nano-banana-2.1", "1K")


def test_the_lite_model_with_an_extreme_ratio_at_its_one_size(inst, simulator_url):
    reload_page(inst, simulator_url, {})
    answer = inst.generate("lite strip", model="gemini-3.1-flash-lite-image", aspect_ratio="4:1", image_size="1K").json()
    assert png_size(first_image(answer)) == (1024, 256)
    [generation] = generations(simulator_url)
    assert (generation["model"], generation["aspect_ratio"], generation["image_size"]) == (
        "gemini-3.1-flash-lite-image", "4:1", "1K")


# ---- model ---------------------------------------------------------------------------------------


def test_the_app_prompts_url_form_is_accepted(inst, simulator_url):
    reload_page(inst, simulator_url, {"app_path": True})
    inst.wait_for(lambda s: "/app/prompts/new_chat" in (s["page_url"] or ""), what="the /app/prompts page")
    answer = inst.generate("under /app", aspect_ratio="3:4").json()
    assert png_size(first_image(answer)) == (768, 1024)
    # Another model's URL redirects there too, and is recognised as that model's new chat.
    answer = inst.generate("pro under /app", model="gemini-3-pro-image", aspect_ratio="1:1").json()
    assert answer["success"], answer
    assert [g["model"] for g in generations(simulator_url)] == ["gemini-nano-banana-2.1", "gemini-3-pro-image"]


def test_a_page_that_ignores_the_url_model_gets_it_through_the_picker(inst, simulator_url):
    # Without the check the page would run its text model: an answer without an image, reported as blocked.
    reload_page(inst, simulator_url, {"model_from_url": False})
    answer = inst.generate("picked by hand", model="gemini-3-pro-image", aspect_ratio="4:3", image_size="1K").json()
    assert png_size(first_image(answer)) == (1024, 768)
    assert [(g["model"], g["aspect_ratio"]) for g in generations(simulator_url)] == [("gemini-3-pro-image", "4:3")]


@pytest.mark.parametrize("from_url", [True, False])
def test_nano_banana_2_1_is_selected_like_the_others(inst, simulator_url, from_url):
    """The new default, reached from another model's chat: by ?model= in the URL, or through the model picker
    when the page ignores the URL (there the picker also lists Nano Banana, whose title its own begins with)."""
    reload_page(inst, simulator_url, {"model_from_url": from_url})
    assert first_image(inst.generate("pro first", model="gemini-3-pro-image", aspect_ratio="1:1").json())
    answer = inst.generate("wide strip", model="gemini-nano-banana-2.1", aspect_ratio="8:1", image_size="4K").json()
    assert png_size(first_image(answer)) == (4096, 512)
    answer = inst.generate("no model named", aspect_ratio="1:8", image_size="2K").json()  # the instance's default
    assert png_size(first_image(answer)) == (256, 2048)
    answer = inst.generate("the older one", model="gemini-2.5-flash-image", aspect_ratio="16:9").json()
    assert png_size(first_image(answer)) == (512, 288)
    assert [(g["model"], g["aspect_ratio"]) for g in generations(simulator_url)] == [
        ("gemini-3-pro-image", "1:1"), ("gemini-nano-banana-2.1", "8:1"), ("gemini-nano-banana-2.1", "1:8"),
        ("gemini-2.5-flash-image", "16:9"),
    ]
    assert [g["image_size"] for g in generations(simulator_url)][1:3] == ["4K", "2K"]


def test_no_model_picker_is_a_retry_safe_error_not_a_blocked_answer(inst, simulator_url):
    reload_page(inst, simulator_url, {"model_from_url": False, "model_picker": False})
    answer = inst.generate("cannot choose").json()
    assert answer["success"] is False
    assert (answer["error"]["code"], answer["error"]["role"]) == ("ui_changed", "model_selector")
    assert answer["error"]["retry_safe"] is True
    assert generations(simulator_url) == []


@pytest.mark.parametrize("from_url", [True, False])
def test_a_model_the_account_may_not_use_is_model_unavailable(inst, simulator_url, from_url):
    reload_page(inst, simulator_url, {"unavailable_models": ["gemini-3-pro-image"], "model_from_url": from_url})
    answer = inst.generate("not for me", model="gemini-3-pro-image").json()
    assert answer["success"] is False
    assert answer["error"]["code"] == "model_unavailable"
    assert answer["error"]["retry_safe"] is True
    assert generations(simulator_url) == []
    # The account's other models still work.
    assert inst.generate("default model").json()["success"]


# ---- uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", ["media_container", "blob_img", "token_count", "none"])
def test_a_finished_upload_is_seen_by_any_signal(inst, simulator_url, signal):
    reload_page(inst, simulator_url, {"upload_signal": signal})
    ref = png_bytes(50, 40, (1, 2, 3))
    answer = inst.generate("with a reference", aspect_ratio="1:1", reference_images_b64=[b64(ref)]).json()
    assert answer["success"], answer
    assert len(generations(simulator_url)[0]["uploads"]) == 1
    warned = "no upload signal" in inst.log_tail(200)
    # Only a page that shows nothing at all is run on the strength of an enabled Run button, with a warning.
    assert warned is (signal == "none")


def test_a_copyright_dialog_after_the_chip_is_accepted(inst, simulator_url):
    # The page holds Run back until the acknowledgement, which shows only after the chip.
    reload_page(inst, simulator_url, {"copyright_dialog": True, "copyright_delay_ms": 400})
    answer = inst.generate("late copyright", reference_images_b64=[b64(png_bytes())]).json()
    assert answer["success"], answer
    assert len(generations(simulator_url)) == 1


# ---- errors and toasts ---------------------------------------------------------------------------


def test_a_harmless_toast_does_not_stall_completion(inst, simulator_url):
    reload_page(inst, simulator_url, {"harmless_toast": True})
    answer = inst.generate("with a notice").json()
    assert answer["success"], answer
    # Completion came from the answer, not from the generation timeout (8 s in these tests).
    assert answer["timings"]["generate_ms"] < 6000


def test_an_error_left_on_the_page_from_before_does_not_fail_the_task(inst, simulator_url):
    reload_page(inst, simulator_url, {"stale_callout": True})
    answer = inst.generate("despite the leftover").json()
    assert answer["success"], answer


def test_a_warning_callout_out_of_free_generations_is_quota(inst, simulator_url):
    reload_page(inst, simulator_url, {"mode": "free_limit", "mode_times": 1})
    answer = inst.generate("one too many").json()
    assert answer["success"] is False
    assert (answer["error"]["code"], answer["error"]["retry_safe"]) == ("quota_exhausted", True)
    assert "free generations" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("mode", "code", "retry_safe"), [("rate_limit", "rate_limited", True), ("internal", "internal_error", False)]
)
def test_a_failed_call_the_page_does_not_show_is_classified_by_http_status(inst, simulator_url, mode, code, retry_safe):
    reload_page(inst, simulator_url, {"failure_display": "none", "mode": mode, "mode_times": 1})
    answer = inst.generate("silent failure").json()
    assert answer["success"] is False
    assert (answer["error"]["code"], answer["error"]["retry_safe"]) == (code, retry_safe)
    assert answer["timings"]["total_ms"] < 6000  # not the generation timeout


# ---- dialogs -------------------------------------------------------------------------------------


def test_dialogs_arriving_at_every_step_are_dismissed(inst, simulator_url):
    reload_page(inst, simulator_url, {
        "dialogs": ["consent_checkbox", "autosave"],
        "event_dialogs": {"ratio": ["whats_new"], "upload": ["drive_offer", "announcement"], "run": ["preference_vote"]},
    })
    answer = inst.generate("through the dialogs", aspect_ratio="9:16", reference_images_b64=[b64(png_bytes())]).json()
    assert png_size(first_image(answer)) == (576, 1024)
    [generation] = generations(simulator_url)
    assert generation["aspect_ratio"] == "9:16" and len(generation["uploads"]) == 1


# ---- chats ---------------------------------------------------------------------------------------


def test_tasks_run_in_a_temporary_chat_and_save_nothing_to_drive(inst, simulator_url):
    reload_page(inst, simulator_url, {})
    for i in range(2):
        assert inst.generate(f"not saved {i}").json()["success"]
    record = sim(simulator_url, "/_sim/record")
    assert [g["temporary"] for g in record["generations"]] == [True, True]
    assert record["saved_chats"] == 0


# ---- run, prompt, answer -------------------------------------------------------------------------


@pytest.mark.parametrize("behaviour", ["covered", "keyboard_only"])
def test_run_falls_back_when_a_click_does_not_start_it(inst, simulator_url, behaviour):
    reload_page(inst, simulator_url, {"run_button": behaviour})
    answer = inst.generate(f"run when {behaviour}").json()
    assert answer["success"], answer
    assert len(generations(simulator_url)) == 1  # started once, never stopped by a second click


def test_crlf_line_endings_pass_the_prompt_check(inst, simulator_url):
    reload_page(inst, simulator_url, {})
    answer = inst.generate("line one\r\nline two\rline three").json()
    assert answer["success"], answer
    assert generations(simulator_url)[0]["prompt"] == "line one\nline two\nline three"


def test_a_draft_image_in_the_thoughts_is_not_returned(inst, simulator_url):
    reload_page(inst, simulator_url, {"thinking_image": True})
    prompt = "think first"
    answer = inst.generate(prompt).json()
    assert len(answer["images_b64"]) == 1
    assert colour(first_image(answer)) == prompt_color(prompt)
    assert answer["text"] == "Here is your image."  # the thought's text is left out too


@pytest.mark.parametrize("config", [{"region_redirect": True}, {"mode": "region"}])
def test_a_region_block_has_its_own_code(inst, simulator_url, config):
    reload_page(inst, simulator_url, config)
    answer = inst.generate("from the wrong place").json()
    assert answer["success"] is False
    assert (answer["error"]["code"], answer["error"]["retry_safe"]) == ("region_blocked", True)
    assert generations(simulator_url) == []
    sim(simulator_url, "/_sim/reset", {})
    reload_page(inst, simulator_url, {})
    assert inst.generate("from home").json()["success"]
    assert generations(simulator_url)[0]["account"] == ACCOUNT

"""A conversation's turns in one AI Studio chat, in real Chromium against the simulator: a kept chat is continued
with the new turn's words alone (its images are in the chat already), left by a new load for anyone else, and
replaced by a new chat with the references when the page no longer holds it."""

from __future__ import annotations

import base64
import hashlib

from tests.instance.conftest import ACCOUNT, sim
from tests.instance.harness import b64, png_bytes, signed_in_state, start_instance
from tests.polling import wait_until


def sha(answer: dict) -> str:
    return hashlib.sha256(base64.b64decode(answer["images_b64"][0])).hexdigest()


def generations(simulator_url: str) -> list[dict]:
    return sim(simulator_url, "/_sim/record")["generations"]


def test_three_turns_in_one_chat_then_a_new_chat_for_another_conversation(inst, simulator_url):
    first = inst.generate("a cat on a sofa", task_id="turn-1", keep_chat=True).json()
    assert first["success"] and first["continued"] is False, first
    assert inst.status()["kept_chat"] == "turn-1"
    second = inst.generate("Earlier: a cat on a sofa. Now: make it red", turn_prompt="now make it red",
                           reference_images_b64=first["images_b64"], task_id="turn-2", continue_chat="turn-1",
                           keep_chat=True).json()
    assert second["success"] and second["continued"] is True, second
    third = inst.generate("Earlier: ... Now: add a hat", turn_prompt="add a hat", task_id="turn-3",
                          reference_images_b64=second["images_b64"], continue_chat="turn-2").json()
    assert third["success"] and third["continued"] is True, third
    other = inst.generate("a dog", task_id="other").json()
    assert other["success"] and other["continued"] is False, other

    one, two, three, four = generations(simulator_url)
    # the same chat, the new words alone, nothing uploaded: the page sent the earlier turns and their images
    assert one["chat_id"] == two["chat_id"] == three["chat_id"] != four["chat_id"]
    assert [g["prompt"] for g in (two, three)] == ["now make it red", "add a hat"]
    assert [len(g["uploads"]) for g in (one, two, three, four)] == [0, 0, 0, 0]
    made = [sha(first), sha(second)]
    assert [(g["history_turns"], g["history_images"]) for g in (one, two, three, four)] == [
        (0, []), (2, made[:1]), (4, made), (0, [])]
    assert inst.status()["kept_chat"] is None  # the last turn did not ask to keep it


def test_a_chat_the_page_no_longer_holds_becomes_a_new_chat_with_the_references(inst, simulator_url):
    first = inst.generate("a cat", task_id="kept", keep_chat=True).json()
    assert first["success"], first
    inst.client.post("/navigate", json={"target": "home"})  # any new load leaves the kept chat
    assert inst.status()["kept_chat"] is None
    second = inst.generate("Earlier: a cat. Now: make it red", turn_prompt="make it red", continue_chat="kept",
                           reference_images_b64=first["images_b64"]).json()
    assert second["success"] and second["continued"] is False, second
    one, two = generations(simulator_url)
    assert two["chat_id"] != one["chat_id"] and two["prompt"] == "Earlier: a cat. Now: make it red"
    assert len(two["uploads"]) == 1 and two["history_turns"] == 0


def test_a_continued_chat_uploads_the_turns_own_images_only(inst, simulator_url):
    first = inst.generate("a cat", task_id="own-1", keep_chat=True).json()
    assert first["success"], first
    hat = png_bytes(48, 32, (200, 30, 30))
    # the turn's own picture first, then the earlier answer (already in the chat)
    second = inst.generate("put this hat on it", turn_prompt="put this hat on it", continue_chat="own-1",
                           turn_references=1, reference_images_b64=[b64(hat), *first["images_b64"]]).json()
    assert second["success"] and second["continued"] is True, second
    two = generations(simulator_url)[1]
    assert len(two["uploads"]) == 1 and two["history_images"] == [sha(first)]


def test_another_model_does_not_continue_the_chat(inst, simulator_url):
    assert inst.generate("a cat", task_id="kept-model", keep_chat=True).json()["success"]
    answer = inst.generate("a red cat", continue_chat="kept-model", model="gemini-3-pro-image").json()
    assert answer["success"] and answer["continued"] is False, answer
    one, two = generations(simulator_url)
    assert two["chat_id"] != one["chat_id"] and two["model"] == "gemini-3-pro-image"


def test_bad_chat_fields_are_refused_and_keep_the_kept_chat(inst, simulator_url):
    assert inst.generate("a cat", task_id="still-kept", keep_chat=True).json()["success"]
    for body, words in (({"keep_chat": "yes"}, "'keep_chat' must be true or false"),
                        ({"continue_chat": 12}, "'continue_chat' must be the task id"),
                        ({"continue_chat": "x" * 65}, "'continue_chat' must be the task id"),
                        ({"turn_prompt": "  "}, "'turn_prompt' must be a non-empty string"),
                        ({"turn_references": 1}, "'turn_references' must be a whole number from 0 to the 0")):
        answer = inst.generate("a cat", **body)
        assert answer.status_code == 422 and words in answer.text, answer.text
    assert inst.status()["kept_chat"] == "still-kept"
    assert inst.generate("done").json()["success"]  # leaves the shared instance on a new chat
    assert len(generations(simulator_url)) == 2


def test_a_kept_chat_unused_for_a_while_is_reset_in_the_background(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, ACCOUNT),
                        INSTANCE_KEEP_CHAT_S="1") as running:
        running.wait_for(lambda s: s["ready"] and s["login_state"] == "logged_in", what="ready")
        assert running.generate("a cat", task_id="short", keep_chat=True).json()["success"]
        loads = sim(simulator_url, "/_sim/record")["page_loads"]
        running.wait_for(lambda s: s["kept_chat"] is None, timeout=10, what="the kept chat's expiry")
        wait_until(lambda: sim(simulator_url, "/_sim/record")["page_loads"], until=lambda n: n > loads, timeout=10,
                   what="a new chat loaded in the background")
        late = running.generate("make it red", continue_chat="short").json()
        assert late["success"] and late["continued"] is False, late

"""The catalogue as the page sees it, in real Chromium against the simulator: the instance reads the model
picker's entries at start and in /diagnose, and the run settings' ratios and sizes for the selected model; it
runs a model the packaged catalogue lacks when the request carries the options a page showed for it."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from tests.instance.harness import RunningInstance, png_size, require_chromium, signed_in_state, start_instance
from tests.simulator.fixtures import control

ACCOUNT = "acct-page-catalogue"
EXTRA = {"id": "gemini-nano-banana-2.2", "label": "Nano Banana 2.2", "ratios": ["1:1", "16:9", "8:1"], "sizes": ["1K", "2K"]}


@pytest.fixture(scope="module")
def own(simulator_server: str, tmp_path_factory) -> Iterator[RunningInstance]:
    require_chromium()
    control(simulator_server, f"/_sim/accounts/{ACCOUNT}/config", {"extra_models": [EXTRA], "latency_ms": 50})
    data_dir = tmp_path_factory.mktemp("pagecatalogue") / "data"
    with start_instance(simulator_server, data_dir, session=signed_in_state(simulator_server, ACCOUNT)) as running:
        yield running


def test_start_reads_the_picker_and_the_default_models_settings(own: RunningInstance):
    status = own.wait_for(lambda s: s.get("offered_models") and not s["busy"] and "gemini-nano-banana-2.1" in s["offered_options"],
                          what="offered models read")
    ids = [m["id"] for m in status["offered_models"]]
    assert "gemini-nano-banana-2.2" in ids and "gemini-nano-banana-2.1" in ids
    extra = next(m for m in status["offered_models"] if m["id"] == "gemini-nano-banana-2.2")
    assert extra == {"id": "gemini-nano-banana-2.2", "label": "Nano Banana 2.2", "available": True}
    # a model the packaged catalogue lacks: its own new chat was opened to read its run settings
    assert status["offered_options"]["gemini-nano-banana-2.2"]["ratios"] == ["1:1", "16:9", "8:1"]
    default = status["offered_options"]["gemini-nano-banana-2.1"]
    assert default["sizes"] == ["1K", "2K", "4K"] and "8:1" in default["ratios"] and "Auto" not in default["ratios"]


@pytest.fixture
def sim(own: RunningInstance, simulator_url: str) -> str:
    """The simulator, reset for this test, with the account's extra model again."""
    control(simulator_url, f"/_sim/accounts/{ACCOUNT}/config", {"extra_models": [EXTRA], "latency_ms": 50})
    return simulator_url


def test_diagnose_reads_the_selected_models_ratios_and_sizes(own: RunningInstance, sim: str):
    simulator_url = sim
    own.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
    moved = own.client.post("/navigate", json={"url": simulator_url + "/prompts/new_chat?model=gemini-nano-banana-2.2"})
    assert moved.status_code in (200, 201), moved.text
    report = own.client.get("/diagnose").json()
    assert report["offered_options"]["gemini-nano-banana-2.2"] == {
        "ratios": ["1:1", "16:9", "8:1"], "sizes": ["1K", "2K"], "label": "Nano Banana 2.2"}
    assert own.status()["offered_options"]["gemini-nano-banana-2.2"]["ratios"] == ["1:1", "16:9", "8:1"]


def test_a_model_the_catalogue_lacks_runs_with_the_options_sent(own: RunningInstance, sim: str):
    simulator_url = sim
    own.wait_for(lambda s: s["ready"] and not s["busy"], what="idle")
    options = {"ratios": EXTRA["ratios"], "sizes": EXTRA["sizes"]}
    answer = own.generate("a wide banana", model="gemini-nano-banana-2.2", aspect_ratio="8:1", image_size="2K",
                          model_options=options)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"], body
    assert png_size(base64.b64decode(body["images_b64"][0])) == (2048, 256)
    generations = control(simulator_url, "/_sim/record")["generations"]
    assert generations[-1]["model"] == "gemini-nano-banana-2.2" and generations[-1]["aspect_ratio"] == "8:1"
    refused = own.generate("p", model="gemini-nano-banana-2.2", aspect_ratio="4:3", model_options=options)
    assert refused.status_code == 422 and "4:3" in refused.text
    unknown = own.generate("p", model="gemini-nano-banana-9", model_options={"ratios": []})
    assert unknown.status_code == 422 and "unknown model" in unknown.text

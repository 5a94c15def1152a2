"""The OpenAI, Gemini and Anthropic faces end to end: the official `openai`, `google-genai` and `anthropic`
clients over HTTP against `python -m gateway` (runtime docker) in front of two real instance containers, each
signed in to its own simulator account. The simulator's record says what each real page was asked (prompt,
ratio, size, model, uploads), and that the two images of `n=2` ran on both accounts at once."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import docker
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from instance.images import reencode
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import GatewayProcess, SimulatorNetwork, print_fleet_logs, new_namespace, remove_namespace
from tests.instance.harness import png_bytes, signed_in_state
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

INSTANCES = 2
KEY = "e2e-client-api-key"
SIM_TEXT = "Here is your image."


@dataclass
class Fleet:
    gateway: GatewayProcess
    sim: SimulatorNetwork
    accounts: dict[str, str]

    def fresh(self, **config: Any) -> None:
        control(self.sim.control_url, "/_sim/reset", {})
        control(self.sim.control_url, "/_sim/config", {"signin_required": False, "text": SIM_TEXT, **config})

    def generations(self) -> list[dict[str, Any]]:
        return control(self.sim.control_url, "/_sim/record")["generations"]

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.api_url}/v1", api_key=KEY, max_retries=0, timeout=180)

    def gemini(self) -> genai.Client:
        options = genai_types.HttpOptions(
            base_url=self.gateway.api_url, api_version="v1beta", timeout=180_000,
            retry_options=genai_types.HttpRetryOptions(attempts=1),
        )
        return genai.Client(api_key=KEY, http_options=options)


@pytest.fixture(scope="module")
def fleet(engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Fleet]:
    data_dir = tmp_path_factory.mktemp("client-apis")
    namespace = new_namespace("api")
    settings = {**FAST_SETTINGS, "API_KEYS": KEY, "SSE_KEEPALIVE_INTERVAL": "0.5"}
    gateway = GatewayProcess(f"sqlite+aiosqlite:///{data_dir}/gateway.db", data_dir / "data", sim_network, namespace,
                             settings=settings)
    failed_before = request.session.testsfailed
    try:
        gateway.start()
        ids = [gateway.create(f"api-{n}") for n in range(INSTANCES)]
        for instance_id in ids:
            gateway.call("POST", f"/api/instances/{instance_id}/start")
        accounts = {}
        for n, instance_id in enumerate(ids):
            gateway.wait_running(instance_id)
            accounts[instance_id] = account = f"api-{n}@example.com"
            gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(sim_network.aistudio_url, account))
        for instance_id in ids:
            gateway.wait_running(instance_id)
        yield Fleet(gateway, sim_network, accounts)
    finally:
        gateway.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, gateway)
        remove_namespace(engine, namespace)
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})


def _overlapped(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return max(a["started_at"], b["started_at"]) < min(a["ended_at"], b["ended_at"])


def test_images_n2_as_base64_and_as_urls_run_on_both_instances_at_once(fleet: Fleet) -> None:
    fleet.fresh(latency_ms=1500)
    client = fleet.openai()
    answer = client.images.generate(model="gemini-2.5-flash-image", prompt="a lighthouse", n=2, size="1792x1024")
    assert len(answer.data) == 2
    assert all(base64.b64decode(item.b64_json).startswith(b"\x89PNG") for item in answer.data)
    assert {item.revised_prompt for item in answer.data} == {SIM_TEXT}
    first, second = fleet.generations()
    assert {first["account"], second["account"]} == set(fleet.accounts.values())
    assert _overlapped(first, second)
    assert {g["aspect_ratio"] for g in (first, second)} == {"16:9"} and first["prompt"] == "a lighthouse"

    fleet.fresh(latency_ms=200)
    urls = client.images.generate(prompt="a harbour", n=2, response_format="url")
    assert len(urls.data) == 2 and all(item.b64_json is None for item in urls.data)
    for item in urls.data:
        image = httpx.get(item.url, timeout=30)  # no key: the signature is the credential
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_an_edit_with_two_references(fleet: Fleet) -> None:
    fleet.fresh(latency_ms=200)
    references = [png_bytes(40, 30), png_bytes(30, 40)]
    answer = fleet.openai().images.edit(
        model="gemini-2.5-flash-image", prompt="the two together", size="1024x1536",
        image=[("a.png", references[0], "image/png"), ("b.png", references[1], "image/png")],
    )
    assert len(answer.data) == 1 and base64.b64decode(answer.data[0].b64_json).startswith(b"\x89PNG")
    (generation,) = fleet.generations()
    assert len(generation["uploads"]) == 2 and generation["aspect_ratio"] == "2:3"


def test_chat_with_an_image_input_streaming_and_not(fleet: Fleet) -> None:
    fleet.fresh(latency_ms=1500)
    reference = png_bytes(32, 32)
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "paint this as a watercolour"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(reference).decode()}},
    ]}]
    client = fleet.openai()
    completion = client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)
    message = completion.choices[0].message
    image_url = (message.model_extra or {})["images"][0]["image_url"]["url"]
    assert image_url.startswith("data:image/png;base64,") and f"]({image_url})" in message.content
    assert message.content.startswith(SIM_TEXT)

    stream = client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages, stream=True)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert content.startswith(SIM_TEXT) and "](data:image/png;base64," in content
    generations = fleet.generations()
    assert [len(g["uploads"]) for g in generations] == [1, 1]
    assert {g["prompt"] for g in generations} == {"paint this as a watercolour"}

    # Keep-alive comments while the task runs (1.5 s against a 0.5 s interval), then [DONE].
    body = {"model": "gemini-2.5-flash-image", "messages": messages, "stream": True}
    with httpx.stream("POST", f"{fleet.gateway.api_url}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=180) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert ": keep-alive" in lines and lines[-1] == "data: [DONE]"


def test_generate_content_with_image_config(fleet: Fleet) -> None:
    fleet.fresh(latency_ms=200)
    reference = png_bytes(24, 24)
    client = fleet.gemini()  # held: a collected client closes its connections under a running call
    answer = client.models.generate_content(
        model="gemini-3-pro-image",
        contents=[genai_types.Part.from_bytes(data=reference, mime_type="image/png"), "the same, at dusk"],
        config=genai_types.GenerateContentConfig(image_config=genai_types.ImageConfig(aspect_ratio="21:9", image_size="2K")),
    )
    parts = answer.candidates[0].content.parts
    assert parts[0].text == SIM_TEXT
    image = parts[1].inline_data
    assert image.mime_type == "image/png" and image.data.startswith(b"\x89PNG")
    (generation,) = fleet.generations()
    assert (generation["model"], generation["aspect_ratio"], generation["image_size"]) == ("gemini-3-pro-image", "21:9", "2K")
    assert len(generation["uploads"]) == 1 and generation["prompt"] == "the same, at dusk"


def test_generate_content_stream(fleet: Fleet) -> None:
    """google-genai streams by default in many chat apps: its SSE form, through the gateway image."""
    fleet.fresh(latency_ms=200)
    client = fleet.gemini()  # held: a collected client closes its connections under a running call
    chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash-image", contents="一座雪山，日出"))
    parts = [part for chunk in chunks for part in chunk.candidates[0].content.parts]
    assert [p.text for p in parts if p.text] == [SIM_TEXT]
    (image,) = [p.inline_data for p in parts if p.inline_data]
    assert image.mime_type == "image/png" and image.data.startswith(b"\x89PNG")
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    (generation,) = fleet.generations()
    assert generation["model"] == "gemini-2.5-flash-image" and generation["prompt"] == "一座雪山，日出"


def test_anthropic_messages_stream_and_an_edit_carrying_the_image(fleet: Fleet) -> None:
    """The official anthropic client, streaming in Chinese, then the next turn with the answer sent back: the
    signed link in its Markdown is read from the kept result and uploaded to the real page as the reference."""
    fleet.fresh(latency_ms=1000)
    client = anthropic.Anthropic(base_url=fleet.gateway.api_url, api_key=KEY, max_retries=0, timeout=180)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "一座雪山，日出"}]
    with client.messages.stream(model="gemini-2.5-flash-image", max_tokens=1024, messages=messages,
                                extra_body={"size": "16:9"}) as stream:
        first = stream.get_final_message()
    text, picture = (block.text for block in first.content)
    assert text == SIM_TEXT and first.stop_reason == "end_turn"
    url = picture[picture.index("(") + 1:-1]
    image = httpx.get(url, timeout=30)  # no key: the signature is the credential
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

    messages += [{"role": "assistant", "content": first.content}, {"role": "user", "content": "加上一只鹰"}]
    second = client.messages.create(model="gemini-2.5-flash-image", max_tokens=1024, messages=messages)
    assert second.content[0].text == SIM_TEXT
    made, edited = fleet.generations()
    assert made["prompt"] == "一座雪山，日出" and made["aspect_ratio"] == "16:9" and made["uploads"] == []
    # the same account's kept chat, continued with the new words: the page sends the image made along
    assert (edited["account"], edited["chat_id"]) == (made["account"], made["chat_id"])
    assert edited["uploads"] == [] and edited["prompt"] == "加上一只鹰"
    assert edited["history_images"] == [hashlib.sha256(image.content).hexdigest()]


def uploaded_as(image: bytes) -> str:
    """The sha256 the page records for a reference: the instance re-encodes every reference it takes."""
    return hashlib.sha256(reencode(image, 0, 40_000_000).data).hexdigest()


def test_an_openai_chat_edits_in_three_turns_in_one_chat(fleet: Fleet) -> None:
    """As a chat app sends it (each turn resends the history with the answers' Markdown): on the real page, the
    later turns continue the first turn's chat on its account, which sends the model the images made so far."""
    fleet.fresh(latency_ms=200)
    client = fleet.openai()
    messages: list[dict[str, Any]] = []
    made: list[bytes] = []
    for request in ("a cat on a sofa", "now make it red", "add a hat"):
        messages.append({"role": "user", "content": request})
        answer = client.chat.completions.create(model="gemini-2.5-flash-image", messages=messages)  # type: ignore[arg-type]
        content = answer.choices[0].message.content or ""
        made.append(base64.b64decode(content[content.index("base64,") + 7:content.rindex(")")]))
        messages.append({"role": "assistant", "content": content})
    first, second, third = fleet.generations()
    assert first["uploads"] == [] and first["prompt"] == "a cat on a sofa"
    assert {g["chat_id"] for g in (first, second, third)} == {first["chat_id"]}
    assert [(g["prompt"], g["uploads"]) for g in (second, third)] == [("now make it red", []), ("add a hat", [])]
    assert second["history_images"] == [sha(made[0])] and third["history_images"] == [sha(made[0]), sha(made[1])]


def sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def test_a_gemini_chat_edits_in_three_turns_and_a_lost_chat_uploads_the_earlier_images(fleet: Fleet) -> None:
    """google-genai's own chat session keeps the history (the model's inline images included). The second turn
    continues the kept chat; an operator's navigation then leaves it, so the third is a new chat on the real page
    that uploads the second image and the first (newest first), with the earlier requests as context."""
    fleet.fresh(latency_ms=200)
    client = fleet.gemini()  # held: a collected client closes its connections under a running call
    chat = client.chats.create(model="gemini-2.5-flash-image")
    made = []
    for request in ("一只猫坐在沙发上", "把它变成红色", "再加一顶帽子"):
        if len(made) == 2:
            account = fleet.generations()[-1]["account"]
            holder = next(i for i, a in fleet.accounts.items() if a == account)
            fleet.gateway.call("POST", f"/api/instances/{holder}/navigate", json={"target": "home"})
        answer = chat.send_message(request)
        made.append(next(p.inline_data.data for p in answer.candidates[0].content.parts if p.inline_data))
    first, second, third = fleet.generations()
    assert first["uploads"] == [] and second["uploads"] == [] and second["chat_id"] == first["chat_id"]
    assert second["prompt"] == "把它变成红色" and second["history_images"] == [sha(made[0])]
    assert third["chat_id"] != first["chat_id"] and third["history_images"] == []
    assert [u["sha256"] for u in third["uploads"]] == [uploaded_as(made[1]), uploaded_as(made[0])]
    assert third["prompt"].startswith("再加一顶帽子\n\n") and third["prompt"].endswith("- 一只猫坐在沙发上\n- 把它变成红色")

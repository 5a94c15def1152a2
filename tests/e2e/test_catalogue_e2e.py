"""Today's models through the built images: a real instance container (its Chromium on the simulator container's
page) signed in, the gateway on the docker runtime with an operator's alias set.

The simulator's model picker lists a model the packaged catalogue lacks, with ratios of its own. The instance reads
it from its page; the gateway lists it (the official `openai` client sees it in /v1/models), and serves it end to
end with a ratio only that page showed. A retired model gets `model_retired` naming its successor; the retired name
the operator mapped on purpose runs its target and the answer says which model ran. An operator's catalogue edit
is listed at once, with no release, and a bad edit changes nothing."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import openai
import pytest

from fleet_contract import catalogue
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import GatewayProcess, SimulatorNetwork, new_namespace, print_fleet_logs, remove_namespace
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

NEW = "gemini-nano-banana-2.2"  # the page offers it; the packaged data does not know it
EXTRA = {"id": NEW, "label": "Nano Banana 2.2", "ratios": ["1:1", "16:9", "8:1"], "sizes": ["1K", "2K"]}
MAPPED = "imagen-4.0-generate-001"  # retired; the operator maps it on purpose for a client that cannot change
RETIRED = "gemini-3.1-flash-image"  # retired and not mapped


@pytest.fixture
def aliased_gateway(
    engine: docker.DockerClient, sim_network: SimulatorNetwork, database_url: str, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[GatewayProcess]:
    default = catalogue.load().default_model
    settings = {**FAST_SETTINGS, "MODEL_ALIASES": f"{MAPPED}={default}"}
    process = GatewayProcess(database_url, tmp_path / "data", sim_network, new_namespace("cat"), settings=settings)
    failed_before = request.session.testsfailed
    try:
        process.start()
        yield process
    finally:
        process.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, process)
        remove_namespace(engine, process.namespace)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_a_model_only_the_page_offers_is_served_and_retired_names_are_answered(
    aliased_gateway: GatewayProcess, sim_network: SimulatorNetwork
) -> None:
    gateway = aliased_gateway
    default = catalogue.load().default_model
    assert catalogue.load().find(NEW) is None
    control(sim_network.control_url, "/_sim/reset", {})
    control(sim_network.control_url, "/_sim/config", {"signin_required": False, "extra_models": [EXTRA]})
    instance_id = gateway.create("catalogue")
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id)
    client = openai.OpenAI(base_url=f"{gateway.api_url}/v1", api_key="unused", max_retries=0, timeout=120)
    api = httpx.Client(base_url=gateway.api_url, timeout=180, trust_env=False)
    try:
        # The page's picker reached the gateway: listed with the page's own options, to the official client too.
        listed = wait_until(lambda: {m.id: m for m in client.models.list().data}, until=lambda found: NEW in found,
                            timeout=90, pause=1.0, what=f"{NEW} in /v1/models")
        assert default in listed and RETIRED not in listed and MAPPED not in listed, sorted(listed)
        new = listed[NEW].model_dump()
        assert (new["aspect_ratios"], new["image_sizes"], new["packaged"]) == (["1:1", "16:9", "8:1"], ["1K", "2K"], False)
        assert listed[default].model_dump()["offered_by_pages"] is True

        # Served end to end with a ratio and size only that page showed.
        made = api.post("/generate", json={"prompt": "一根很长的香蕉", "model": NEW, "aspect_ratio": "8:1", "image_size": "2K"})
        body = made.json()
        assert made.status_code == 200 and body["success"] is True and body["model"] == NEW, body
        assert _png_size(base64.b64decode(body["generated_images"][0])) == (2048, 256)
        [generation] = control(sim_network.control_url, "/_sim/record")["generations"]
        assert (generation["model"], generation["aspect_ratio"], generation["prompt"]) == (NEW, "8:1", "一根很长的香蕉")
        refused = api.post("/generate", json={"prompt": "p", "model": NEW, "aspect_ratio": "4:3"})
        assert refused.status_code == 422, refused.text

        # A retired model names its successor; the retired name the operator mapped runs its target.
        retired = api.post("/generate", json={"prompt": "p", "model": RETIRED})
        assert retired.status_code == 422 and "model_retired" in retired.text and default in retired.text, retired.text
        with pytest.raises(openai.UnprocessableEntityError) as shut:
            client.images.generate(model=RETIRED, prompt="p")
        assert shut.value.body["code"] == "model_retired"
        mapped = api.post("/generate", json={"prompt": "a red circle", "model": MAPPED})
        assert mapped.status_code == 200 and mapped.json()["model"] == default, mapped.text
        assert [g["model"] for g in control(sim_network.control_url, "/_sim/record")["generations"]] == [NEW, default]

        # The operator's edit: listed at once; a bad edit is refused with its reason and the good one stays.
        edit = {"version": "ops-1", "models": [{"id": "gemini-nano-banana-2.3", "name": "Nano Banana 2.3",
                                                "aspect_ratios": ["1:1"], "image_sizes": ["1K"], "references": True}]}
        saved = gateway.http.put("/api/catalogue/", json=edit)
        assert saved.status_code == 200, saved.text
        bad = gateway.http.put("/api/catalogue/", json={"models": [{"id": "x-1", "aspect_ratios": []}]})
        assert bad.status_code in (400, 422) and "aspect_ratios" in bad.text, bad.text
        assert "gemini-nano-banana-2.3" in {m.id for m in client.models.list().data}
        panel = gateway.http.get("/catalogue", headers={"Accept-Language": "zh-CN"})
        assert panel.status_code == 200 and "模型目录" in panel.text and "gemini-nano-banana-2.3" in panel.text
        assert NEW in panel.text
    finally:
        client.close()
        api.close()
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})

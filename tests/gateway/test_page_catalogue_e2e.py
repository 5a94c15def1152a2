"""End to end, with the project's simulator and a real instance (local runtime, Chromium): the simulator's model
picker lists a model the packaged catalogue lacks; the instance reads it and the ratios its run settings show, the
gateway keeps them, lists the model, and serves it through /generate with one of those ratios."""

from __future__ import annotations

import base64
import json
import random
import sys
from pathlib import Path

import httpx
import pytest

from fleet_contract.catalogue import load as load_catalogue
from gateway.app import Fleet, create_api_app
from gateway.runtime.local import LocalRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import serve
from tests.instance.harness import png_size, require_chromium, signed_in_state
from tests.polling import await_until
from tests.simulator.fixtures import control, simulator_server, simulator_url  # noqa: F401

ACCOUNT = "acct-e2e-catalogue"
NEW = "gemini-nano-banana-2.2"
EXTRA = {"id": NEW, "label": "Nano Banana 2.2", "ratios": ["1:1", "16:9", "8:1"], "sizes": ["1K", "2K"]}


async def test_a_model_only_the_page_offers_is_served_end_to_end(tmp_path: Path, simulator_url: str) -> None:  # noqa: F811
    require_chromium()
    assert load_catalogue().find(NEW) is None  # the packaged data lacks it
    control(simulator_url, f"/_sim/accounts/{ACCOUNT}/config", {"extra_models": [EXTRA], "latency_ms": 50})
    runtime = LocalRuntime(tmp_path / "instances", sys.executable, port_range_start=random.randrange(21000, 29000),
                           chromium_path="/usr/bin/chromium")
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/gateway.db", tmp_path, runtime="local",
                             aistudio_url=simulator_url, signin_url=simulator_url + "/ServiceLogin?continue={continue}",
                             reconcile_interval=0.5, start_timeout=60.0, stop_timeout=5.0, probe_timeout=5.0)
    fleet = await Fleet.open(settings, runtime=runtime)
    try:
        session = json.dumps(signed_in_state(simulator_url, ACCOUNT)).encode()
        view = await fleet.instances.create("e2e-catalogue", session=session)
        await fleet.instances.start(view.instance_id)
        async with serve(create_api_app(settings, fleet=fleet)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                async def listed() -> dict:
                    return {m["id"]: m for m in (await http.get("/v1/models")).json()["data"]}

                models = await await_until(listed, until=lambda found: NEW in found, timeout=90,
                                           what="the page's extra model in /v1/models")
                assert models[NEW]["aspect_ratios"] == ["1:1", "16:9", "8:1"] and models[NEW]["packaged"] is False
                assert models[NEW]["image_sizes"] == ["1K", "2K"]
                answer = await http.post("/generate", json={"prompt": "a long banana", "model": NEW,
                                                             "aspect_ratio": "8:1", "image_size": "2K"})
                body = answer.json()
                assert answer.status_code == 200 and body["success"] is True, body
                assert body["model"] == NEW
                image = body["generated_images"][0]
                assert png_size(base64.b64decode(image)) == (2048, 256)
                refused = await http.post("/generate", json={"prompt": "p", "model": NEW, "aspect_ratio": "4:3"})
                assert refused.status_code == 422
        generation = control(simulator_url, "/_sim/record")["generations"][-1]
        assert (generation["account"], generation["model"], generation["aspect_ratio"]) == (ACCOUNT, NEW, "8:1")
    finally:
        await fleet.instances.stop(view.instance_id) if "view" in locals() else None
        await fleet.close()

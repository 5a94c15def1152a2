"""Access control, bad input that never reaches the browser, Chromium crashes, and selector reloads."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from instance.selectors import load_packaged
from tests.instance.conftest import sim
from tests.instance.harness import b64, chromium_browser_pid, png_bytes, signed_in_state, start_instance
from tests.polling import wait_until

BAD_BODIES = [
    ({}, 422, "prompt"),
    ({"prompt": "   "}, 422, "prompt"),
    ({"prompt": 42}, 422, "prompt"),
    ({"prompt": "x" * 10_001}, 422, "10000"),
    ({"prompt": "x", "aspect_ratio": "7:3"}, 422, "aspect_ratio"),
    ({"prompt": "x", "reference_images_b64": "abc"}, 422, "list"),
    ({"prompt": "x", "reference_images_b64": ["%%%not base64%%%"]}, 422, "base64"),
    ({"prompt": "x", "reference_images_b64": [b64(b"plain text, not an image")]}, 422, "image"),
    ({"prompt": "x", "reference_images_b64": ["data:image/png,abc"]}, 422, "base64"),
    ({"prompt": "x", "reference_images_b64": [b64(png_bytes())] * 5}, 422, "at most 4"),
    ({"prompt": "x", "reference_images_b64": [b64(png_bytes(pad_to=9 * 1024 * 1024))]}, 413, "larger"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD_BODIES)
def test_bad_input_is_refused_before_the_browser(inst, simulator_url, body, status, says):
    before = inst.status()["counters"]
    answer = inst.client.post("/generate", json=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]
    assert answer.json()["error"]["code"] == "bad_input"
    assert sim(simulator_url, "/_sim/record")["generations"] == []
    assert inst.status()["counters"] == before


def test_broken_json_and_oversized_body(inst, simulator_url):
    assert inst.client.post("/generate", content=b"{not json").status_code == 400
    huge = inst.client.post("/generate", content=b'{"prompt": "' + b"x" * (49 * 1024 * 1024) + b'"}')
    assert huge.status_code == 413
    assert sim(simulator_url, "/_sim/record")["generations"] == []


def test_every_endpoint_but_healthz_needs_the_token(inst):
    anonymous = httpx.Client(base_url=inst.base_url, timeout=10)
    assert anonymous.get("/healthz").json() == {"ok": True}
    for method, path in [("GET", "/status"), ("GET", "/session"), ("PUT", "/session"), ("POST", "/generate"),
                         ("GET", "/screenshot"), ("POST", "/navigate"), ("POST", "/selectors/reload")]:
        answer = anonymous.request(method, path, json={})
        assert answer.status_code == 401, (method, path)
        assert "cookies" not in answer.text
    wrong = anonymous.get("/session", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ws_url = inst.base_url.replace("http", "ws") + "/liveview?token=nope"
    with pytest.raises(InvalidStatus) as refused:
        with connect(ws_url) as ws:
            ws.recv(timeout=3)
    assert refused.value.response.status_code in (401, 403)  # refused at the handshake, not dropped later


def test_chromium_killed_mid_task_is_restarted(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-crash")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        sim(simulator_url, "/_sim/config", {"latency_ms": 4000})
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(inst.generate("doomed").json()))
        worker.start()
        inst.wait_for(lambda s: s["busy"], timeout=5, what="busy")
        # Wait until the prompt reached the simulator, then kill the browser process from outside.
        wait_until(lambda: sim(simulator_url, "/_sim/record")["in_flight_by_account"].get("acct-crash"), timeout=5,
                   what="the prompt to reach the simulator", pause=0.1)
        os.kill(chromium_browser_pid(inst.process.pid), signal.SIGKILL)
        worker.join(timeout=30)
        assert result["success"] is False
        assert result["error"]["code"] == "internal_error"
        assert result["error"]["retry_safe"] is False  # AI Studio had the prompt already
        status = inst.wait_for(lambda s: s["browser"] == "up" and s["ready"], what="browser back up")
        assert status["counters"]["browser_restarts"] == 1
        sim(simulator_url, "/_sim/config", {"latency_ms": 100})
        answer = inst.generate("after the crash").json()
        assert answer["success"], answer


def test_selectors_reload_from_the_volume_without_restart(inst, simulator_url):
    override = inst.data_dir / "selectors.json"
    override.write_text(json.dumps({"version": "test-override", "roles": {"run_button": ["button.no-such-run"]}}))
    try:
        assert inst.client.post("/selectors/reload").json()["version"] == "test-override"
        answer = inst.generate("with a broken selector").json()
        assert answer["error"]["code"] == "ui_changed"
        assert answer["error"]["role"] == "run_button"
    finally:
        override.unlink()
        assert inst.client.post("/selectors/reload").json()["version"] == load_packaged().version
    assert inst.generate("fixed again").json()["success"]

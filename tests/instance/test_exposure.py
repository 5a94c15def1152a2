"""Who may reach an instance: no open listener beyond loopback, the token only in headers (the WebSocket
excepted), and no live view for another site's pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.instance.harness import REPO_ROOT, TOKEN
from tests.polling import wait_until
from tests.simulator.fixtures import free_port, stop_process


def _instance_env(host: str, port: int, tmp_path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTANCE_")}
    env.update(INSTANCE_HOST=host, INSTANCE_PORT=str(port), INSTANCE_DATA_DIR=str(tmp_path / "data"),
               # No browser is needed to test the listener: its start fails in the background and is logged.
               INSTANCE_BROWSER_MODE="headless-shell", INSTANCE_CHROMIUM_PATH="/bin/false")
    if token is not None:
        env["INSTANCE_API_TOKEN"] = token
    return env


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_no_token_beyond_loopback_exits_at_start(tmp_path, host):
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "instance"], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=_instance_env(host, port, tmp_path, None), timeout=60)
    assert done.returncode != 0
    assert "INSTANCE_API_TOKEN" in done.stderr and host in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.parametrize(("host", "token"), [("127.0.0.1", None), ("localhost", None), ("0.0.0.0", TOKEN)])
def test_loopback_or_a_token_starts(tmp_path, host, token):
    port = free_port()
    log = (tmp_path / "instance.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "instance"], cwd=REPO_ROOT, stdout=log,
                               stderr=subprocess.STDOUT, env=_instance_env(host, port, tmp_path, token))
    try:
        def healthz() -> httpx.Response:
            assert process.poll() is None, (tmp_path / "instance.log").read_text()
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

        answer = wait_until(healthz, timeout=30, what="the instance to listen", ignore=(httpx.ConnectError,), pause=0.1)
        assert answer.json() == {"ok": True}, (tmp_path / "instance.log").read_text()
        status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5)
        assert status.status_code == (401 if token else 200)
    finally:
        stop_process(process)
        log.close()


def test_token_in_the_query_is_refused_on_http(inst):
    anonymous = httpx.Client(base_url=inst.base_url, timeout=10)
    for method, path in [("GET", "/status"), ("GET", "/session"), ("GET", "/screenshot")]:
        answer = anonymous.request(method, path, params={"token": TOKEN})
        assert answer.status_code == 401, (method, path, answer.text)
        assert "cookies" not in answer.text
    assert anonymous.get("/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def _ws_url(inst, query: str = "") -> str:
    return inst.base_url.replace("http", "ws", 1) + "/liveview" + query


def _first_message_type(url: str, **kwargs) -> str:
    with connect(url, max_size=16 * 1024 * 1024, open_timeout=10, **kwargs) as ws:
        return json.loads(ws.recv(timeout=10))["type"]


def test_liveview_takes_the_query_token_and_same_origin_pages(inst):
    # No Origin: a program such as the gateway's relay, with the token in the query or the header.
    assert _first_message_type(_ws_url(inst, f"?token={TOKEN}")) == "frame"
    assert _first_message_type(_ws_url(inst), additional_headers={"Authorization": f"Bearer {TOKEN}"}) == "frame"
    # A page served by the instance's own origin.
    assert _first_message_type(_ws_url(inst, f"?token={TOKEN}"), origin=inst.base_url) == "frame"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_liveview_refuses_a_foreign_origin_at_the_handshake(inst, origin):
    with pytest.raises(InvalidStatus) as refused:
        with connect(_ws_url(inst, f"?token={TOKEN}"), origin=origin, open_timeout=10):
            pass
    assert refused.value.response.status_code == 403


def test_liveview_refuses_a_wrong_token_at_the_handshake(inst):
    with pytest.raises(InvalidStatus) as refused:
        with connect(_ws_url(inst, "?token=nope"), open_timeout=10):
            pass
    assert refused.value.response.status_code == 403

"""Google's refusal page ("This browser or app may not be secure") is its own login state."""

from __future__ import annotations

import json
import time

from websockets.sync.client import connect

from tests.instance.conftest import sim
from tests.instance.harness import TOKEN, start_instance
from tests.instance.test_session import _click, _element_centres


def test_refusal_after_the_email_step_is_reported_as_signin_refused(simulator_url, fresh_dir):
    centres = _element_centres(simulator_url)
    sim(simulator_url, "/_sim/config", {"signin_refused": True})
    with start_instance(simulator_url, fresh_dir) as inst:
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        with connect(inst.base_url.replace("http", "ws") + f"/liveview?token={TOKEN}") as ws:
            ws.recv(timeout=10)  # the first frame: the page is on screen
            _click(ws, centres["email"])
            ws.send(json.dumps({"type": "text", "text": "acct-refused"}))
            _click(ws, centres["next1"])
            status = inst.wait_for(lambda s: s["login_state"] == "signin_refused", what="signin_refused")
        assert "/v3/signin/rejected" in status["page_url"]
        # Trying again from the start is an ordinary sign-in page: a person may sign in another way.
        sim(simulator_url, "/_sim/config", {"signin_refused": False})
        inst.client.post("/navigate", json={"target": "signin"})
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login again")
        time.sleep(1.5)  # the refusal watcher looks once a second: it must not flip the state back
        assert inst.status()["login_state"] == "needs_login"

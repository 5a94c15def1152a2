"""Login state: detection, imports, the session file on the volume, and sign-in through the live view."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
from websockets.sync.client import connect

from tests.instance.conftest import sim
from tests.instance.harness import TOKEN, signed_in_state, start_instance, wait_saved_renewal
from tests.polling import wait_until
from tests.simulator.fixtures import signin_field_centres

AUTH = ("SID", "HSID", "SSID", "APISID", "SAPISID")


def _cookie_export(sim_url: str, account: str) -> list[dict]:
    """What a browser extension (EditThisCookie / Cookie-Editor) exports."""
    host = httpx.URL(sim_url).host
    return [
        {"domain": host, "expirationDate": time.time() + 86400, "hostOnly": True, "httpOnly": True, "name": n,
         "path": "/", "sameSite": "no_restriction", "secure": False, "session": False, "storeId": "0",
         "value": account, "id": i}
        for i, n in enumerate(AUTH)
    ]


def _saved_sid(data_dir) -> str | None:
    path = data_dir / "storage_state.json"
    if not path.exists():
        return None  # written in the background after the login is seen
    state = json.loads(path.read_text())
    return next((c["value"] for c in state["cookies"] if c["name"] == "SID"), None)


def test_no_session_means_needs_login_and_a_retry_safe_refusal(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir) as inst:
        status = inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        assert "/ServiceLogin" in status["page_url"]
        answer = inst.generate("hello").json()
        assert answer["error"]["code"] == "needs_login"
        assert answer["error"]["retry_safe"] is True
        assert sim(simulator_url, "/_sim/record")["generations"] == []


@pytest.mark.parametrize("shape", ["storage_state", "cookie_list", "extension_export"])
def test_session_import_shapes_sign_the_instance_in(simulator_url, fresh_dir, shape):
    state = signed_in_state(simulator_url, f"acct-{shape}")
    payload = {
        "storage_state": state,
        "cookie_list": state["cookies"],
        "extension_export": _cookie_export(simulator_url, f"acct-{shape}"),
    }[shape]
    with start_instance(simulator_url, fresh_dir) as inst:
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        answer = inst.client.put("/session", json=payload)
        assert answer.status_code == 200, answer.text
        assert answer.json()["login_state"] == "logged_in"
        assert _saved_sid(fresh_dir) == f"acct-{shape}"
        exported = inst.client.get("/session").json()
        assert {c["name"] for c in exported["cookies"]} >= set(AUTH)
        assert inst.generate("after import").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][0]["account"] == f"acct-{shape}"


def test_bad_session_uploads_change_nothing(simulator_url, fresh_dir):
    session = signed_in_state(simulator_url, "acct-keep")
    with start_instance(simulator_url, fresh_dir, session=session, INSTANCE_MAX_SESSION_BYTES="4096") as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        before = (fresh_dir / "storage_state.json").read_bytes()
        for body in (b"not json", b'{"cookies": "nope"}', b'[{"name": "SID"}]', b"42"):
            answer = inst.client.put("/session", content=body)
            assert answer.status_code in (400, 422), answer.text
            assert answer.json()["detail"]
        huge = inst.client.put("/session", json=[{"name": "x", "value": "y" * 8000, "domain": "a"}])
        assert huge.status_code == 413
        assert (fresh_dir / "storage_state.json").read_bytes() == before
        assert inst.status()["login_state"] == "logged_in"


@pytest.mark.parametrize("content", [b'{"cookies": [{"name": "SID", "val', b"\x00\xff garbage", b""])
def test_corrupt_or_truncated_session_file_is_set_aside(simulator_url, fresh_dir, content):
    fresh_dir.mkdir(parents=True)
    (fresh_dir / "storage_state.json").write_bytes(content)
    with start_instance(simulator_url, fresh_dir) as inst:
        status = inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        assert status["browser"] == "up"
        assert list(fresh_dir.glob("storage_state.json.corrupt-*"))


def test_expired_google_auth_cookies_mean_needs_login(simulator_url, fresh_dir):
    state = signed_in_state(simulator_url, "acct-old")
    for cookie in state["cookies"]:
        cookie["expires"] = time.time() - 3600
    with start_instance(simulator_url, fresh_dir, session=state) as inst:
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        assert inst.generate("x").json()["error"]["code"] == "needs_login"


def test_session_revoked_at_google_is_detected_on_the_next_task(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-gone")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        sim(simulator_url, "/_sim/accounts/acct-gone/revoke", {})
        inst.client.post("/navigate", json={"target": "home"})
        answer = inst.generate("x").json()
        assert answer["error"]["code"] == "needs_login"
        assert inst.status()["login_state"] == "needs_login"


def test_session_is_written_back_at_shutdown(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir) as inst:
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        (fresh_dir / "storage_state.json").unlink(missing_ok=True)
    # The process saved its (empty) state on SIGTERM, atomically: no temp files left behind.
    assert json.loads((fresh_dir / "storage_state.json").read_text())["cookies"] == []
    assert not list(fresh_dir.glob(".storage_state.*"))


def _element_centres(sim_url: str) -> dict[str, tuple[float, float]]:
    """Where the sign-in page's fields are at the instance's viewport, measured in a second browser."""
    from playwright.sync_api import sync_playwright

    from instance.settings import InstanceSettings

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=InstanceSettings().chromium_executable, args=["--no-sandbox"])
        try:
            return signin_field_centres(browser, sim_url)
        finally:
            browser.close()


def _click(ws, point) -> None:
    ws.send(json.dumps({"type": "mouse", "event": "click", "x": point[0], "y": point[1]}))


def test_sign_in_through_the_live_view(simulator_url, fresh_dir):
    centres = _element_centres(simulator_url)
    with start_instance(simulator_url, fresh_dir) as inst:
        inst.wait_for(lambda s: s["login_state"] == "needs_login", what="needs_login")
        ws_url = inst.base_url.replace("http", "ws") + f"/liveview?token={TOKEN}"
        with connect(ws_url, max_size=16 * 1024 * 1024) as ws:
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] == "frame"
            assert base64.b64decode(frame["data"])[:3] == b"\xff\xd8\xff"  # JPEG
            assert frame["width"] == 1440
            _click(ws, centres["email"])
            ws.send(json.dumps({"type": "text", "text": "acct-live"}))
            _click(ws, centres["next1"])
            time.sleep(0.5)
            _click(ws, centres["password"])
            ws.send(json.dumps({"type": "text", "text": "密码-secret"}))
            ws.send(json.dumps({"type": "key", "event": "press", "key": "Tab"}))
            _click(ws, centres["next2"])
            inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in after live sign-in")
            frames_after = sum(1 for _ in range(3) if json.loads(ws.recv(timeout=10))["type"] == "frame")
            assert frames_after == 3
        wait_until(lambda: _saved_sid(fresh_dir), until=lambda sid: sid == "acct-live", timeout=10,
                   what="the live sign-in saved", pause=0.1)
        assert inst.generate("signed in by hand").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][0]["account"] == "acct-live"


def test_navigate_to_signin_and_screenshot(inst):
    shot = inst.client.get("/screenshot")
    assert shot.headers["content-type"] == "image/png"
    assert shot.content[:8] == b"\x89PNG\r\n\x1a\n"
    jpeg = inst.client.get("/screenshot", params={"format": "jpeg"})
    assert jpeg.content[:3] == b"\xff\xd8\xff"
    answer = inst.client.post("/navigate", json={"target": "signin"}).json()
    assert "/ServiceLogin" in answer["url"]
    assert inst.client.post("/navigate", json={"url": "javascript:alert(1)"}).status_code == 422
    inst.client.post("/navigate", json={"target": "home"})
    inst.wait_for(lambda s: s["login_state"] == "logged_in", what="back home")


def test_session_is_written_back_every_n_tasks(simulator_url, fresh_dir):
    session = signed_in_state(simulator_url, "acct-periodic")
    sim(simulator_url, "/_sim/config", {"rotate_cookie": "off"})  # no renewals: only the task count saves
    with start_instance(simulator_url, fresh_dir, session=session, INSTANCE_SESSION_SAVE_EVERY_TASKS="2") as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        wait_saved_renewal(fresh_dir, simulator_url, "acct-periodic")  # the first load's cookie, saved at once
        (fresh_dir / "storage_state.json").unlink()
        assert inst.generate("one").json()["success"]
        # A sleep: a save would run in the background after the answer, and nothing shows that none was started.
        time.sleep(0.5)
        assert _saved_sid(fresh_dir) is None  # not after one task
        assert inst.generate("two").json()["success"]
        wait_until(lambda: _saved_sid(fresh_dir), until=lambda sid: sid == "acct-periodic", timeout=10,
                   what="the session saved after the second task", pause=0.1)


def _refused_by_the_browser(sim_url: str, kind: str) -> dict:
    """Parseable imports that Chromium refuses: a __Secure- cookie without Secure, an origin it cannot open."""
    state = signed_in_state(sim_url, "acct-new")
    if kind == "cookie":
        state["cookies"].append({"name": "__Secure-1PSID", "value": "acct-new", "domain": httpx.URL(sim_url).host,
                                 "path": "/", "secure": False, "sameSite": "Lax"})
    else:
        state["origins"] = [{"origin": "not a url", "localStorage": [{"name": "k", "value": "v"}]}]
    return state


@pytest.mark.parametrize(("kind", "says"), [("cookie", "__Secure-1PSID"), ("origin", "invalid URL")])
def test_a_session_the_browser_refuses_changes_nothing(simulator_url, fresh_dir, kind, says):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-keep")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        wait_saved_renewal(fresh_dir, simulator_url, "acct-keep")  # the load renewed a cookie, saved at once
        stored = (fresh_dir / "storage_state.json").read_bytes()
        answer = inst.client.put("/session", json=_refused_by_the_browser(simulator_url, kind))
        assert answer.status_code == 422, answer.text
        assert "refused" in answer.json()["detail"] and says in answer.json()["detail"], answer.text
        assert (fresh_dir / "storage_state.json").read_bytes() == stored
        status = inst.status()
        assert status["login_state"] == "logged_in" and "/prompts/" in status["page_url"]
        exported = {c["name"]: c["value"] for c in inst.client.get("/session").json()["cookies"]}
        assert exported["SID"] == "acct-keep" and "__Secure-1PSID" not in exported
        assert inst.generate("still the old login").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][0]["account"] == "acct-keep"

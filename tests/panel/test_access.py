"""Admin access, CSRF, origins, escaping and languages of the panel and the management API, in process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.panel.conftest import TOKEN, csrf_token, served
from tests.polling import await_until

REPO = Path(__file__).resolve().parents[2]
HTMX = {"HX-Request": "true"}


async def signed_in(client: AsyncTestClient[Any]) -> str:
    """Signs the client in through the form; returns the CSRF token for what follows."""
    form = await client.get("/login")
    response = await client.post(
        "/login", data={"token": TOKEN, "next": "/", "_csrf_token": csrf_token(form.text)}, follow_redirects=False
    )
    assert response.status_code in (302, 303)
    return csrf_token((await client.get("/")).text)


async def test_a_page_without_a_session_goes_to_the_sign_in_form(guarded: AsyncTestClient[Any]) -> None:
    response = await guarded.get("/instances/x", follow_redirects=False)
    assert response.status_code in (302, 303)
    assert response.headers["location"] == "/login?next=%2Finstances%2Fx"
    # htmx follows HX-Redirect rather than a redirect it would swap into the page.
    response = await guarded.get("/", headers=HTMX, follow_redirects=False)
    assert response.status_code == 401 and response.headers["hx-redirect"].startswith("/login")
    login = await guarded.get("/login")
    assert login.status_code == 200 and 'name="token"' in login.text and "管理员令牌" in login.text


async def test_the_session_cookie_is_signed_http_only_and_same_site_strict(guarded: AsyncTestClient[Any]) -> None:
    form = await guarded.get("/login")
    wrong = await guarded.post("/login", data={"token": "nope", "_csrf_token": csrf_token(form.text)})
    assert wrong.status_code == 401 and "data-login-failed" in wrong.text
    assert "fleet_admin" not in guarded.cookies
    right = await guarded.post(
        "/login", data={"token": TOKEN, "next": "/tasks", "_csrf_token": csrf_token(form.text)}, follow_redirects=False
    )
    assert right.headers["location"] == "/tasks"
    cookie = right.headers["set-cookie"]
    assert cookie.startswith("fleet_admin=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert (await guarded.get("/tasks")).status_code == 200
    # A cookie whose signature does not match is no session.
    value = guarded.cookies["fleet_admin"]
    guarded.cookies.clear()
    guarded.cookies.set("fleet_admin", value[:-4] + ("0000" if not value.endswith("0000") else "1111"))
    assert (await guarded.get("/tasks", follow_redirects=False)).status_code in (302, 303)


async def test_sign_in_cannot_send_the_browser_elsewhere(guarded: AsyncTestClient[Any]) -> None:
    form = await guarded.get("/login")
    response = await guarded.post(
        "/login", data={"token": TOKEN, "next": "//evil.example/", "_csrf_token": csrf_token(form.text)},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/"


async def test_the_api_takes_the_token_as_bearer_and_the_cookie_only_for_reading(guarded: AsyncTestClient[Any]) -> None:
    anonymous = await guarded.get("/api/instances", headers={"Accept-Language": "en"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized" and "GATEWAY_ADMIN_TOKEN" in anonymous.json()["message"]
    assert (await guarded.get("/api/instances", headers={"Authorization": "Bearer wrong"})).status_code == 401
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    created = await guarded.post("/api/instances", json={"name": "by-api"}, headers=bearer)
    assert created.status_code == 200
    await signed_in(guarded)
    assert (await guarded.get("/api/instances")).json()["total_count"] == 1
    # A browser sends the cookie by itself, so it never authorizes a change through the API.
    refused = await guarded.post("/api/instances", json={"name": "by-cookie"})
    assert refused.status_code == 401
    assert (await guarded.get("/api/instances", headers=bearer)).json()["total_count"] == 1


async def test_the_live_view_socket_needs_a_credential_and_this_site(guarded_app: Litestar) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with served(guarded_app) as base:
        url = base.replace("http", "ws") + "/api/instances/00000000-0000-0000-0000-000000000000/liveview"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {**bearer, "Origin": "http://evil.example"}):
            with pytest.raises(InvalidStatus):
                await connect(url, additional_headers=headers, proxy=None)
        async with connect(url, additional_headers={**bearer, "Origin": base}, proxy=None) as socket:
            message = json.loads(await socket.recv())
        # Let in: what stops it now is the unknown instance, said in the reader's language.
        assert message["type"] == "error" and "不存在" in message["message"]


async def test_the_live_view_of_a_stopped_instance_says_so_and_closes(guarded_app: Litestar) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with served(guarded_app) as base:
        instance_id = (await guarded_app.state.fleet.instances.create("resting")).instance_id
        url = base.replace("http", "ws") + f"/api/instances/{instance_id}/liveview"
        headers = {"Authorization": f"Bearer {TOKEN}", "Origin": base, "Accept-Language": "en"}
        async with connect(url, additional_headers=headers, proxy=None) as socket:
            message = json.loads(await asyncio.wait_for(socket.recv(), 10))
            with pytest.raises(ConnectionClosed):  # closed by the gateway, not left hanging
                await asyncio.wait_for(socket.recv(), 10)
    assert message["type"] == "error" and "resting" in message["message"] and "not running" in message["message"]


async def test_every_panel_action_needs_the_csrf_token(panel: AsyncTestClient[Any]) -> None:
    token = csrf_token((await panel.get("/")).text)
    missing = await panel.post("/instances", data={"name": "alpha"}, headers=HTMX)
    forged = await panel.post("/instances", data={"name": "alpha"}, headers={**HTMX, "X-CSRFToken": "0" * 128})
    for response in (missing, forged):
        assert response.status_code == 403 and "CSRF" in response.text
        assert response.headers["hx-retarget"] == "#flash"
    assert (await panel.get("/api/instances")).json()["total_count"] == 0
    done = await panel.post("/instances", data={"name": "alpha"}, headers={**HTMX, "X-CSRFToken": token})
    assert done.status_code == 200 and "alpha" in done.text
    instance_id = (await panel.get("/api/instances")).json()["instances"][0]["instance_id"]
    for method, path in (("POST", f"/instances/{instance_id}/start"), ("DELETE", f"/instances/{instance_id}"),
                         ("POST", "/logout"), ("POST", "/lang")):
        assert (await panel.request(method, path, headers=HTMX)).status_code == 403, path
    assert (await panel.get("/api/instances")).json()["instances"][0]["target"] == "stopped"


async def test_a_change_sent_from_another_site_is_refused(panel: AsyncTestClient[Any]) -> None:
    response = await panel.post("/api/instances", json={"name": "x"}, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and response.json()["error"] == "origin_mismatch"
    assert (await panel.get("/api/instances")).json()["total_count"] == 0
    same_site = await panel.post("/api/instances", json={"name": "x"}, headers={"Origin": "http://testserver.local"})
    assert same_site.status_code == 200


async def test_user_supplied_strings_are_escaped(panel: AsyncTestClient[Any]) -> None:
    token = csrf_token((await panel.get("/")).text)
    script = "<script>alert(1)</script>"
    rejected = await panel.post("/instances", data={"name": script}, headers={**HTMX, "X-CSRFToken": token})
    assert rejected.status_code == 422
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rejected.text and script not in rejected.text
    # A whole page for the same mistake (no htmx) escapes it just the same.
    page = await panel.post("/instances", data={"name": script, "_csrf_token": token})
    assert page.status_code == 422 and script not in page.text and "&lt;script&gt;" in page.text


async def test_chinese_by_default_english_by_accept_language_or_the_switch(panel: AsyncTestClient[Any]) -> None:
    chinese = await panel.get("/")
    for label in ("总实例数", "运行中", "可用实例", "并发能力", "忙碌", "排队任务", "间隔休息中", "需要登录"):
        assert label in chinese.text
    english = await panel.get("/", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert "Total instances" in english.text and "Concurrency capacity" in english.text and "总实例数" not in english.text
    switched = await panel.post("/lang", data={"lang": "en", "next": "/tasks", "_csrf_token": csrf_token(chinese.text)}, follow_redirects=False)
    assert switched.headers["location"] == "/tasks"
    after = await panel.get("/", headers={"Accept-Language": "zh-CN"})
    assert "Total instances" in after.text
    # The switch also speaks for the API's messages.
    missing = await panel.get("/api/instances/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["message"].startswith("Instance ")


async def test_action_errors_come_back_as_messages_and_change_nothing(panel: AsyncTestClient[Any]) -> None:
    token = csrf_token((await panel.get("/")).text)
    headers = {**HTMX, "X-CSRFToken": token, "Accept-Language": "en"}
    await panel.post("/instances", data={"name": "busy-one"}, headers=headers)
    instance_id = (await panel.get("/api/instances")).json()["instances"][0]["instance_id"]
    await panel.post(f"/instances/{instance_id}/start", headers=headers)
    refused = await panel.delete(f"/instances/{instance_id}", headers=headers)
    assert refused.status_code == 409 and "stop it before deleting it" in refused.text
    empty = await panel.post(f"/instances/{instance_id}/session", files={"other": ("x.txt", b"")}, headers=headers)
    assert empty.status_code == 422 and "Choose a session file" in empty.text
    unknown = await panel.post("/instances/nope/stop", headers=headers)
    assert unknown.status_code == 404 and "does not exist" in unknown.text
    assert (await panel.get("/api/instances")).json()["total_count"] == 1


async def test_logs_download_as_a_text_file_named_after_the_instance(panel: AsyncTestClient[Any]) -> None:
    instance_id = (await panel.post("/api/instances", json={"name": "日志-1"})).json()["instance_id"]
    await panel.post(f"/api/instances/{instance_id}/start")
    await await_until(lambda: panel.get(f"/api/instances/{instance_id}"),
                      until=lambda r: r.json()["instance"]["status"] == "running", timeout=5, what="the instance running")
    response = await panel.get(f"/instances/{instance_id}/logs.txt")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "attachment; filename*=UTF-8''%E6%97%A5%E5%BF%97-1-" in response.headers["content-disposition"]
    assert "instance 日志-1 starting" in response.text


async def test_an_unknown_instance_page_says_so(panel: AsyncTestClient[Any]) -> None:
    response = await panel.get("/instances/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and "不存在" in response.text and "<html" in response.text


def test_the_gateway_refuses_an_exposed_admin_listener_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(tmp_path), GATEWAY_ADMIN_HOST="0.0.0.0", GATEWAY_ADMIN_PORT="0", GATEWAY_API_PORT="0")
    result = subprocess.run([sys.executable, "-m", "gateway"], cwd=REPO, env=env, capture_output=True, timeout=30)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert "refusing to start" in message and "GATEWAY_ADMIN_TOKEN" in message and "0.0.0.0" in message
    assert not (tmp_path / "gateway.db").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("host", "token", "refused"),
    [("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False), ("127.0.0.2", None, False),
     ("0.0.0.0", None, True), ("::", None, True), ("10.1.2.3", None, True), ("gateway", None, True), ("0.0.0.0", "", True),
     ("0.0.0.0", "t0ken", False)],
)
def test_which_admin_listeners_need_a_token(host: str, token: str | None, refused: bool, tmp_path: Path) -> None:
    from tests.gateway.conftest import make_settings

    settings = make_settings("sqlite+aiosqlite://", tmp_path, admin_host=host, admin_token=token)
    assert (settings.admin_exposure_problem() is not None) == refused

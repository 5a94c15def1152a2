"""Egress proxies and the `unreachable` state in the gateway: the management API and the panel over the fake
runtime, on SQLite and Postgres. Proxies are checked to be stored, masked when shown, kept out of events, and
handed to the instance's environment at its next start; refusals change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from pydantic import ValidationError

from gateway.app import create_admin_app
from fleet_contract.proxy import mask_proxy, parse_proxy
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import IsolatedSettings, make_settings
from tests.panel.conftest import csrf_token
from tests.polling import await_until

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh"}
SECRET = "pa55-w0rd"
OWN = f"socks5://alice:{SECRET}@10.0.0.2:1080"
DEFAULT = f"http://fleet:{SECRET}@proxy.example:3128"


@pytest.fixture
async def admin_with_default(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Client]:
    """The management API of a gateway whose fleet-wide default proxy is DEFAULT."""
    app = create_admin_app(make_settings(database_url, tmp_path, default_proxy=DEFAULT), runtime=fake)
    async with AsyncTestClient(app) as client:
        yield client


async def create(admin: Client, name: str, proxy: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name} if proxy is None else {"name": name, "proxy": proxy}
    response = await admin.post("/api/instances", json=body, headers=EN)
    assert response.status_code == 200, response.text
    return response.json()


async def view(admin: Client, instance_id: str) -> dict[str, Any]:
    return (await admin.get(f"/api/instances/{instance_id}")).json()["instance"]


async def events(admin: Client, instance_id: str) -> list[dict[str, Any]]:
    return list(reversed((await admin.get(f"/api/instances/{instance_id}/events?limit=100")).json()["events"]))


async def view_until(admin: Client, instance_id: str, field: str, value: str) -> dict[str, Any]:
    return await await_until(lambda: view(admin, instance_id), until=lambda current: current[field] == value,
                             timeout=5, what=f"{field} {value}")


async def start_and_wait(admin: Client, instance_id: str) -> dict[str, Any]:
    assert (await admin.post(f"/api/instances/{instance_id}/start")).status_code == 200
    return await view_until(admin, instance_id, "status", "running")


async def stop_and_wait(admin: Client, instance_id: str) -> None:
    assert (await admin.post(f"/api/instances/{instance_id}/stop")).status_code == 200
    await view_until(admin, instance_id, "status", "stopped")


# ---- the URL rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://10.0.0.2:3128", "http://10.0.0.2:3128"),
        ("https://u:p@proxy.example:443", "https://u***:***@proxy.example:443"),
        ("socks5://alice:secret@10.0.0.2:1080", "socks5://a***:***@10.0.0.2:1080"),
        ("SOCKS5H://bob@[2001:db8::1]:1080", "socks5h://b***:***@[2001:db8::1]:1080"),
    ],
)
def test_accepted_proxies_and_their_masked_form(url: str, masked: str) -> None:
    assert parse_proxy(url).masked == masked
    assert mask_proxy(url) == masked


# ---- create, change, clear -------------------------------------------------------------------------


async def test_create_with_a_proxy_shows_it_masked_and_records_the_event_without_the_secret(admin: Client) -> None:
    body = await create(admin, "with-proxy", OWN)
    assert SECRET not in str(body)
    assert body["instance"]["proxy"] == "socks5://a***:***@10.0.0.2:1080"
    assert body["instance"]["effective_proxy"] == body["instance"]["proxy"]
    listing = (await admin.get("/api/instances")).text
    assert SECRET not in listing and "a***:***@10.0.0.2:1080" in listing
    recorded = await events(admin, body["instance_id"])
    assert [e["kind"] for e in recorded] == ["created", "proxy_changed"]
    assert "socks5://a***:***@10.0.0.2:1080" in recorded[1]["message"] and SECRET not in str(recorded)


async def test_patch_changes_and_clears_the_proxy_from_the_next_start(admin: Client, fake: FakeRuntime) -> None:
    instance_id = (await create(admin, "patched"))["instance_id"]
    assert (await view(admin, instance_id))["proxy"] is None
    await start_and_wait(admin, instance_id)
    assert "INSTANCE_PROXY" not in fake.containers[instance_id].env

    changed = await admin.patch(f"/api/instances/{instance_id}", json={"proxy": OWN}, headers=EN)
    assert changed.status_code == 200, changed.text
    assert changed.json()["changed"] is True and SECRET not in changed.text
    assert "next start" in changed.json()["message"] and "a***:***@10.0.0.2:1080" in changed.json()["message"]
    # Running on: the container keeps the environment it was started with.
    assert "INSTANCE_PROXY" not in fake.containers[instance_id].env
    await stop_and_wait(admin, instance_id)
    await start_and_wait(admin, instance_id)
    assert fake.containers[instance_id].env["INSTANCE_PROXY"] == OWN

    again = await admin.patch(f"/api/instances/{instance_id}", json={"proxy": OWN}, headers=EN)
    assert again.json()["changed"] is False

    cleared = await admin.patch(f"/api/instances/{instance_id}", json={"proxy": None}, headers=ZH)
    assert cleared.status_code == 200 and cleared.json()["instance"]["proxy"] is None
    assert "不使用代理" in cleared.json()["message"]
    assert (await admin.patch(f"/api/instances/{instance_id}", json={"proxy": ""})).json()["changed"] is False
    await stop_and_wait(admin, instance_id)
    await start_and_wait(admin, instance_id)
    assert "INSTANCE_PROXY" not in fake.containers[instance_id].env
    kinds = [e["kind"] for e in await events(admin, instance_id)]
    assert kinds.count("proxy_changed") == 2


async def test_the_fleet_default_applies_to_instances_without_their_own(admin_with_default: Client, fake: FakeRuntime) -> None:
    admin = admin_with_default
    plain = (await create(admin, "uses-default"))["instance_id"]
    own = (await create(admin, "uses-own", OWN))["instance_id"]
    shown = await view(admin, plain)
    assert shown["proxy"] is None and shown["effective_proxy"] == "http://f***:***@proxy.example:3128"
    await start_and_wait(admin, plain)
    await start_and_wait(admin, own)
    assert fake.containers[plain].env["INSTANCE_PROXY"] == DEFAULT
    assert fake.containers[own].env["INSTANCE_PROXY"] == OWN
    cleared = await admin.patch(f"/api/instances/{own}", json={"proxy": ""}, headers=EN)
    assert "fleet's default proxy (http://f***:***@proxy.example:3128)" in cleared.json()["message"]
    assert SECRET not in cleared.text


BAD_PROXIES = [
    ("ftp://10.0.0.2:21", "proxy_invalid_scheme", "Proxy type not supported", "不支持这种代理类型"),
    ("socks4://10.0.0.2:1080", "proxy_invalid_scheme", "socks5://", "socks5://"),
    ("10.0.0.2:3128", "proxy_invalid_scheme", "http://", "http://"),
    ("http://10.0.0.2", "proxy_invalid_port", "port", "端口"),
    ("http://10.0.0.2:99999", "proxy_invalid_port", "port", "端口"),
    ("http://10.0.0.2:0", "proxy_invalid_port", "port", "端口"),
    ("http://:3128", "proxy_invalid_host", "no host", "缺少主机"),
    ("http://10.0.0.2:3128/path", "proxy_invalid_malformed", "without a path", "不带路径"),
    ("http://10.0.0.2:3128?x=1", "proxy_invalid_malformed", "not a valid URL", "格式不对"),
    ("http://u:p w@10.0.0.2:3128", "proxy_invalid_malformed", "not a valid URL", "格式不对"),
]


@pytest.mark.parametrize(("proxy", "key", "english", "chinese"), BAD_PROXIES)
async def test_bad_proxies_are_refused_in_both_languages_and_change_nothing(
    admin: Client, proxy: str, key: str, english: str, chinese: str
) -> None:
    instance_id = (await create(admin, "kept", OWN))["instance_id"]
    before = (await admin.get("/api/instances")).json()["instances"]
    events_before = await events(admin, instance_id)

    refused = await admin.post("/api/instances", json={"name": "refused", "proxy": proxy}, headers=EN)
    assert refused.status_code == 422 and refused.json()["error"] == key and english in refused.json()["message"]
    patched = await admin.patch(f"/api/instances/{instance_id}", json={"proxy": proxy}, headers=ZH)
    assert patched.status_code == 422 and patched.json()["error"] == key and chinese in patched.json()["message"]
    for answer in (refused, patched):
        assert SECRET not in answer.text and "p w" not in answer.text

    assert (await admin.get("/api/instances")).json()["instances"] == before
    assert await events(admin, instance_id) == events_before


async def test_patch_of_an_unknown_instance_or_without_the_field_changes_nothing(admin: Client) -> None:
    missing = await admin.patch("/api/instances/00000000-0000-0000-0000-000000000000", json={"proxy": OWN}, headers=EN)
    assert missing.status_code == 404
    instance_id = (await create(admin, "untouched"))["instance_id"]
    for body in ({}, {"proxy": 42}):
        answer = await admin.patch(f"/api/instances/{instance_id}", json=body, headers=EN)
        assert answer.status_code == 400, answer.text
    assert (await view(admin, instance_id))["proxy"] is None


def test_a_bad_fleet_default_stops_the_gateway_without_showing_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        IsolatedSettings(data_dir=tmp_path, default_proxy=f"ftp://u:{SECRET}@h:21")
    assert "GATEWAY_DEFAULT_PROXY" in str(caught.value) and SECRET not in str(caught.value)
    assert IsolatedSettings(data_dir=tmp_path, default_proxy="").default_proxy is None
    assert SECRET not in repr(IsolatedSettings(data_dir=tmp_path, default_proxy=DEFAULT))


# ---- unreachable ------------------------------------------------------------------------------------


async def test_unreachable_instance_leaves_the_pool_with_its_error_and_comes_back(admin: Client, fake: FakeRuntime) -> None:
    instance_id = (await create(admin, "far-away"))["instance_id"]
    running = await start_and_wait(admin, instance_id)
    assert running["available"] is True and running["page_error"] is None
    error = "net::ERR_PROXY_CONNECTION_FAILED at https://aistudio.google.com/prompts/new_chat"
    fake.set_unreachable(instance_id, error)
    shown = await view_until(admin, instance_id, "login_state", "unreachable")
    assert shown["page_error"] == error and shown["available"] is False
    stats = (await admin.get("/api/stats")).json()["stats"]
    assert stats["available_instances"] == 0 and stats["running_instances"] == 1
    assert shown["aistudio_reach"] == "unreachable"
    kinds = {e["kind"] for e in await events(admin, instance_id)}
    assert "login_state_changed" not in kinds  # the login itself did not change
    changes = [e["message"] for e in await events(admin, instance_id) if e["kind"] == "aistudio_reach_changed"]
    assert changes == [f"AI Studio unreachable: {error}"]

    fake.set_reachable(instance_id)
    recovered = await view_until(admin, instance_id, "login_state", "logged_in")
    assert recovered["page_error"] is None and recovered["available"] is True
    assert recovered["aistudio_reach"] == "reachable"


# ---- the panel ---------------------------------------------------------------------------------------


async def test_panel_creates_and_changes_proxies_through_the_same_service(admin: Client, fake: FakeRuntime) -> None:
    htmx = {"HX-Request": "true", "X-CSRFToken": csrf_token((await admin.get("/")).text)}
    created = await admin.post("/instances", data={"name": "from-panel", "proxy": OWN}, headers={**EN, **htmx})
    assert created.status_code == 200, created.text
    (item,) = (await admin.get("/api/instances")).json()["instances"]
    assert item["proxy"] == "socks5://a***:***@10.0.0.2:1080"
    page = await admin.get(f"/instances/{item['instance_id']}", headers=EN)
    assert "socks5://a***:***@10.0.0.2:1080" in page.text and SECRET not in page.text

    refused = await admin.post(f"/instances/{item['instance_id']}/proxy", data={"proxy": "ftp://x:1"}, headers={**EN, **htmx})
    assert refused.status_code == 422 and "Proxy type not supported" in refused.text
    cleared = await admin.post(f"/instances/{item['instance_id']}/proxy", data={"proxy": ""}, headers={**ZH, **htmx})
    assert cleared.status_code == 200 and "不使用代理" in cleared.text
    assert (await view(admin, item["instance_id"]))["proxy"] is None

    fake_error = "net::ERR_NAME_NOT_RESOLVED at https://aistudio.google.com/"
    await start_and_wait(admin, item["instance_id"])
    fake.set_unreachable(item["instance_id"], fake_error)

    async def page() -> str:
        return (await admin.get(f"/instances/{item['instance_id']}", headers=ZH)).text

    text = await await_until(page, until=lambda shown: 'data-login="unreachable"' in shown, timeout=5,
                             what="the page to show the instance unreachable")
    assert fake_error in text and "无法访问 AI Studio" in text and "页面错误" in text

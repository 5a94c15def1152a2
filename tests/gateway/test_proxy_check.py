"""The "test proxy" action and loopback proxies in the API and the panel, over the fake runtime (whose instances
share this machine's loopback, like the local runtime's) with real HTTP and SOCKS5 proxies (tests/proxies.py) on
127.0.0.1: success with latency and the exit address the proxy reports, each failure in plain words, the
password never shown; and a loopback proxy refused where the engine cannot reach it."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.panel.conftest import csrf_token
from tests.proxies import ProxyThread

Client = AsyncTestClient[Any]
EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh"}
SECRET = "pr0xy-s3cret"


@pytest.fixture
def target() -> Iterator[int]:
    """Where the proxies are asked to connect: a port that accepts (the kernel's backlog is enough)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def silent() -> Iterator[int]:
    """A "proxy" that takes the connection and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return server.getsockname()[1]


@pytest.fixture
def proxies() -> Iterator[dict[str, ProxyThread]]:
    started = {
        "http": ProxyThread("http", username="u", password=SECRET).start(),
        "socks5": ProxyThread("socks5", username="u", password=SECRET).start(),
        "socks5-open": ProxyThread("socks5").start(),
    }
    yield started
    for proxy in started.values():
        proxy.close()


@pytest.fixture
async def admin(sqlite_url: str, tmp_path: Path, fake: FakeRuntime, target: int) -> AsyncIterator[Client]:
    settings = make_settings(sqlite_url, tmp_path, proxy_test_target=f"127.0.0.1:{target}", proxy_test_timeout=1.0)
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as client:
        yield client


async def check(admin: Client, body: dict[str, Any], headers: dict[str, str] = EN) -> dict[str, Any]:
    answer = await admin.post("/api/proxies/test", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert SECRET not in answer.text
    return answer.json()


async def test_working_proxies_report_latency_and_the_exit_address_they_report(
    admin: Client, proxies: dict[str, ProxyThread], target: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    socks = await check(admin, {"proxy": proxies["socks5"].url()})
    assert socks["success"] is True and socks["error"] is None and socks["via"] == "direct"
    assert 0 < socks["latency_ms"] < 1000 and socks["connect_ms"] <= socks["latency_ms"]
    assert socks["exit_address"].startswith("127.0.0.1:")  # the SOCKS5 reply's bound address
    assert socks["proxy"] == f"socks5://u***:***@127.0.0.1:{proxies['socks5'].port}"
    assert f"127.0.0.1:{target}" in socks["message"] and socks["exit_address"] in socks["message"]
    assert proxies["socks5"].carried == [f"127.0.0.1:{target}"]

    http = await check(admin, {"proxy": proxies["http"].url()}, ZH)
    assert http["success"] is True and http["exit_address"] is None and 0 < http["latency_ms"] < 1000
    assert "HTTP 代理不会报告出口地址" in http["message"]
    assert proxies["http"].carried == [f"127.0.0.1:{target}"]
    assert SECRET not in caplog.text
    print(f"\nproxy test latency: socks5 {socks['latency_ms']} ms, http {http['latency_ms']} ms")


@pytest.mark.parametrize(
    ("which", "code", "english"),
    [
        ("http-wrong-password", "auth_failed", "refused the user name or password"),
        ("socks5-wrong-password", "auth_failed", "refused the user name or password"),
        ("http-no-login", "auth_required", "asks for a login"),
        ("socks5-no-login", "auth_required", "asks for a login"),
        ("refused", "refused", "nothing listens there"),
        ("dns", "dns", "cannot be resolved"),
        ("timeout", "timeout", "no answer within 1 s"),
    ],
)
async def test_each_failure_is_said_in_plain_words(
    admin: Client, proxies: dict[str, ProxyThread], silent: int, closed_port: int, which: str, code: str, english: str
) -> None:
    urls = {
        "http-wrong-password": proxies["http"].url().replace(SECRET, "wrong"),
        "socks5-wrong-password": proxies["socks5"].url().replace(SECRET, "wrong"),
        "http-no-login": proxies["http"].url(login=False),
        "socks5-no-login": proxies["socks5"].url(login=False),
        "refused": f"socks5://u:{SECRET}@127.0.0.1:{closed_port}",
        "dns": f"http://u:{SECRET}@no-such-proxy.invalid:3128",
        "timeout": f"http://u:{SECRET}@127.0.0.1:{silent}",
    }
    result = await check(admin, {"proxy": urls[which]})
    assert result["success"] is False and result["error_code"] == code, result
    assert english in result["error"] and result["latency_ms"] is None
    assert result["message"].startswith("The proxy ") and "does not work" in result["message"]


async def test_a_target_the_proxy_cannot_reach_is_said_so(
    proxies: dict[str, ProxyThread], closed_port: int, sqlite_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = make_settings(sqlite_url, tmp_path, proxy_test_target=f"127.0.0.1:{closed_port}", proxy_test_timeout=2.0)
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as client:
        http = await check(client, {"proxy": proxies["http"].url()}, ZH)
        socks = await check(client, {"proxy": proxies["socks5-open"].url()})
    assert http["error_code"] == "target" and "HTTP 502" in http["error"] and "代理连不到" in http["error"]
    assert socks["error_code"] == "target" and "connection refused by the target" in socks["error"]


async def test_an_instance_is_tested_with_its_own_proxy_or_the_default(
    admin: Client, proxies: dict[str, ProxyThread], sqlite_url: str, tmp_path: Path, fake: FakeRuntime, target: int
) -> None:
    created = await admin.post("/api/instances", json={"name": "own", "proxy": proxies["socks5"].url()})
    own = created.json()["instance_id"]
    assert (await check(admin, {"instance_id": own}))["source"] == "instance"
    bare = (await admin.post("/api/instances", json={"name": "bare"})).json()["instance_id"]
    nothing = await admin.post("/api/proxies/test", json={"instance_id": bare}, headers=EN)
    assert nothing.status_code == 422 and nothing.json()["error"] == "proxy_test_nothing"
    assert (await admin.post("/api/proxies/test", json={}, headers=EN)).json()["error"] == "proxy_test_nothing"

    settings = make_settings(sqlite_url, tmp_path, default_proxy=proxies["http"].url(),
                             proxy_test_target=f"127.0.0.1:{target}", proxy_test_timeout=1.0)
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as other:
        default = await check(other, {})
        assert default["success"] is True and default["source"] == "default"
        uses_default = await check(other, {"instance_id": bare})
        assert uses_default["success"] is True and uses_default["source"] == "instance"


@pytest.mark.parametrize(
    ("body", "status", "key"),
    [
        ({"proxy": "ftp://h:21"}, 422, "proxy_invalid_scheme"),
        ({"proxy": "http://h"}, 422, "proxy_invalid_port"),
        ({"proxy": "  "}, 422, "proxy_invalid_empty"),
        ({"proxy": "http://h:1", "instance_id": "00000000-0000-0000-0000-000000000000"}, 422, "proxy_test_both"),
        ({"instance_id": "00000000-0000-0000-0000-000000000000"}, 404, "instance_not_found"),
        ({"instance_id": "nope"}, 404, "instance_not_found"),
        ({"proxy": 42}, 400, "invalid_body"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(admin: Client, body: dict[str, Any], status: int, key: str) -> None:
    answer = await admin.post("/api/proxies/test", json=body, headers=EN)
    assert answer.status_code == status and answer.json()["error"] == key, answer.text
    assert "proxy" in answer.json()["message"].lower() or "instance" in answer.json()["message"].lower()


async def test_a_loopback_proxy_is_refused_where_the_engine_cannot_reach_it(
    admin: Client, fake: FakeRuntime, proxies: dict[str, ProxyThread]
) -> None:
    fake.loopback_problem = "kubernetes"
    loopback = f"socks5://u:{SECRET}@127.0.0.1:7890"
    refused = await admin.post("/api/instances", json={"name": "k8s", "proxy": loopback}, headers=EN)
    assert refused.status_code == 422 and refused.json()["error"] == "proxy_loopback_kubernetes"
    assert "Allow LAN" in refused.json()["message"] and "socks5://192.168.1.10:7890" in refused.json()["message"]
    assert SECRET not in refused.text
    instance_id = (await admin.post("/api/instances", json={"name": "k8s"})).json()["instance_id"]
    patched = await admin.patch(f"/api/instances/{instance_id}", json={"proxy": "http://localhost:7890"}, headers=ZH)
    assert patched.status_code == 422 and "允许局域网连接" in patched.json()["message"]
    tested = await check(admin, {"proxy": loopback})
    assert tested["success"] is False and tested["error_code"] == "loopback_unsupported" and "Allow LAN" in tested["error"]
    fake.loopback_problem = "remote_docker"
    refused = await admin.post("/api/instances", json={"name": "remote", "proxy": "http://127.0.0.1:7890"}, headers=EN)
    assert refused.status_code == 422 and "another machine" in refused.json()["message"]
    # Other addresses are not concerned.
    assert (await admin.patch(f"/api/instances/{instance_id}", json={"proxy": "http://10.0.0.3:3128"})).status_code == 200


async def test_the_panel_tests_the_typed_url_or_the_one_in_use(admin: Client, proxies: dict[str, ProxyThread]) -> None:
    page = await admin.get("/", headers=EN)
    assert 'data-action="test-proxy"' in page.text and "data-default-proxy-problem" not in page.text
    htmx = {"HX-Request": "true", "X-CSRFToken": csrf_token(page.text)}
    typed = await admin.post("/proxies/test", data={"proxy": proxies["socks5"].url()}, headers={**EN, **htmx})
    assert typed.status_code == 200 and "works" in typed.text and 'class="flash ok"' in typed.text
    assert SECRET not in typed.text
    instance_id = (await admin.post("/api/instances", json={"name": "p", "proxy": proxies["http"].url()})).json()["instance_id"]
    own = await admin.post("/proxies/test", data={"proxy": "", "instance_id": instance_id}, headers={**ZH, **htmx})
    assert own.status_code == 200 and "可用" in own.text and "毫秒" in own.text
    wrong = proxies["http"].url().replace(SECRET, "wrong")
    failed = await admin.post("/proxies/test", data={"proxy": wrong, "instance_id": instance_id}, headers={**EN, **htmx})
    assert 'class="flash error"' in failed.text and "refused the user name or password" in failed.text
    bad = await admin.post("/proxies/test", data={"proxy": "ftp://x:1"}, headers={**EN, **htmx})
    assert bad.status_code == 422 and "Proxy type not supported" in bad.text
    instance_page = await admin.get(f"/instances/{instance_id}", headers=EN)
    assert 'data-action="test-proxy"' in instance_page.text and "127.0.0.1:7890" in instance_page.text


async def test_the_panel_says_when_the_default_proxy_cannot_work_here(
    sqlite_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    fake.loopback_problem = "kubernetes"
    settings = make_settings(sqlite_url, tmp_path, default_proxy=f"socks5://u:{SECRET}@127.0.0.1:7890")
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as client:
        page = await client.get("/", headers=EN)
    assert "data-default-proxy-problem" in page.text and "Allow LAN" in page.text and SECRET not in page.text

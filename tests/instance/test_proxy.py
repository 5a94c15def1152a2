"""The browser's egress proxy with real Chromium against the simulator, and the `unreachable` login state.

The simulator is addressed by a name that only the test proxy resolves (HOST), so a page that loads at all
went through the proxy; the proxy also records every host it carried.
"""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest

from instance.proxy import ProxyConfigError, browser_proxy
from tests.instance.harness import signed_in_state, start_instance
from tests.proxies import ProxyThread

HOST = "aistudio.proxy-test"
SECRET = "s3cret:pw"
# The proxy is the same in every browser mode; the lightest one keeps these tests quick.
MODE = {"INSTANCE_BROWSER_MODE": "headless"}


def via_proxy_name(simulator_url: str) -> tuple[str, str]:
    """The simulator's URL under HOST, and the host:port the proxy records for it."""
    port = httpx.URL(simulator_url).port
    return f"http://{HOST}:{port}", f"{HOST}:{port}"


def instance_port(base_url: str) -> str:
    return str(httpx.URL(base_url).port)


def test_page_goes_through_an_http_proxy_with_a_login_and_the_api_does_not(simulator_url, fresh_dir):
    sim_url, carried_as = via_proxy_name(simulator_url)
    proxy = ProxyThread("http", username="fleet", password=SECRET, hosts={HOST: "127.0.0.1"}).start()
    try:
        session = signed_in_state(sim_url, "acct-http-proxy")
        with start_instance(sim_url, fresh_dir, session=session, INSTANCE_PROXY=proxy.url(), **MODE) as inst:
            status = inst.wait_for(lambda s: s["login_state"] == "logged_in", what="signed in through the proxy")
            assert status["page_error"] is None
            # The browser's own loopback pages (the instance's port here) go direct.
            moved = inst.client.post("/navigate", json={"url": f"{inst.base_url}/healthz"})
            assert moved.is_success and moved.json()["url"].endswith("/healthz"), moved.text
            answer = inst.generate("a red square, through the proxy").json()
            assert answer["success"], answer
            assert carried_as in proxy.carried
            assert proxy.proxy.refused_logins >= 1  # the proxy demanded the login, and the browser then gave it
            # The instance's API (this test's calls, the gateway's in production) never passed the proxy.
            assert not [c for c in proxy.carried if c.endswith(":" + instance_port(inst.base_url))]
            assert SECRET not in inst.log_path.read_text(errors="replace")
            assert SECRET not in inst.client.get("/status").text
    finally:
        proxy.close()


def test_socks5_with_a_login_goes_through_the_local_relay(simulator_url, fresh_dir):
    sim_url, carried_as = via_proxy_name(simulator_url)
    proxy = ProxyThread("socks5", username="fleet", password=SECRET, hosts={HOST: "127.0.0.1"}).start()
    try:
        session = signed_in_state(sim_url, "acct-socks-proxy")
        with start_instance(sim_url, fresh_dir, session=session, INSTANCE_PROXY=proxy.url(), **MODE) as inst:
            status = inst.wait_for(lambda s: s["login_state"] == "logged_in", what="signed in through SOCKS5")
            assert status["page_error"] is None
            assert inst.generate("a blue circle, through socks5").json()["success"]
            # Chromium asks the SOCKS5 proxy by name (remote DNS), and the relay's login was accepted.
            assert carried_as in proxy.carried
            assert proxy.proxy.refused_logins == 0
            assert SECRET not in inst.log_path.read_text(errors="replace")
    finally:
        proxy.close()


def test_the_socks5_relay_on_the_loopback_serves_only_who_has_its_login():
    """Under the local runtime the relay listens on the host's loopback: another process there (a SOCKS5 client,
    or an HTTP client without the relay's login) gets no tunnel through the instance's proxy account."""
    proxy = ProxyThread("socks5", username="fleet", password=SECRET, hosts={HOST: "127.0.0.1"}).start()

    async def attempts() -> dict[str, bytes]:
        relay = browser_proxy(proxy.url())
        other = browser_proxy(proxy.url())
        await relay.start()
        await other.start()
        target = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)  # what the tunnel would reach
        target_port = target.sockets[0].getsockname()[1]
        try:
            option, second = relay.launch_option(), other.launch_option()
            port = int(option["server"].rsplit(":", 1)[1])
            socks = b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(HOST)]) + HOST.encode() + target_port.to_bytes(2, "big")
            socks_answer = await _first_answer(port, socks)
            assert not socks_answer.startswith(b"\x05\x00"), "a SOCKS5 client without a login was served"
            assert (option["username"], option["password"]) != (second["username"], second["password"])
            wrong = base64.b64encode(f"{second['username']}:{second['password']}".encode()).decode()
            right = base64.b64encode(f"{option['username']}:{option['password']}".encode()).decode()
            connect = f"CONNECT {HOST}:{target_port} HTTP/1.1\r\nHost: {HOST}:{target_port}\r\n"
            return {
                "socks5 without a login": socks_answer,
                "http without a login": await _first_answer(port, (connect + "\r\n").encode()),
                "another relay's login": await _first_answer(port, (connect + f"Proxy-Authorization: Basic {wrong}\r\n\r\n").encode()),
                "its own login": await _first_answer(port, (connect + f"Proxy-Authorization: Basic {right}\r\n\r\n").encode()),
            }
        finally:
            target.close()
            await relay.close()
            await other.close()

    try:
        answers = asyncio.run(attempts())
        for refused in ("socks5 without a login", "http without a login", "another relay's login"):
            assert not answers[refused].startswith(b"\x05\x00"), refused  # no SOCKS5 "no login needed"
            assert not answers[refused].startswith(b"HTTP/1.1 200"), (refused, answers[refused])
        assert answers["http without a login"].startswith(b"HTTP/1.1 407")
        assert answers["its own login"].startswith(b"HTTP/1.1 200 Connection established"), answers["its own login"]
        assert len(proxy.carried) == 1 and proxy.carried[0].startswith(f"{HOST}:")  # only the one with the login reached the upstream proxy
    finally:
        proxy.close()


async def _first_answer(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


def test_dead_proxy_is_unreachable_with_the_browsers_error_until_it_comes_back(simulator_url, fresh_dir):
    sim_url, carried_as = via_proxy_name(simulator_url)
    proxy = ProxyThread("http", hosts={HOST: "127.0.0.1"}).start()
    proxy.stop()  # its port is known, and nothing listens there
    try:
        env = {**MODE, "INSTANCE_PROXY": proxy.url(), "INSTANCE_UNREACHABLE_RETRY_S": "0.5"}
        session = signed_in_state(sim_url, "acct-dead-proxy")
        with start_instance(sim_url, fresh_dir, session=session, **env) as inst:
            status = inst.wait_for(lambda s: s["reach"] == "unreachable", what="unreachable")
            # The API answers directly while the browser's proxy is down.
            assert status["ready"] is True
            assert "net::ERR_PROXY_CONNECTION_FAILED" in status["page_error"]
            assert status["page_url"].startswith("chrome-error://")
            # A task is refused as retry-safe: it never reached AI Studio.
            refused = inst.generate_between_checks("nowhere to go").json()
            assert refused["success"] is False and refused["error"]["retry_safe"] is True, refused
            proxy.start()
            # The background retry holds the task slot while it loads the page (busy), as a task would.
            back = lambda s: s["reach"] == "reachable" and s["login_state"] == "logged_in" and not s["busy"]  # noqa: E731
            status = inst.wait_for(back, timeout=30, what="back after the proxy")
            assert status["page_error"] is None
            assert carried_as in proxy.carried
            answer = inst.generate_between_checks("a green triangle, proxy back").json()
            assert answer["success"], f"{answer}\n{inst.log_tail()}"
    finally:
        proxy.close()


def test_name_that_does_not_resolve_is_unreachable(fresh_dir):
    with start_instance("http://aistudio.does-not-exist.invalid", fresh_dir, INSTANCE_PAGE_LOAD_ATTEMPTS="1", **MODE) as inst:
        status = inst.wait_for(lambda s: s["reach"] == "unreachable", what="unreachable")
        assert "ERR_NAME_NOT_RESOLVED" in status["page_error"] or "Timeout" in status["page_error"], status


def test_launch_option_keeps_a_socks5_login_in_the_relay_and_refuses_other_schemes():
    http = browser_proxy(f"http://fleet:{SECRET.replace(':', '%3A')}@10.0.0.2:3128")
    assert http.launch_option() == {
        "server": "http://10.0.0.2:3128", "username": "fleet", "password": SECRET, "bypass": "localhost,127.0.0.1,[::1]"
    }
    assert browser_proxy("socks5h://10.0.0.2:1080").launch_option()["server"] == "socks5://10.0.0.2:1080"

    async def relayed() -> dict:
        socks = browser_proxy(f"socks5://fleet:{SECRET}@10.0.0.2:1080")
        await socks.start()
        try:
            return socks.launch_option()
        finally:
            await socks.close()

    option = asyncio.run(relayed())
    # The relay's own login, not the upstream's: Chromium speaks HTTP to it with a per-process user and password.
    assert option["server"].startswith("http://127.0.0.1:") and option["username"].startswith("relay-")
    assert len(option["password"]) >= 24 and SECRET not in str(option)
    assert browser_proxy("") is None
    for bad in ("ftp://10.0.0.2:21", "http://10.0.0.2", f"socks4://u:{SECRET}@h:1"):
        with pytest.raises(ProxyConfigError) as caught:
            browser_proxy(bad)
        assert SECRET not in str(caught.value)

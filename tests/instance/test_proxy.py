"""The browser's egress proxy with real Chromium against the simulator, and the `unreachable` login state.

The simulator is addressed by a name that only the test proxy resolves (HOST), so a page that loads at all
went through the proxy; the proxy also records every host it carried.
"""

from __future__ import annotations

import asyncio

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
    assert option["server"].startswith("socks5://127.0.0.1:") and "username" not in option and SECRET not in str(option)
    assert browser_proxy("") is None
    for bad in ("ftp://10.0.0.2:21", "http://10.0.0.2", f"socks4://u:{SECRET}@h:1"):
        with pytest.raises(ProxyConfigError) as caught:
            browser_proxy(bad)
        assert SECRET not in str(caught.value)

"""The fake instance (gateway/runtime/fake.py, what every gateway test talks to) against the real one (the built
image, a container against the simulator container): the same requests to both, and the answers compared by
status code and by shape (the keys of the JSON body). A gateway test that passes on the fake then means
something for the real instance.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Any

import httpx
import pytest

from gateway.runtime.base import InstanceSpec
from gateway.runtime.fake import FakeRuntime
from tests.instance.harness import signed_in_state
from tests.instance.test_container import TOKEN, engine, pair  # noqa: F401 - the container fixtures
from tests.polling import await_until, wait_until
from tests.simulator.fixtures import control

pytestmark = pytest.mark.docker

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Fake:
    """The fake instance's HTTP handler, called in-process through its transport, one started container."""

    def __init__(self) -> None:
        self.runtime = FakeRuntime()
        state = asyncio.run(self.runtime.start(InstanceSpec(instance_id="contract", name="contract", token=TOKEN, env={})))
        self.url = state.endpoint or ""

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.runtime.http_transport, base_url=self.url) as client:
                response = await client.request(method, path, headers=AUTH, **kwargs)
                await response.aread()
                return response

        return asyncio.run(send())


def shape(response: httpx.Response) -> tuple[int, frozenset[str]]:
    body = response.json()
    return response.status_code, frozenset(body) if isinstance(body, dict) else frozenset({type(body).__name__})


def real_call(pair: dict, method: str, path: str, **kwargs: Any) -> httpx.Response:  # noqa: F811
    return httpx.request(method, pair["url"] + path, headers=AUTH, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def both(pair: dict) -> tuple[Fake, dict]:  # noqa: F811
    """The real instance signed in and ready, the fake likewise."""
    wait_until(lambda: real_call(pair, "GET", "/status").json().get("ready"), timeout=120,
               what="the real instance to be ready", ignore=(httpx.HTTPError, ValueError), pause=0.2)
    state = signed_in_state("http://" + pair["sim_host"] + ":9000", "contract@example.com")
    assert real_call(pair, "PUT", "/session", json=state).status_code == 200
    fake = Fake()
    assert fake.call("PUT", "/session", json=state).status_code == 200
    control(pair["sim"], "/_sim/config", {"latency_ms": 200, "mode": "ok"})
    return fake, pair


def compare(both: tuple[Fake, dict], method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    fake, pair = both
    real = real_call(pair, method, path, **kwargs)
    faked = fake.call(method, path, **kwargs)
    return real, faked


def assert_same_shape(real: httpx.Response, faked: httpx.Response, *, optional: set[str] = frozenset()) -> None:
    """Same status; every key the real one sends, the fake sends too (bar `optional`), and the fake invents none."""
    (real_status, real_keys), (fake_status, fake_keys) = shape(real), shape(faked)
    assert fake_status == real_status, (real.text[:300], faked.text[:300])
    assert real_keys - optional <= fake_keys, f"the fake lacks {sorted(real_keys - fake_keys)}"
    assert fake_keys <= real_keys, f"the fake invents {sorted(fake_keys - real_keys)}"


def test_status(both: tuple[Fake, dict]) -> None:
    real, faked = compare(both, "GET", "/status")
    assert_same_shape(real, faked)
    for answer in (real, faked):
        body = answer.json()
        assert body["ready"] is True and body["login_state"] == "logged_in" and body["busy"] is False


def test_a_generation_that_works(both: tuple[Fake, dict]) -> None:
    body = {"prompt": "合同测试", "aspect_ratio": "1:1", "task_id": "contract-1"}
    real, faked = compare(both, "POST", "/generate", json=body)
    assert_same_shape(real, faked)
    for answer in (real, faked):
        result = answer.json()
        assert result["success"] is True and result["error"] is None and result["task_id"] == "contract-1"
        assert base64.b64decode(result["images_b64"][0]).startswith(b"\x89PNG")


@pytest.mark.parametrize("body", [{"aspect_ratio": "1:1"}, {"prompt": 42}, ["not", "an", "object"]],
                         ids=["no prompt", "prompt not text", "not an object"])
def test_a_generation_with_bad_input(both: tuple[Fake, dict], body: Any) -> None:
    real, faked = compare(both, "POST", "/generate", json=body)
    assert 400 <= real.status_code < 500, real.text
    assert faked.status_code == real.status_code, (real.text, faked.text)
    assert "detail" in real.json() and "detail" in faked.json()


def test_busy_is_409_on_both(both: tuple[Fake, dict]) -> None:
    fake, pair = both
    control(pair["sim"], "/_sim/config", {"latency_ms": 4000})
    answers: dict[str, httpx.Response] = {}
    slow = threading.Thread(target=lambda: answers.setdefault("first", real_call(pair, "POST", "/generate", json={"prompt": "slow"})))

    async def fake_pair() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=fake.runtime.http_transport, base_url=fake.url) as client:
            first = asyncio.create_task(client.post("/generate", headers=AUTH, json={"prompt": "slow"}))
            await await_until(lambda: any(c.busy for c in fake.runtime.containers.values()), timeout=10,
                              what="the fake busy", pause=0.01)
            second = await client.post("/generate", headers=AUTH, json={"prompt": "second"})
            return await first, second

    fake.runtime.generate_delay = 1.0
    try:
        slow.start()
        wait_until(lambda: real_call(pair, "GET", "/status").json()["busy"], timeout=60, what="the real instance busy")
        real_second = real_call(pair, "POST", "/generate", json={"prompt": "second"})
        fake_first, fake_second = asyncio.run(fake_pair())
        slow.join()
    finally:
        fake.runtime.generate_delay = 0.0
        control(pair["sim"], "/_sim/config", {"latency_ms": 200})
    assert_same_shape(real_second, fake_second)
    assert real_second.status_code == 409
    assert answers["first"].json()["success"] is True and fake_first.json()["success"] is True


def test_session_export_and_import(both: tuple[Fake, dict]) -> None:
    real, faked = compare(both, "GET", "/session")
    assert_same_shape(real, faked)
    state = signed_in_state("http://" + both[1]["sim_host"] + ":9000", "contract-2@example.com")
    real, faked = compare(both, "PUT", "/session", json=state)
    assert_same_shape(real, faked)
    assert real.json()["cookies"] == faked.json()["cookies"] == len(state["cookies"])
    real, faked = compare(both, "PUT", "/session", json={"no": "cookies"})
    assert 400 <= real.status_code < 500 and faked.status_code == real.status_code, (real.text, faked.text)


def test_login_check(both: tuple[Fake, dict]) -> None:
    real, faked = compare(both, "POST", "/login/check")
    assert_same_shape(real, faked)
    assert real.json()["login_state"] == faked.json()["login_state"] == "logged_in"

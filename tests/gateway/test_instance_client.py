"""The instance client over the HTTP contract, against the fake runtime's in-process instances."""

from __future__ import annotations

import httpx
import pytest

from fleet_contract.codes import LoginState
from fleet_contract.messages import GenerateRequest, SessionImported
from gateway.runtime.base import InstanceSpec
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from gateway.instance_client import InstanceAddress, InstanceClient, InstanceNoAnswer, InstanceRejected


@pytest.fixture
async def client(fake: FakeRuntime):  # type: ignore[no-untyped-def]
    http = InstanceClient(transport=fake.http_transport)
    yield http
    await http.close()


async def started(fake: FakeRuntime) -> InstanceAddress:
    state = await fake.start(InstanceSpec("i-1", "one", "tok"))
    assert state.endpoint is not None
    return InstanceAddress(state.endpoint, "tok")


async def test_calls_of_the_contract(fake: FakeRuntime, client: InstanceClient) -> None:
    address = await started(fake)
    status = await client.status(address)
    assert status.ready and status.login_state == "logged_in" and not status.busy
    result = await client.put_session(address, b'{"cookies": [{"name": "SID"}], "origins": []}')
    assert result == SessionImported(ok=True, cookies=1, login_state=LoginState.LOGGED_IN)
    assert b'"SID"' in await client.get_session(address)
    image, content_type = await client.screenshot(address)
    assert image == TINY_PNG and content_type == "image/png"
    await client.navigate(address, target="signin")
    answer = await client.generate(address, GenerateRequest(prompt="a cat", task_id="t-1"))
    assert answer.success and answer.task_id == "t-1" and answer.images_b64


async def test_wrong_token_dead_and_hung_instances(fake: FakeRuntime, client: InstanceClient) -> None:
    address = await started(fake)
    with pytest.raises(InstanceRejected) as rejected:
        await client.status(InstanceAddress(address.endpoint, "wrong"))
    assert rejected.value.status_code == 401 and rejected.value.detail == "missing or wrong token"
    fake.hang("i-1")
    with pytest.raises(InstanceNoAnswer, match="no answer in 0.1s"):
        await client.status(address, timeout=0.1)
    fake.kill("i-1")
    with pytest.raises(InstanceNoAnswer, match="ConnectError"):
        await client.status(address)


async def test_an_answer_off_the_contract_is_a_bad_answer_not_a_half_read_dict() -> None:
    """A 200 whose body breaks the contract (a fake of a broken instance, by httpx's MockTransport)."""
    from gateway.dispatcher import outcomes
    from gateway.instance_client import InstanceBadAnswer

    bodies = {"/generate": b'{"success": "yes"}', "/status": b"not json"}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=bodies[request.url.path]))
    client = InstanceClient(transport=transport)
    address = InstanceAddress("http://broken.invalid", "tok")
    try:
        with pytest.raises(InstanceBadAnswer, match="does not follow the contract") as caught:
            await client.generate(address, GenerateRequest(prompt="a cat"))
        attempt = outcomes.from_error(caught.value)
        assert attempt.error_code == outcomes.BAD_ANSWER and not attempt.retry and not attempt.suspect
        with pytest.raises(InstanceBadAnswer):
            await client.status(address)
    finally:
        await client.close()

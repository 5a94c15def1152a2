"""The account ledger end to end, through the built images: the gateway image in a container (as compose runs
it: the Docker socket mounted, on the fleet network, its SQLite file in /data) in front of two real instance
containers, each signed in to its own simulator account, the simulator giving each account a daily allowance
per model.

Account A may make the catalogue's default model X once a day and model Y without limit; account B may make X
once. Three X requests: two succeed, one on each account; the third meets both spent allowances and ends with a
429 whose Retry-After points at the next midnight Pacific. Y still works on A. A fourth X request is refused at
once with `model_exhausted`, and no page is asked for X again. The instance views show the quota blocks until
that midnight, and the events say `model_blocked`. No account ever meets more than one quota answer per model.

The reset itself is not tested here: the gateway in its container runs on the real clock (its clock is injected
only in-process, by the gateway's own tests, tests/gateway/test_accounts.py), and faking time in the container
would test the fake rather than the image.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import docker
import docker.errors
import httpx
import pytest

from tests.conftest import skip_or_fail
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    E2E_LABEL,
    E2E_PREFIX,
    GatewayProcess,
    SimulatorNetwork,
    engine_problem,
    new_namespace,
    print_fleet_logs,
    remove_namespace,
)
from tests.e2e.test_compose import GATEWAY_IMAGE
from tests.instance.harness import signed_in_state
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

CATALOGUE = json.loads((Path(__file__).resolve().parents[2] / "fleet_contract" / "models.json").read_text(encoding="utf-8"))
MODEL_X = CATALOGUE["default_model"]  # the model a request without one gets
MODEL_Y = "gemini-3-pro-image"  # another chat-page model, unlimited for account A
ACCOUNT_A = "ledger-a@example.com"
ACCOUNT_B = "ledger-b@example.com"
ALLOWANCES = {ACCOUNT_A: {MODEL_X: 1}, ACCOUNT_B: {MODEL_X: 1}}  # a model left out is unlimited
PACIFIC = ZoneInfo("America/Los_Angeles")
RETRY_AFTER_SLACK_S = 5  # the gateway's clock and ours read a moment apart, and Retry-After is rounded up
SAFE_BEFORE_RESET = timedelta(minutes=15)  # the whole module must run within one Pacific day
SETTINGS = {**FAST_SETTINGS, "QUEUE_WAIT_TIMEOUT": "60", "QUEUE_POLL_INTERVAL": "0.2"}


# ---- the clock the test expects the gateway to follow ------------------------------------------------


def next_midnight_pacific(now: datetime) -> datetime:
    """The next midnight in Los Angeles, in UTC: computed here on its own, not with the gateway's calendar."""
    day: date = now.astimezone(PACIFIC).date() + timedelta(days=1)
    return datetime.combine(day, clock_time(0), PACIFIC).astimezone(UTC)


def seconds_to_reset() -> float:
    now = datetime.now(UTC)
    return (next_midnight_pacific(now) - now).total_seconds()


# ---- the gateway image in a container ----------------------------------------------------------------


@dataclass
class GatewayContainer(GatewayProcess):
    """The gateway image run as compose runs it, with GatewayProcess's management helpers (call, instance,
    events, wait_running): the same GATEWAY_* settings, but listening in its container, ports published on
    loopback, instances reached by name on the simulator's network."""

    engine: docker.DockerClient | None = None
    container: Any = None

    def environment(self) -> dict[str, str]:
        # The host's own variables stay out: only the gateway's settings go into the container.
        env = {key: value for key, value in super().environment().items() if key.startswith("GATEWAY_")}
        inside = {"DATA_DIR": "/data", "API_HOST": "0.0.0.0", "API_PORT": "8812", "ADMIN_HOST": "0.0.0.0",
                  "ADMIN_PORT": "8813", "DOCKER_CONNECT_MODE": "network"}
        env.update({f"GATEWAY_{key}": value for key, value in inside.items()})
        return env

    def start(self, timeout: float = 90.0) -> float:
        assert self.engine is not None and self.container is None, "one start per container"
        began = time.monotonic()
        self.container = self.engine.containers.run(
            GATEWAY_IMAGE, detach=True, name=f"{E2E_PREFIX}gw-{uuid.uuid4().hex[:6]}", labels={E2E_LABEL: "1"},
            environment=self.environment(), network=self.network.network,
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
            ports={"8812/tcp": ("127.0.0.1", None), "8813/tcp": ("127.0.0.1", None)},
            security_opt=["no-new-privileges:true"], cap_drop=["ALL"], cap_add=["CHOWN", "SETUID", "SETGID"],
        )
        self.api_port, self.admin_port = self._published("8812/tcp"), self._published("8813/tcp")
        wait_until(self._up, timeout=timeout, what="the gateway container to listen", pause=0.1)
        return time.monotonic() - began

    def _published(self, port: str) -> int:
        def host_port() -> int | None:
            self.container.reload()
            bindings = self.container.ports.get(port)
            return int(bindings[0]["HostPort"]) if bindings else None

        return wait_until(host_port, timeout=15, what=f"the gateway container to publish {port}")

    def _up(self) -> bool:
        self.container.reload()
        if self.container.status == "exited":
            raise AssertionError(f"the gateway container exited:\n{self.log_tail()}")
        try:
            healthy = httpx.get(f"{self.api_url}/health", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and self._admin_answers()

    def stop(self) -> None:
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):  # already gone
                self.container.stop(timeout=15)
        super().stop()  # closes the management client

    def remove(self) -> None:
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):  # already gone
                self.container.remove(force=True, v=True)  # its anonymous /data volume too

    def log_tail(self, lines: int = 80) -> str:
        if self.container is None:
            return ""
        with contextlib.suppress(docker.errors.NotFound):  # already gone
            return self.container.logs(tail=lines).decode("utf-8", "replace")
        return ""


# ---- the fleet --------------------------------------------------------------------------------------


@dataclass
class Fleet:
    gateway: GatewayContainer
    sim: SimulatorNetwork
    instances: dict[str, str]  # account -> instance id

    def record(self) -> dict[str, Any]:
        return control(self.sim.control_url, "/_sim/record")

    def account_of(self, instance_id: str) -> str:
        return next(account for account, iid in self.instances.items() if iid == instance_id)

    def openai_image(self, model: str, prompt: str) -> httpx.Response:
        body = {"prompt": prompt, "model": model, "size": "1024x1024", "response_format": "b64_json"}
        return httpx.post(f"{self.gateway.api_url}/v1/images/generations", json=body, timeout=180, trust_env=False)

    def generate(self, model: str, prompt: str) -> httpx.Response:
        body = {"prompt": prompt, "model": model, "aspect_ratio": "1:1"}
        return httpx.post(f"{self.gateway.api_url}/generate", json=body, timeout=180, trust_env=False)


def x_page_counts(record: dict[str, Any]) -> dict[str, Any]:
    """Everything the simulator saw of model X: its calls, and per account the day's usage and quota answers."""
    return {
        "calls": [g for g in record["generations"] if g["model"] == MODEL_X],
        "usage": {a: models.get(MODEL_X) for a, models in record["usage_by_account"].items()},
        "quota_answers": {a: models.get(MODEL_X, 0) for a, models in record["quota_answers_by_account"].items()},
    }


def sign_in(gateway: GatewayContainer, sim: SimulatorNetwork, name: str, account: str) -> str:
    """A new instance, started and signed in to `account` by a session import."""
    instance_id = gateway.create(name)
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id, timeout=120)
    gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(sim.aistudio_url, account))
    gateway.wait_running(instance_id)
    return instance_id


def configure_simulator(sim: SimulatorNetwork) -> None:
    control(sim.control_url, "/_sim/reset", {})
    control(sim.control_url, "/_sim/config", {"signin_required": False})
    for account, allowances in ALLOWANCES.items():
        control(sim.control_url, f"/_sim/accounts/{account}/config", {"allowances": allowances})


@pytest.fixture(scope="module")
def fleet(engine: docker.DockerClient, sim_network: SimulatorNetwork, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    problem = engine_problem(GATEWAY_IMAGE)
    if problem:
        skip_or_fail(problem)
    if seconds_to_reset() < SAFE_BEFORE_RESET.total_seconds():
        pytest.skip("midnight Pacific is too near: the allowances would renew in the middle of the test")
    namespace = new_namespace("acct")
    gateway = GatewayContainer("sqlite+aiosqlite:////data/gateway.db", Path("/data"), sim_network, namespace,
                               settings=dict(SETTINGS), engine=engine)
    failed_before = request.session.testsfailed
    try:
        configure_simulator(sim_network)
        gateway.start()
        instances = {account: sign_in(gateway, sim_network, f"acct-{n}", account) for n, account in enumerate(ALLOWANCES)}
        yield Fleet(gateway, sim_network, instances)
    finally:
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, gateway)
        gateway.stop()
        gateway.remove()
        remove_namespace(engine, namespace)
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})


@dataclass
class Spent:
    """Model X spent on both accounts by three requests: the answers, and the reset expected at the third."""

    answers: list[httpx.Response]
    reset: datetime  # the next midnight Pacific when the third answer came
    seconds_left: float  # from that answer to the reset, by our clock


@pytest.fixture(scope="module")
def spent(fleet: Fleet) -> Spent:
    answers = [fleet.openai_image(MODEL_X, f"spend {n}") for n in range(3)]
    now = datetime.now(UTC)
    reset = next_midnight_pacific(now)
    return Spent(answers, reset, (reset - now).total_seconds())


def assert_retry_after_is_the_reset(response: httpx.Response, seconds_left: float) -> None:
    retry_after = int(response.headers["retry-after"])
    assert abs(retry_after - seconds_left) <= RETRY_AFTER_SLACK_S, (retry_after, seconds_left)


# ---- the tests --------------------------------------------------------------------------------------


def test_two_requests_succeed_one_per_account_and_the_third_is_429_until_midnight_pacific(fleet: Fleet, spent: Spent) -> None:
    first, second, third = spent.answers
    assert first.status_code == second.status_code == 200, (first.text[:300], second.text[:300])
    made = [g["account"] for g in x_page_counts(fleet.record())["calls"] if g["outcome"] == "ok"]
    assert sorted(made) == sorted(ALLOWANCES), made
    # The third ran into both spent allowances: it ends with the pages' own answer, a quota one, as a 429
    # (`model_exhausted` is for requests that come after, once the ledger knows; see the fourth below).
    assert third.status_code == 429, third.text[:500]
    assert third.json()["error"]["code"] == "quota_exhausted", third.text[:500]
    assert_retry_after_is_the_reset(third, spent.seconds_left)


def test_the_other_model_still_works_on_account_a(fleet: Fleet, spent: Spent) -> None:
    # Two requests: the lease takes the least recently used account first, so both accounts make Y.
    answers = [fleet.generate(MODEL_Y, f"other model {n}") for n in range(2)]
    for answer in answers:
        assert answer.status_code == 200 and answer.json()["success"] is True, answer.text[:500]
    served = {fleet.account_of(answer.json()["instance_id"]) for answer in answers}
    assert ACCOUNT_A in served, served
    usage = fleet.record()["usage_by_account"]
    assert usage[ACCOUNT_A][MODEL_Y]["made"] >= 1, usage


def test_a_fourth_request_is_refused_at_once_without_a_page(fleet: Fleet, spent: Spent) -> None:
    before = x_page_counts(fleet.record())
    began = time.monotonic()
    old_api = fleet.generate(MODEL_X, "a fourth try")
    took = time.monotonic() - began
    seconds_left = seconds_to_reset()
    assert old_api.status_code == 429 and old_api.json()["error"] == "model_exhausted", old_api.text[:500]
    assert_retry_after_is_the_reset(old_api, seconds_left)
    assert took < 3, f"refused after {took:.1f} s: it should not wait for an account"
    openai_face = fleet.openai_image(MODEL_X, "a fifth try")
    assert openai_face.status_code == 429 and openai_face.json()["error"]["code"] == "model_exhausted", openai_face.text[:500]
    assert_retry_after_is_the_reset(openai_face, seconds_to_reset())
    assert x_page_counts(fleet.record()) == before  # no page was asked for X


def test_the_instance_views_show_the_quota_block_until_midnight_pacific(fleet: Fleet, spent: Spent) -> None:
    for account, instance_id in fleet.instances.items():
        view = fleet.gateway.instance(instance_id)
        blocks = {block["model"]: block for block in view["unavailable_models"]}
        assert MODEL_X in blocks, (account, view["unavailable_models"])
        assert blocks[MODEL_X]["kind"] == "quota", blocks[MODEL_X]
        assert datetime.fromisoformat(blocks[MODEL_X]["until"]) == spent.reset, (blocks[MODEL_X], spent.reset)
        assert MODEL_Y not in blocks, blocks  # a spent model does not rest the account's other models
        assert "model_blocked" in fleet.gateway.event_kinds(instance_id), account


def test_no_account_met_more_than_one_quota_answer_per_model(fleet: Fleet, spent: Spent) -> None:
    record = fleet.record()
    answers = record["quota_answers_by_account"]
    assert all(n <= 1 for models in answers.values() for n in models.values()), answers
    assert {account: answers.get(account, {}).get(MODEL_X) for account in ALLOWANCES} == {ACCOUNT_A: 1, ACCOUNT_B: 1}
    usage = record["usage_by_account"]
    assert {account: usage[account][MODEL_X]["made"] for account in ALLOWANCES} == {ACCOUNT_A: 1, ACCOUNT_B: 1}


def test_the_ledger_api_reports_the_day_through_the_gateway_image(fleet: Fleet, spent: Spent) -> None:
    report = fleet.gateway.call("GET", "/api/accounts/usage")
    assert datetime.fromisoformat(report["next_reset"]) == spent.reset
    for account, instance_id in fleet.instances.items():
        (row,) = [a for a in report["accounts"] if a["instance_id"] == instance_id]
        cell = {m["model"]: m for m in row["models"]}[MODEL_X]
        # One made, then the quota answer: capacity learned at 1, nothing left, blocked until the reset.
        assert (cell["made_today"], cell["quota_answers_today"], cell["learned_capacity"], cell["remaining"]) == (1, 1, 1, 0), (account, cell)
        assert cell["blocked"] and cell["block_kind"] == "quota", cell
        assert datetime.fromisoformat(cell["blocked_until"]) == spent.reset
    (pool_x,) = [p for p in report["pool"] if p["model"] == MODEL_X]
    assert pool_x["remaining"] == 0 and pool_x["blocked"] == 2, pool_x
    unknown = fleet.gateway.call("GET", "/api/accounts/usage?model=no-such-model", expect=422)
    assert "no-such-model" in str(unknown)

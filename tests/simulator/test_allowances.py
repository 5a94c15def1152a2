"""Daily allowances per account and model, and the simulator clock that renews them at midnight Pacific."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from litestar.testing import TestClient

from .api import GENERATE_PATH
from .app import create_app
from .clock import next_reset, pacific_day, parse_instant
from .models import DEFAULT_MODEL

ALICE = "alice@example.com"
BOB = "bob@example.com"
FLASH = "gemini-2.5-flash-image"
PRO = "gemini-3-pro-image"


@pytest.fixture
def client():
    with TestClient(create_app()) as test_client:
        test_client.post("/_sim/config", json={"latency_ms": 0})
        yield test_client


def sign_in(client, account: str = ALICE) -> None:
    form = {"identifier": account, "Passwd": "any password", "continue": "/prompts/new_chat"}
    client.post("/_signin", data=form, follow_redirects=False)


def generate(client, model: str | None = FLASH):
    return client.post(GENERATE_PATH, json={"prompt": "a red fox", "aspect_ratio": "1:1", "model": model})


def statuses(client, times: int, model: str | None = FLASH) -> list[int]:
    return [generate(client, model).status_code for _ in range(times)]


def usage(client, account: str = ALICE, model: str = FLASH) -> dict:
    return client.get("/_sim/record").json()["usage_by_account"][account][model]


def set_clock(client, now: str) -> dict:
    response = client.post("/_sim/clock", json={"now": now})
    assert response.status_code == 200, response.text
    return response.json()


# ---------- allowances ----------


def test_an_allowance_of_two_gives_two_images_then_the_quota_answer(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 2}})
    sign_in(client)
    assert [len(generate(client).json()["images"]) for _ in range(2)] == [1, 1]
    spent = generate(client)
    client.post("/_sim/config", json={"allowances": {}, "mode": "quota", "mode_times": 1})
    configured = generate(client)
    assert (spent.status_code, spent.json()) == (configured.status_code, configured.json())  # same as mode "quota"
    assert spent.status_code == 429 and spent.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    record = client.get("/_sim/record").json()
    assert [g["outcome"] for g in record["generations"]] == ["ok", "ok", "quota", "quota"]
    today = client.get("/_sim/clock").json()["pacific_day"]
    assert record["usage_by_account"][ALICE][FLASH] == {"made": 2, "quota_answers": 2, "day": today}
    assert record["quota_answers_by_account"] == {ALICE: {FLASH: 2}}


def test_a_spent_model_leaves_the_accounts_other_models_and_other_accounts_working(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 1, PRO: 5}})
    sign_in(client)
    assert statuses(client, 2) == [200, 429]
    assert statuses(client, 2, PRO) == [200, 200]
    assert statuses(client, 2, "gemini-3.1-flash-lite-image") == [200, 200]  # not in the mapping: unlimited
    sign_in(client, BOB)
    assert statuses(client, 2) == [200, 429]
    for account in (ALICE, BOB):
        assert (usage(client, account)["made"], usage(client, account)["quota_answers"]) == (1, 1)
    assert usage(client, ALICE, PRO)["made"] == 2


def test_an_account_override_sets_that_accounts_allowances(client):
    client.post(f"/_sim/accounts/{BOB}/config", json={"allowances": {FLASH: 0}})
    sign_in(client, BOB)
    assert statuses(client, 1) == [429]
    sign_in(client, ALICE)
    assert statuses(client, 3) == [200, 200, 200]
    assert usage(client, BOB)["made"] == 0 and usage(client, ALICE)["made"] == 3


def test_a_call_without_a_model_counts_against_the_pages_default_model(client):
    client.post("/_sim/config", json={"allowances": {DEFAULT_MODEL: 1}})
    sign_in(client)
    assert statuses(client, 2, model=None) == [200, 429]
    assert usage(client, model=DEFAULT_MODEL)["made"] == 1


def test_failed_generations_do_not_count(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 1, PRO: 1}, "unavailable_models": [PRO]})
    sign_in(client)
    for mode in ("internal", "rate_limit", "blocked", "free_limit"):
        client.post("/_sim/config", json={"mode": mode, "mode_times": 1})
        assert generate(client).status_code in (200, 429, 500)
    assert generate(client, PRO).status_code == 403  # refused model: not a success either
    assert client.get("/_sim/record").json()["usage_by_account"] == {}  # nothing made, no quota answer
    assert statuses(client, 2) == [200, 429]


def test_lowering_an_allowance_below_todays_count_spends_it(client):
    sign_in(client)
    assert statuses(client, 3) == [200, 200, 200]  # unlimited by default, still counted
    client.post("/_sim/config", json={"allowances": {FLASH: 2}})
    assert statuses(client, 1) == [429]
    assert usage(client)["made"] == 3


@pytest.mark.parametrize(
    "bad",
    [{FLASH: -1}, [FLASH], FLASH, 3, {FLASH: 1.5}, {FLASH: True}, {FLASH: None}, {FLASH: "2"}],
)
def test_the_config_refuses_bad_allowances(client, bad):
    assert client.post("/_sim/config", json={"allowances": bad}).status_code == 400
    assert client.post(f"/_sim/accounts/{ALICE}/config", json={"allowances": bad}).status_code == 400
    config = client.get("/_sim/config").json()
    assert config["global"]["allowances"] == {} and config["accounts"] == {}


def test_the_config_refuses_non_string_model_ids():
    from .config import ConfigError
    from .state import SimState

    with pytest.raises(ConfigError):
        SimState().update_config({"allowances": {1: 2}})


# ---------- the clock and the Pacific day ----------


def test_moving_past_midnight_pacific_renews_the_allowance(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 1}})
    sign_in(client)
    clock = set_clock(client, "2026-01-15T20:00:00Z")
    assert statuses(client, 2) == [200, 429]
    assert client.post("/_sim/clock", json={"advance_s": 11 * 3600 + 59 * 60}).json()["pacific_day"] == "2026-01-15"
    assert statuses(client, 1) == [429]  # 07:59 UTC: still the same Pacific day
    moved = client.post("/_sim/clock", json={"advance_s": 120}).json()
    assert moved["pacific_day"] == "2026-01-16" and moved["next_reset"] == "2026-01-17T08:00:00Z"
    assert usage(client) == {"made": 0, "quota_answers": 0, "day": "2026-01-16"}
    assert statuses(client, 2) == [200, 429]
    assert clock["next_reset"] == "2026-01-16T08:00:00Z"
    assert client.get("/_sim/record").json()["quota_answers_by_account"] == {ALICE: {FLASH: 3}}


@pytest.mark.parametrize(
    ("now", "day", "reset"),
    [
        ("2026-01-15T12:00:00Z", "2026-01-15", "2026-01-16T08:00:00Z"),  # winter: PST, UTC-8
        ("2026-07-15T12:00:00Z", "2026-07-15", "2026-07-16T07:00:00Z"),  # summer: PDT, UTC-7
        ("2026-01-15T07:59:00Z", "2026-01-14", "2026-01-15T08:00:00Z"),
        ("2026-07-15T06:59:00Z", "2026-07-14", "2026-07-15T07:00:00Z"),
        # spring forward (2026-03-08 02:00 PST -> 03:00 PDT): that day starts at 08:00 UTC and lasts 23 hours
        ("2026-03-08T07:59:00Z", "2026-03-07", "2026-03-08T08:00:00Z"),
        ("2026-03-08T08:00:00Z", "2026-03-08", "2026-03-09T07:00:00Z"),
        ("2026-03-09T06:59:00Z", "2026-03-08", "2026-03-09T07:00:00Z"),
        # fall back (2026-11-01 02:00 PDT -> 01:00 PST): that day starts at 07:00 UTC and lasts 25 hours
        ("2026-11-01T06:59:00Z", "2026-10-31", "2026-11-01T07:00:00Z"),
        ("2026-11-01T07:00:00Z", "2026-11-01", "2026-11-02T08:00:00Z"),
        ("2026-11-02T07:30:00Z", "2026-11-01", "2026-11-02T08:00:00Z"),
        ("2026-11-02T08:00:00Z", "2026-11-02", "2026-11-03T08:00:00Z"),
        ("2026-03-08T00:30:00-08:00", "2026-03-08", "2026-03-09T07:00:00Z"),  # any offset is accepted
    ],
)
def test_the_pacific_day_and_its_reset(now, day, reset):
    instant = parse_instant(now)
    assert (pacific_day(instant).isoformat(), next_reset(instant).isoformat()) == (day, reset.replace("Z", "+00:00"))


def test_the_clock_endpoint_reports_the_day_and_the_next_reset(client):
    clock = set_clock(client, "2026-07-15T06:59:00Z")
    assert clock["pacific_day"] == "2026-07-14" and clock["next_reset"] == "2026-07-15T07:00:00Z"
    assert clock["now"].startswith("2026-07-15T06:59:0") and clock["now"].endswith("Z")
    assert client.get("/_sim/clock").json()["pacific_day"] == "2026-07-14"
    assert client.post("/_sim/clock", json={"advance_s": 60}).json()["pacific_day"] == "2026-07-15"


def test_the_count_follows_the_day_boundary_on_daylight_saving_nights(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 1}})
    sign_in(client)
    set_clock(client, "2026-11-02T07:30:00Z")  # 23:30 PST on 1 November: a UTC-7 reckoning would say 2 November
    assert statuses(client, 2) == [200, 429]
    client.post("/_sim/clock", json={"advance_s": 31 * 60})
    assert statuses(client, 2) == [200, 429]
    set_clock(client, "2026-03-09T06:30:00Z")  # 23:30 PDT on 8 March: a UTC-8 reckoning would say 8 March too
    assert statuses(client, 2) == [200, 429]
    client.post("/_sim/clock", json={"advance_s": 31 * 60})  # 00:01 PDT on 9 March
    assert client.get("/_sim/clock").json()["pacific_day"] == "2026-03-09"
    assert statuses(client, 2) == [200, 429]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"now": "2026-03-08T07:59:00"}, "zone"),
        ({"now": "2026-03-08"}, "zone"),
        ({"now": "yesterday"}, "ISO 8601"),
        ({"now": 1767225600}, "ISO 8601"),
        ({"advance_s": "3600"}, "number"),
        ({"advance_s": True}, "number"),
        ({"advance_s": 1e300}, "100 years"),
        ({"now": "9999-12-31T23:59:00Z"}, "100 years"),
        ({"advance_s": 60, "now": "2026-03-08T07:59:00Z"}, "advance_s"),
        ({}, "advance_s"),
        ({"advance": 60}, "advance_s"),
        ([60], "advance_s"),
    ],
)
def test_the_clock_refuses_bad_bodies_with_400(client, body, words):
    before = client.get("/_sim/clock").json()["pacific_day"]
    response = client.post("/_sim/clock", json=body)
    assert response.status_code == 400 and words in response.json()["detail"]
    assert client.get("/_sim/clock").json()["pacific_day"] == before


def test_the_clock_refuses_a_body_that_is_not_json(client):
    response = client.post("/_sim/clock", content=b"not json", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_reset_puts_back_the_clock_and_the_counts(client):
    client.post("/_sim/config", json={"allowances": {FLASH: 1}})
    sign_in(client)
    set_clock(client, "2030-01-01T12:00:00Z")
    assert statuses(client, 2) == [200, 429]
    client.post("/_sim/reset")
    now = parse_instant(client.get("/_sim/clock").json()["now"])
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5
    record = client.get("/_sim/record").json()
    assert record["usage_by_account"] == {} and record["quota_answers_by_account"] == {}
    client.post("/_sim/config", json={"latency_ms": 0, "allowances": {FLASH: 1}})
    sign_in(client)
    assert statuses(client, 1) == [200]

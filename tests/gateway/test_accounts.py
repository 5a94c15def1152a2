"""The account ledger through the generation API, on the fake runtime, on SQLite and Postgres, with a manual
clock: per-model blocks, the reset at midnight Pacific (winter, summer, both daylight-saving nights), routing on
what is left, rate-limit pauses, pacing and caps, and the 429 that points at the reset.

The dates are in 2027, after any instance's real start (a page-refused model's block is void when older than the
instance's last start, which the reconciler stamps with the real time)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from gateway.accounts.calendar import next_reset, pacific_day
from gateway.db.models import AccountUsage
from gateway.runtime.fake import FakeOutcome, FakeRuntime
from gateway.settings import Settings
from tests.gateway.pool import ManualClock, Pool, open_pool

PRO = "gemini-3-pro-image"
FLASH = "gemini-2.5-flash-image"


def quota() -> FakeOutcome:
    return FakeOutcome.error("quota_exhausted", retry_safe=True)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2027, 1, 15, 20, 0, tzinfo=UTC))  # a winter afternoon: 12:00 PST


@pytest.fixture
async def pool(database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock) as opened:
        yield opened


async def generate(pool: Pool, model: str) -> tuple[int, dict, dict[str, str]]:
    response = await pool.http.post("/generate", json={"prompt": "一只猫", "model": model})
    return response.status_code, response.json(), dict(response.headers)


async def blocks(pool: Pool, iid: str) -> dict[str, tuple[str, datetime | None]]:
    await pool.fleet.dispatcher.settled()  # an answer goes out before its release (and block) is written
    view = await pool.fleet.instances.get(iid)
    return {b.model: (b.kind, b.until) for b in view.unavailable_models}


# ---- the Pacific day ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("now", "reset"),
    [
        ("2027-01-15T20:00:00+00:00", "2027-01-16T08:00:00+00:00"),  # winter: PST, UTC-8
        ("2027-07-15T20:00:00+00:00", "2027-07-16T07:00:00+00:00"),  # summer: PDT, UTC-7
        ("2027-01-16T07:59:59+00:00", "2027-01-16T08:00:00+00:00"),  # a second before midnight
        ("2027-01-16T08:00:00+00:00", "2027-01-17T08:00:00+00:00"),  # midnight itself starts the new day
        ("2027-03-14T09:00:00+00:00", "2027-03-15T07:00:00+00:00"),  # spring forward: a 23-hour day
        ("2027-11-07T08:30:00+00:00", "2027-11-08T08:00:00+00:00"),  # fall back: a 25-hour day
    ],
)
def test_the_next_reset_is_midnight_pacific(now: str, reset: str) -> None:
    assert next_reset(datetime.fromisoformat(now)) == datetime.fromisoformat(reset)


def test_the_day_counts_in_pacific_time() -> None:
    assert pacific_day(datetime(2027, 1, 16, 7, 59, tzinfo=UTC)) == date(2027, 1, 15)
    assert pacific_day(datetime(2027, 1, 16, 8, 0, tzinfo=UTC)) == date(2027, 1, 16)


# ---- per-model blocks and the reset -----------------------------------------------------------------

async def test_a_quota_answer_blocks_that_model_and_not_the_others(pool: Pool, clock: ManualClock) -> None:
    (iid,) = pool.instance_ids
    pool.fake.script_generations(iid, quota())
    status, body, _ = await generate(pool, PRO)
    assert status == 200 and body["success"] is False and body["error_code"] == "quota_exhausted"
    assert (await blocks(pool, iid))[PRO] == ("quota", datetime(2027, 1, 16, 8, 0, tzinfo=UTC))
    status, body, _ = await generate(pool, FLASH)  # the same account still makes the other model
    assert status == 200 and body["success"] is True and body["instance_id"] == iid
    assert FLASH not in await blocks(pool, iid)


@pytest.mark.parametrize(
    "start",
    [
        datetime(2027, 1, 15, 20, 0, tzinfo=UTC),  # winter
        datetime(2027, 7, 15, 20, 0, tzinfo=UTC),  # summer
        datetime(2027, 3, 14, 9, 0, tzinfo=UTC),  # the night clocks spring forward
        datetime(2027, 11, 7, 8, 30, tzinfo=UTC),  # the night clocks fall back
    ],
    ids=["winter", "summer", "spring-forward", "fall-back"],
)
async def test_the_block_ends_at_midnight_pacific_and_no_page_is_asked_before(
    pool: Pool, clock: ManualClock, start: datetime
) -> None:
    (iid,) = pool.instance_ids
    clock.now = start
    reset = next_reset(start)
    pool.fake.script_generations(iid, quota())
    await generate(pool, PRO)
    asked = len(pool.fake.generations)
    for seconds in (0, 3600, (reset - start).total_seconds() - 1):
        clock.now = start + timedelta(seconds=seconds)
        status, body, headers = await generate(pool, PRO)
        assert status == 429 and body["error"] == "model_exhausted", body
        # Retry-After points at the reset, whatever the day's length.
        assert int(headers["retry-after"]) == round((reset - clock.now).total_seconds())
    assert len(pool.fake.generations) == asked  # a spent model is not asked of any page again
    clock.now = reset
    status, body, _ = await generate(pool, PRO)
    assert status == 200 and body["success"] is True
    assert len(pool.fake.generations) == asked + 1


async def test_the_reset_is_recorded_as_an_event(pool: Pool, clock: ManualClock) -> None:
    (iid,) = pool.instance_ids
    pool.fake.script_generations(iid, quota())
    await generate(pool, PRO)
    await pool.fleet.dispatcher.settled()  # the block is written just after the answer
    clock.now = next_reset(clock.now)
    await pool.fleet.dispatcher.prune_once()  # the pruner's round, run now (its own may have come first)
    kinds = [e.kind for e in await pool.fleet.instances.events(iid)]
    assert "model_blocked" in kinds and "allowance_renewed" in kinds
    assert PRO not in await blocks(pool, iid)


async def test_the_429_speaks_chinese_and_english(pool: Pool) -> None:
    (iid,) = pool.instance_ids
    pool.fake.script_generations(iid, quota())
    await generate(pool, PRO)
    zh = await pool.http.post("/generate", json={"prompt": "猫", "model": PRO}, headers={"Accept-Language": "zh-CN"})
    en = await pool.http.post("/generate", json={"prompt": "cat", "model": PRO}, headers={"Accept-Language": "en"})
    assert zh.status_code == en.status_code == 429
    assert PRO in zh.json()["message"] and "太平洋时间" in zh.json()["message"]
    assert PRO in en.json()["message"] and "midnight Pacific" in en.json()["message"]
    assert "2027-01-16T08:00:00Z" in en.json()["message"]


async def test_the_openai_face_answers_the_same_429(pool: Pool) -> None:
    (iid,) = pool.instance_ids
    pool.fake.script_generations(iid, quota())
    await generate(pool, PRO)
    response = await pool.http.post("/v1/images/generations", json={"prompt": "cat", "model": PRO})
    assert response.status_code == 429 and response.json()["error"]["code"] == "model_exhausted"
    assert int(response.headers["retry-after"]) == 12 * 3600


# ---- routing on what is left ------------------------------------------------------------------------

async def _seed_usage(pool: Pool, iid: str, model: str, day: date, made: int, made_at_quota: int | None) -> None:
    """A fake history: the ledger rows a past day (or today) left, written directly."""
    row = {"instance_id": uuid.UUID(iid), "model": model, "day": day, "made": made, "failed": 0,
           "quota_answers": int(made_at_quota is not None), "made_at_quota": made_at_quota}
    async with pool.fleet.sessions.begin() as session:
        await session.execute(insert(AccountUsage), [row])


async def test_routing_prefers_the_account_with_more_left(
    database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=3, clock=clock) as pool:
        poor, rich, unknown = pool.lru_order()  # without a ledger, `poor` would go first
        today = pacific_day(clock.now)
        yesterday = today - timedelta(days=1)
        await _seed_usage(pool, poor, PRO, yesterday, 10, 10)  # capacity 10 ...
        await _seed_usage(pool, poor, PRO, today, 9, None)  # ... 1 left today
        await _seed_usage(pool, rich, PRO, yesterday, 10, 10)  # capacity 10, 10 left today
        await _seed_usage(pool, unknown, FLASH, yesterday, 3, None)  # never ran out of PRO: not yet measured
        # Not measured is not empty: it counts with the best capacity seen (10), and shares the load.
        served = [(await generate(pool, PRO))[1]["instance_id"] for _ in range(4)]
        assert served == [rich, unknown, rich, unknown]
        assert poor not in served


async def test_an_account_at_its_learned_capacity_goes_last(
    database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=2, clock=clock) as pool:
        spent, other = pool.lru_order()
        today = pacific_day(clock.now)
        await _seed_usage(pool, spent, PRO, today - timedelta(days=2), 5, 5)
        await _seed_usage(pool, spent, PRO, today, 5, None)
        await _seed_usage(pool, other, PRO, today - timedelta(days=2), 50, 50)
        await _seed_usage(pool, other, PRO, today, 40, None)
        served = []
        for _ in range(3):
            served.append((await generate(pool, PRO))[1]["instance_id"])
            await pool.fleet.dispatcher.settled()  # released: a lease right after the answer would find it taken
        names = {spent: "spent", other: "other"}
        assert [names[s] for s in served] == ["other"] * 3  # 10 left beats 0 left, although `spent` is less recently used


async def test_the_ledger_counts_and_learns_the_capacity(pool: Pool, clock: ManualClock) -> None:
    (iid,) = pool.instance_ids
    for _ in range(3):
        assert (await generate(pool, PRO))[1]["success"] is True
    pool.fake.script_generations(iid, quota())
    await generate(pool, PRO)
    await pool.fleet.dispatcher.settled()
    async with pool.fleet.sessions() as session:
        row = (await session.execute(select(AccountUsage).where(AccountUsage.model == PRO))).scalar_one()
    assert (row.made, row.quota_answers, row.made_at_quota, row.day) == (3, 1, 3, date(2027, 1, 15))
    assert row.first_quota_at == clock.now


# ---- rate limits ----------------------------------------------------------------------------------------

async def test_a_rate_limit_pauses_the_model_with_a_doubling_pause_that_a_success_resets(
    database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock
) -> None:
    settings = {"rate_limit_pause": 30, "pace_jitter": 0}
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock, **settings) as pool:
        (iid,) = pool.instance_ids
        pauses = []
        for _ in range(3):
            fake.script_generations(iid, FakeOutcome.error("rate_limited", retry_safe=True))
            await generate(pool, PRO)
            kind, until = (await blocks(pool, iid))[PRO]
            assert kind == "rate_limit" and until is not None
            pauses.append((until - clock.now).total_seconds())
            status, body, headers = await generate(pool, PRO)  # the only account: told when to come back
            assert status == 429 and int(headers["retry-after"]) == round(pauses[-1])
            assert (await generate(pool, FLASH))[1]["success"] is True  # the other model is not paused
            clock.now = until
        assert pauses == [30, 60, 120]
        assert (await generate(pool, PRO))[1]["success"] is True
        fake.script_generations(iid, FakeOutcome.error("rate_limited", retry_safe=True))
        await generate(pool, PRO)
        _, until = (await blocks(pool, iid))[PRO]
        assert (until - clock.now).total_seconds() == 30  # the success reset the strikes


# ---- queued tasks and pacing ------------------------------------------------------------------------------

async def test_a_waiting_task_for_a_spent_model_ends_at_once(
    database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock, queue_wait_timeout=60) as pool:
        (iid,) = pool.instance_ids
        fake.script_generations(iid, FakeOutcome.error("quota_exhausted", retry_safe=True, delay=0.5))
        first = asyncio.create_task(generate(pool, PRO))
        await asyncio.sleep(0.2)  # the first holds the only account; the second waits in the queue
        began = time.monotonic()
        status, body, headers = await generate(pool, PRO)
        waited = time.monotonic() - began
        assert status == 429 and body["error"] == "model_exhausted"
        assert int(headers["retry-after"]) == 12 * 3600
        assert waited < 10, waited  # not its 60 s queue time
        assert (await first)[1]["error_code"] == "quota_exhausted"


async def test_pacing_holds_under_a_burst(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    # The real clock: pacing is a pause between one account's tasks, seen in the fake pages' own records.
    settings = {"pace_pause": 0.4, "pace_jitter": 0.5, "queue_wait_timeout": 60}
    async with open_pool(database_url, tmp_path, fake, instances=2, **settings) as pool:
        responses = await asyncio.gather(*(generate(pool, FLASH) for _ in range(8)))
        assert all(status == 200 and body["success"] for status, body, _ in responses)
        by_instance: dict[str, list[tuple[float, float]]] = {}
        for g in fake.generations:
            assert g.ended is not None
            by_instance.setdefault(g.instance_id, []).append((g.started, g.ended))
        assert sorted(len(spans) for spans in by_instance.values()) == [4, 4]
        for spans in by_instance.values():
            spans.sort()
            gaps = [start - end for (_, end), (start, _) in zip(spans, spans[1:])]
            assert min(gaps) >= 0.4 - 0.05, gaps


async def test_one_proxy_exit_runs_one_task_at_a_time(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    # Both instances use no proxy: one exit, the host's own address.
    async with open_pool(database_url, tmp_path, fake, instances=2, pace_per_exit=1, queue_wait_timeout=60) as pool:
        for iid in pool.instance_ids:
            fake.set_generate_delay(iid, 0.2)
        responses = await asyncio.gather(*(generate(pool, FLASH) for _ in range(4)))
        assert all(body["success"] for _, body, _ in responses)
        spans = sorted((g.started, g.ended or 0.0) for g in fake.generations)
        assert len({g.instance_id for g in fake.generations}) == 2  # both accounts served ...
        assert all(start >= end for (_, end), (start, _) in zip(spans, spans[1:]))  # ... never at once


async def test_a_daily_cap_stops_an_account_below_googles_allowance(
    database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock
) -> None:
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock, pace_daily_cap=f"{PRO}=2") as pool:
        (iid,) = pool.instance_ids
        assert [(await generate(pool, PRO))[1]["success"] for _ in range(2)] == [True, True]
        status, body, headers = await generate(pool, PRO)
        assert status == 429 and body["error"] == "model_exhausted" and int(headers["retry-after"]) == 12 * 3600
        assert (await blocks(pool, iid))[PRO][0] == "cap"
        assert len(fake.generations) == 2
        assert (await generate(pool, FLASH))[1]["success"] is True  # no cap on the other model


# ---- settings -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("pace_pause", -1, "pace_pause"),
        ("pace_jitter", 1.5, "pace_jitter"),
        ("pace_per_exit", -2, "pace_per_exit"),
        ("pace_daily_cap", "pro=lots", "GATEWAY_PACE_DAILY_CAP"),
        ("pace_daily_cap", "0", "GATEWAY_PACE_DAILY_CAP"),
        ("usage_days", 0, "usage_days"),
        ("rate_limit_pause_max", 10, "GATEWAY_RATE_LIMIT_PAUSE_MAX"),
    ],
)
def test_pacing_settings_out_of_range_are_refused_with_their_name(field: str, value: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Settings(**{field: value})


def test_daily_caps_read_per_model_with_a_default() -> None:
    caps = Settings(pace_daily_cap=f"{PRO}=20, *=60").accounts.daily_caps
    assert caps == {PRO: 20, "*": 60}
    assert Settings(pace_daily_cap="40").accounts.daily_caps == {"*": 40}


async def test_a_quota_answer_landing_after_midnight_speaks_of_the_day_before(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    midnight = next_reset(datetime(2027, 1, 15, 20, 0, tzinfo=UTC))
    clock = ManualClock(midnight - timedelta(seconds=5))  # sent at 23:59:55 Pacific
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock) as pool:
        (iid,) = pool.instance_ids
        fake.script_generations(iid, FakeOutcome.error("quota_exhausted", retry_safe=True, delay=0.3))
        sent = asyncio.create_task(generate(pool, PRO))
        while not fake.generations:
            await asyncio.sleep(0.01)
        clock.advance(10)  # the answer lands at 00:00:05, in the new day
        await sent
        await pool.fleet.dispatcher.settled()
        async with pool.fleet.sessions() as session:
            row = (await session.execute(select(AccountUsage))).scalar_one()
        assert (row.day, row.quota_answers) == (date(2027, 1, 15), 1)  # counted in the day it was sent
        status, body, _ = await generate(pool, PRO)  # the new day's allowance is there
        assert status == 200 and body["success"] is True

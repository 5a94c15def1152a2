"""The account ledger made visible, on SQLite and Postgres with a manual clock: the management API's usage per
account and model and the pool's totals, per-instance pacing through PATCH (and its refusals, which change
nothing), the `/metrics` gauges, the panel's Accounts page in Chinese and English, and `aistudio-fleet accounts
usage` / `instances set`.

Two ways to fill the ledger: real tasks through the fake runtime (a quota answer teaches the capacity), and a
fake history written straight into its tables (`seed_*`), for totals over accounts in every state."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert, select, update

from fleet_contract import catalogue
from gateway.accounts.calendar import next_reset, pacific_day
from gateway.app import Fleet, create_admin_app, create_api_app
from gateway.cli.commands import main as cli_main
from gateway.db.models import AccountUsage, Instance, InstanceEvent, ModelBlock
from gateway.runtime.fake import FakeOutcome, FakeRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import ManualClock, Pool, open_pool, serve

PRO = "gemini-3-pro-image"
FLASH = "gemini-2.5-flash-image"
RESET = datetime(2027, 1, 16, 8, 0, tzinfo=UTC)  # the midnight Pacific after the clock's start
EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh-CN"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2027, 1, 15, 20, 0, tzinfo=UTC))  # 12:00 PST


def quota() -> FakeOutcome:
    return FakeOutcome.error("quota_exhausted", retry_safe=True)


def cell(account: dict[str, Any], model: str) -> dict[str, Any]:
    return next(m for m in account["models"] if m["model"] == model)


def pool_total(body: dict[str, Any], model: str) -> dict[str, Any]:
    return next(p for p in body["pool"] if p["model"] == model)


# ---- real tasks --------------------------------------------------------------------------------------------


@pytest.fixture
async def pool(database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=1, clock=clock) as opened:
        yield opened


@pytest.fixture
async def admin(pool: Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The management API and panel over the pool's own Fleet (so they read its clock)."""
    app = create_admin_app(pool.fleet.settings, fleet=pool.fleet)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def test_a_day_of_tasks_shows_made_capacity_left_and_the_block_until_midnight_pacific(
    pool: Pool, admin: httpx.AsyncClient, clock: ManualClock
) -> None:
    (iid,) = pool.instance_ids
    for _ in range(2):
        assert (await pool.generate(model=PRO)).json()["success"] is True
    pool.fake.script_generations(iid, quota())
    assert (await pool.generate(model=PRO)).json()["error_code"] == "quota_exhausted"
    await pool.fleet.dispatcher.settled()  # the answer goes out before its release is written

    body = (await admin.get(f"/api/instances/{iid}/usage")).json()
    assert body["success"] is True and body["name"] == "i0" and body["day"] == "2027-01-15"
    assert body["next_reset"] == "2027-01-16T08:00:00Z"
    pro = cell(body, PRO)
    assert (pro["made_today"], pro["quota_answers_today"], pro["learned_capacity"], pro["remaining"]) == (2, 1, 2, 0)
    assert pro["blocked"] is True and pro["block_kind"] == "quota" and pro["block_reason"]
    assert datetime.fromisoformat(pro["blocked_until"]) == RESET == next_reset(clock.now)
    flash = cell(body, FLASH)  # never ran out: nobody knows its capacity
    assert (flash["made_today"], flash["learned_capacity"], flash["remaining"], flash["blocked"]) == (0, None, None, False)

    everyone = (await admin.get("/api/accounts/usage")).json()
    assert [a["name"] for a in everyone["accounts"]] == ["i0"]
    assert everyone["models"][: len(catalogue.load().driven)] == [m.id for m in catalogue.load().driven]
    assert pool_total(everyone, PRO) == {"model": PRO, "made_today": 2, "remaining": 0, "unknown_capacity": 0,
                                         "blocked": 1, "accounts": 1}
    assert pool_total(everyone, FLASH)["unknown_capacity"] == 1

    # The next Pacific day: nothing made yet, the capacity learned stays, the block is over.
    clock.now = RESET + timedelta(minutes=1)
    pro = cell((await admin.get(f"/api/instances/{iid}/usage")).json(), PRO)
    assert (pro["made_today"], pro["learned_capacity"], pro["remaining"], pro["blocked"]) == (0, 2, 2, False)


async def test_metrics_show_each_account_and_model_and_the_pool(pool: Pool, clock: ManualClock) -> None:
    (iid,) = pool.instance_ids
    assert (await pool.generate(model=FLASH)).json()["success"] is True
    pool.fake.script_generations(iid, quota())
    await pool.generate(model=PRO)
    await pool.fleet.dispatcher.settled()
    text = (await pool.http.get("/metrics")).text
    assert f'aistudio_account_made_today{{instance="i0",model="{FLASH}"}} 1.0' in text
    assert f'aistudio_account_made_today{{instance="i0",model="{PRO}"}} 0.0' in text
    assert f'aistudio_account_remaining{{instance="i0",model="{PRO}"}} 0.0' in text
    assert f'aistudio_account_remaining{{instance="i0",model="{FLASH}"' not in text  # unknown: no series
    assert f'aistudio_account_blocked{{instance="i0",kind="quota",model="{PRO}"}} 1.0' in text
    assert f'aistudio_pool_remaining{{model="{PRO}"}} 0.0' in text
    # After the reset the block's series is gone, not left at its last value.
    clock.now = RESET
    text = (await pool.http.get("/metrics")).text
    assert "aistudio_account_blocked{" not in text
    assert f'aistudio_account_remaining{{instance="i0",model="{PRO}"}} 0.0' in text  # capacity 0: made none before


async def test_unknown_instances_are_404_and_unknown_models_422_with_the_name(
    pool: Pool, admin: httpx.AsyncClient
) -> None:
    ghost = str(uuid.uuid4())
    for instance_id in (ghost, "ghost-name"):
        for headers, words in ((EN, "does not exist"), (ZH, "不存在")):
            response = await admin.get(f"/api/instances/{instance_id}/usage", headers=headers)
            assert response.status_code == 404 and response.json()["error"] == "instance_not_found"
            assert instance_id in response.json()["message"] and words in response.json()["message"]
    for headers, words in ((EN, "Unknown model"), (ZH, "未知的模型")):
        response = await admin.get("/api/accounts/usage", params={"model": "gemini-9-ultra"}, headers=headers)
        assert response.status_code == 422 and response.json()["error"] == "model_unknown"
        assert "gemini-9-ultra" in response.json()["message"] and words in response.json()["message"]
        assert PRO in response.json()["message"]  # and what it may be
    only = (await admin.get("/api/accounts/usage", params={"model": PRO})).json()
    assert only["models"] == [PRO] and [m["model"] for m in only["accounts"][0]["models"]] == [PRO]
    assert [p["model"] for p in only["pool"]] == [PRO]
    (iid,) = pool.instance_ids
    one = (await admin.get(f"/api/instances/{iid}/usage", params={"model": FLASH})).json()
    assert [m["model"] for m in one["models"]] == [FLASH]
    assert (await admin.get(f"/api/instances/{iid}/usage", params={"model": "gemini-9-ultra"})).status_code == 422
    alias = next(a for m in catalogue.load().driven for a in m.aliases)
    by_alias = (await admin.get("/api/accounts/usage", params={"model": alias})).json()
    assert by_alias["models"] == [catalogue.load().find(alias).id]


# ---- per-instance pacing -------------------------------------------------------------------------------------


async def test_pacing_is_set_per_instance_and_a_new_cap_lifts_todays_cap_blocks(
    pool: Pool, admin: httpx.AsyncClient, clock: ManualClock
) -> None:
    (iid,) = pool.instance_ids
    await seed_block(pool.fleet, iid, PRO, "cap", RESET, "the daily cap of 1 is reached")
    await seed_block(pool.fleet, iid, FLASH, "quota", RESET, "quota")

    response = await admin.patch(f"/api/instances/{iid}", json={"pace_seconds": 2.5}, headers=EN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changed"] is True and body["instance"]["pace_seconds"] == 2.5 and body["instance"]["daily_cap"] is None
    assert body["message"] == 'Instance "i0": pause between tasks 2.5 s, daily cap per model the fleet\'s; from its next task.'
    assert cell((await admin.get(f"/api/instances/{iid}/usage")).json(), PRO)["block_kind"] == "cap"  # the pace alone lifts no cap

    response = await admin.patch(f"/api/instances/{iid}", json={"daily_cap": 40}, headers=ZH)
    assert response.status_code == 200 and response.json()["instance"]["daily_cap"] == 40
    assert "每日上限 40" in response.json()["message"]
    usage = (await admin.get(f"/api/instances/{iid}/usage")).json()
    assert usage["daily_cap"] == 40 and usage["pace_seconds"] == 2.5
    assert cell(usage, PRO)["blocked"] is False and cell(usage, PRO)["cap"] == 40  # the old cap's block is gone
    assert cell(usage, FLASH)["block_kind"] == "quota"  # Google's own answer stays
    assert "pacing_changed" in await event_kinds(pool.fleet, iid)

    # The same values again: nothing to change.
    again = (await admin.patch(f"/api/instances/{iid}", json={"pace_seconds": 2.5, "daily_cap": 40})).json()
    assert again["changed"] is False
    # null: back to the fleet's.
    cleared = (await admin.patch(f"/api/instances/{iid}", json={"pace_seconds": None, "daily_cap": None})).json()
    assert cleared["instance"]["pace_seconds"] is None and cleared["instance"]["daily_cap"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("pace_seconds", 3600.5), ("pace_seconds", -1), ("daily_cap", 0), ("daily_cap", 100_001)],
)
async def test_pacing_out_of_range_is_422_naming_the_field_and_changes_nothing(
    pool: Pool, admin: httpx.AsyncClient, field: str, value: float
) -> None:
    (iid,) = pool.instance_ids
    before = (await admin.get(f"/api/instances/{iid}")).json()["instance"]
    events = await event_kinds(pool.fleet, iid)
    body = {"proxy": "http://10.0.0.3:3128", "timezone": "Asia/Tokyo", "pace_seconds": 5, field: value}
    for headers in (EN, ZH):
        response = await admin.patch(f"/api/instances/{iid}", json=body, headers=headers)
        assert response.status_code == 422 and response.json()["error"] == f"{field}_invalid"
        assert field in response.json()["message"] and str(value) in response.json()["message"]
    assert (await admin.get(f"/api/instances/{iid}")).json()["instance"] == before  # not even the valid fields
    assert await event_kinds(pool.fleet, iid) == events


async def test_a_pacing_field_of_the_wrong_type_is_refused_and_changes_nothing(pool: Pool, admin: httpx.AsyncClient) -> None:
    (iid,) = pool.instance_ids
    response = await admin.patch(f"/api/instances/{iid}", json={"daily_cap": "lots"}, headers=EN)
    assert response.status_code == 400 and "daily_cap" in response.json()["message"]
    response = await admin.patch(f"/api/instances/{iid}", json={"daily_cap": True}, headers=EN)
    assert response.status_code in (400, 422) and "daily_cap" in response.json()["message"]
    assert (await admin.get(f"/api/instances/{iid}")).json()["instance"]["daily_cap"] is None
    empty = await admin.patch(f"/api/instances/{iid}", json={}, headers=EN)
    assert empty.status_code == 400 and "pace_seconds" in empty.json()["message"]


async def test_the_panel_sets_pacing_from_the_instance_page(pool: Pool, admin: httpx.AsyncClient) -> None:
    (iid,) = pool.instance_ids
    page = await admin.get(f"/instances/{iid}", headers=EN)
    assert 'data-action="set-pacing"' in page.text and "Pause between tasks" in page.text
    token = csrf(page.text)
    headers = {**EN, "HX-Request": "true", "X-CSRFToken": token}
    saved = await admin.post(f"/instances/{iid}/pacing", data={"pace_seconds": "7", "daily_cap": ""}, headers=headers)
    assert saved.status_code == 200 and "pause between tasks 7 s" in saved.text
    view = (await admin.get(f"/api/instances/{iid}")).json()["instance"]
    assert view["pace_seconds"] == 7.0 and view["daily_cap"] is None
    refused = await admin.post(f"/instances/{iid}/pacing", data={"pace_seconds": "7", "daily_cap": "many"}, headers=headers)
    assert refused.status_code == 422 and "daily_cap" in refused.text
    assert (await admin.get(f"/api/instances/{iid}")).json()["instance"]["daily_cap"] is None


# ---- a fake history: accounts in every state ----------------------------------------------------------------


@dataclass
class Seeded:
    fleet: Fleet
    admin: httpx.AsyncClient
    api: httpx.AsyncClient
    ids: dict[str, str]


@pytest.fixture
async def seeded(database_url: str, tmp_path: Path, fake: FakeRuntime, clock: ManualClock) -> AsyncIterator[Seeded]:
    """Four accounts, their ledger written directly (no reconciler: the rows stay as written):
    `rich` (capacity 10, 3 made, its own cap of 8), `fresh` (never ran out), `paused` (rate-limited),
    `parked` (stopped). And a model the catalogue no longer lists, still in `rich`'s history."""
    settings = make_settings(database_url, tmp_path, pace_daily_cap=f"{PRO}=20")
    fleet = await Fleet.open(settings, runtime=fake, reconcile=False, clock=clock)
    try:
        ids = {name: (await fleet.instances.create(name)).instance_id for name in ("rich", "fresh", "paused", "parked")}
        for name in ("rich", "fresh", "paused"):
            await set_columns(fleet, ids[name], target="running", status="running")
        await set_columns(fleet, ids["rich"], daily_cap=8, pace_seconds=1.5)
        today = pacific_day(clock.now)
        await seed_usage(fleet, ids["rich"], PRO, today - timedelta(days=3), made=10, made_at_quota=10)
        await seed_usage(fleet, ids["rich"], PRO, today, made=3)
        await seed_usage(fleet, ids["rich"], "imagen-legacy", today - timedelta(days=1), made=2)
        await seed_usage(fleet, ids["fresh"], PRO, today, made=1, failed=2)
        await seed_usage(fleet, ids["paused"], PRO, today - timedelta(days=1), made=5, made_at_quota=5)
        await seed_block(fleet, ids["paused"], PRO, "rate_limit", clock.now + timedelta(seconds=60), "429 from the page")
        await seed_usage(fleet, ids["parked"], PRO, today - timedelta(days=1), made=20, made_at_quota=20)
        await seed_usage(fleet, ids["parked"], PRO, today, made=4)
        # Older than the kept days: it teaches nothing any more.
        await seed_usage(fleet, ids["fresh"], PRO, today - timedelta(days=settings.usage_days + 1), made=50, made_at_quota=50)
        async with (
            serve(create_admin_app(settings, fleet=fleet)) as admin_url,
            serve(create_api_app(settings, fleet=fleet)) as api_url,
            httpx.AsyncClient(base_url=admin_url, timeout=30) as admin,
            httpx.AsyncClient(base_url=api_url, timeout=30) as api,
        ):
            yield Seeded(fleet, admin, api, ids)
    finally:
        await fleet.close()


async def test_the_pool_totals_count_accounts_meant_to_run_and_not_blocked(seeded: Seeded) -> None:
    body = (await seeded.admin.get("/api/accounts/usage")).json()
    by_name = {a["name"]: a for a in body["accounts"]}
    assert list(by_name) == ["rich", "fresh", "paused", "parked"]
    rich = cell(by_name["rich"], PRO)
    # Its own cap (8) beats the fleet's (20) and lowers its capacity (10): 8 - 3 made.
    assert (rich["made_today"], rich["learned_capacity"], rich["cap"], rich["remaining"]) == (3, 10, 8, 5)
    assert by_name["rich"]["daily_cap"] == 8 and by_name["rich"]["pace_seconds"] == 1.5
    fresh = cell(by_name["fresh"], PRO)
    assert (fresh["made_today"], fresh["failed_today"], fresh["learned_capacity"], fresh["remaining"], fresh["cap"]) == (1, 2, None, None, 20)
    paused = cell(by_name["paused"], PRO)
    assert paused["blocked"] is True and paused["block_kind"] == "rate_limit" and paused["remaining"] == 5
    assert paused["block_reason"] == "429 from the page"
    parked = cell(by_name["parked"], PRO)
    assert (parked["made_today"], parked["remaining"]) == (4, 16)
    assert pool_total(body, PRO) == {"model": PRO, "made_today": 8, "remaining": 5, "unknown_capacity": 1,
                                     "blocked": 1, "accounts": 3}
    assert body["models"][-1] == "imagen-legacy"  # the ledger still speaks of it
    assert (await seeded.admin.get("/api/accounts/usage", params={"model": "imagen-legacy"})).status_code == 200


async def test_the_seeded_gauges(seeded: Seeded) -> None:
    text = (await seeded.api.get("/metrics")).text
    assert f'aistudio_pool_remaining{{model="{PRO}"}} 5.0' in text
    assert f'aistudio_account_remaining{{instance="rich",model="{PRO}"}} 5.0' in text
    assert f'aistudio_account_made_today{{instance="parked",model="{PRO}"}} 4.0' in text
    assert f'aistudio_account_blocked{{instance="paused",kind="rate_limit",model="{PRO}"}} 1.0' in text
    assert "# HELP aistudio_account_made_today" in text


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (ZH, ["账户额度", "太平洋时间午夜", "号池剩余", "下次重置", "限流暂停", "间隔 1.5 s · 上限 8"]),
        (EN, ["Accounts", "midnight Pacific time", "Pool left", "Next reset", "Rate-limited", "pause 1.5 s · cap 8"]),
    ],
    ids=["zh", "en"],
)
async def test_the_accounts_page_in_both_languages(seeded: Seeded, headers: dict[str, str], words: list[str]) -> None:
    page = await seeded.admin.get("/accounts", headers=headers)
    assert page.status_code == 200
    for word in words:
        assert word in page.text, word
    assert 'href="/accounts" aria-current="page"' in page.text  # in the navigation, as the page open
    assert f'data-model="{PRO}" data-pool-left="5"' in page.text
    assert re.search(rf'data-model="{PRO}" data-made="3"\s+data-capacity="10"\s+data-left="5"', page.text)
    assert 'data-block="rate_limit"' in page.text and "429 from the page" in page.text
    assert 'datetime="2027-01-16T08:00:00+00:00"' in page.text and "2027-01-16 00:00 PST" in page.text
    fragment = await seeded.admin.get("/accounts", headers={**headers, "HX-Request": "true"})
    assert "<html" not in fragment.text and 'id="usage"' in fragment.text


async def test_the_event_list_names_blocks_and_renewals(seeded: Seeded, clock: ManualClock) -> None:
    rich = seeded.ids["rich"]
    async with seeded.fleet.sessions.begin() as session:
        for kind in ("model_blocked", "allowance_renewed"):
            session.add(InstanceEvent(instance_id=uuid.UUID(rich), instance_name="rich", kind=kind, message=f"{PRO}: {kind}"))
    zh = (await seeded.admin.get(f"/instances/{rich}", headers=ZH)).text
    en = (await seeded.admin.get(f"/instances/{rich}", headers=EN)).text
    assert "模型已暂停" in zh and "额度已恢复" in zh
    assert "Model blocked" in en and "Allowance renewed" in en


# ---- the command line ------------------------------------------------------------------------------------------


async def run_cli(admin: httpx.AsyncClient, *args: str) -> Result:
    """`aistudio-fleet` in a thread (its HTTP client blocks), against the served admin app."""
    runner = CliRunner()
    argv = ["--url", str(admin.base_url), *args]
    return await asyncio.to_thread(runner.invoke, cli_main, argv, catch_exceptions=False)


async def test_the_cli_prints_the_usage_table_and_sets_pacing(seeded: Seeded) -> None:
    shown = await run_cli(seeded.admin, "accounts", "usage", "--model", PRO)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].split() == ["ACCOUNT", "MODEL", "MADE", "TODAY", "CAPACITY", "CAP", "LEFT", "BLOCKED", "UNTIL", "WHY"]
    row = {line.split()[0]: line.split() for line in lines[2:6]}
    assert row["rich"][1:6] == [PRO, "3", "10", "8", "5"]
    assert row["fresh"][1:6] == [PRO, "1", "?", "20", "?"]
    assert row["paused"][6:] == ["2027-01-15", "20:01", "rate_limit:", "429", "from", "the", "page"]
    assert any(line.split()[:3] == [PRO, "8", "5"] for line in lines), shown.output  # the pool's line
    assert "midnight Pacific" in shown.output and "2027-01-16 08:00 UTC" in shown.output

    unknown = await run_cli(seeded.admin, "accounts", "usage", "--model", "gemini-9-ultra")
    assert unknown.exit_code == 1 and "gemini-9-ultra" in unknown.output

    done = await run_cli(seeded.admin, "instances", "set", "fresh", "--pace", "3", "--daily-cap", "12")
    assert done.exit_code == 0, done.output
    view = (await seeded.admin.get(f"/api/instances/{seeded.ids['fresh']}")).json()["instance"]
    assert (view["pace_seconds"], view["daily_cap"]) == (3.0, 12)
    refused = await run_cli(seeded.admin, "instances", "set", "fresh", "--daily-cap", "0")
    assert refused.exit_code == 1 and "daily_cap" in refused.output
    back = await run_cli(seeded.admin, "instances", "set", "fresh", "--daily-cap", "default")
    assert back.exit_code == 0
    assert (await seeded.admin.get(f"/api/instances/{seeded.ids['fresh']}")).json()["instance"]["daily_cap"] is None
    typo = await run_cli(seeded.admin, "instances", "set", "fresh", "--pace", "soon")
    assert typo.exit_code == 2 and "--pace" in typo.output


# ---- helpers ------------------------------------------------------------------------------------------------------


async def seed_usage(fleet: Fleet, iid: str, model: str, day: date, *, made: int, failed: int = 0,
                     made_at_quota: int | None = None) -> None:
    """A fake ledger row, as a past day (or today) would have left it."""
    row = {"instance_id": uuid.UUID(iid), "model": model, "day": day, "made": made, "failed": failed,
           "quota_answers": int(made_at_quota is not None), "made_at_quota": made_at_quota}
    async with fleet.sessions.begin() as session:
        await session.execute(insert(AccountUsage), [row])


async def seed_block(fleet: Fleet, iid: str, model: str, kind: str, until: datetime | None, reason: str) -> None:
    """A fake block, as the ledger writes one."""
    async with fleet.sessions.begin() as session:
        session.add(ModelBlock(instance_id=uuid.UUID(iid), model=model, kind=kind, until=until, reason=reason,
                               created_at=fleet.clock(), strikes=int(kind == "rate_limit")))


async def set_columns(fleet: Fleet, iid: str, **values: Any) -> None:
    async with fleet.sessions.begin() as session:
        await session.execute(update(Instance).where(Instance.id == uuid.UUID(iid)).values(**values))


async def event_kinds(fleet: Fleet, iid: str) -> list[str]:
    async with fleet.sessions() as session:
        return list((await session.scalars(select(InstanceEvent.kind).where(InstanceEvent.instance_id == uuid.UUID(iid)))).all())


def csrf(html: str) -> str:
    from tests.panel.conftest import csrf_token

    return csrf_token(html)

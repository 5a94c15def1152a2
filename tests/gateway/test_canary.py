"""The canary, on the fake runtime, on SQLite and Postgres: turning it on and off per model (422 for an unknown
one), a run that passes, a failing run after a pass (event, gauge, signed alert to a local receiver), the free
page check turning red when the fake's page changes, a quota answer recorded as skipped, settings out of range
refused by name, and the panel's Canary page in Chinese and English."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fleet_contract import catalogue
from gateway.app import create_admin_app
from gateway.db.models import InstanceEvent, Task
from gateway.runtime.fake import FakeOutcome, FakeRuntime
from tests.gateway.conftest import IsolatedSettings
from tests.gateway.pool import Pool, open_pool, serve
from tests.gateway.test_durable_tasks import receiver
from tests.polling import await_until

SECRET = "canary-alert-secret"
MODEL = catalogue.load().default_model
EN = {"Accept-Language": "en"}
ZH = {"Accept-Language": "zh-CN"}


@pytest.fixture
async def pool(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=1, webhook_secret=SECRET) as opened:
        yield opened


@pytest.fixture
async def admin(pool: Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_admin_app(pool.fleet.settings, fleet=pool.fleet)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


def model_entry(body: dict, model: str = MODEL) -> dict:
    return next(m for m in body["models"] if m["model"] == model)


async def test_turning_a_models_canary_on_and_off_and_unknown_models_refused(pool: Pool, admin: httpx.AsyncClient) -> None:
    listed = (await admin.get("/api/canary")).json()
    assert listed["interval_hours"] == 6 and listed["check_interval_minutes"] == 30
    assert "allowance" in listed["note"] and model_entry(listed)["enabled"] is False
    on = await admin.put(f"/api/canary/{MODEL}", json={"enabled": True})
    assert on.status_code == 200 and on.json() == {"success": True, "model": MODEL, "enabled": True}
    assert model_entry((await admin.get("/api/canary")).json())["enabled"] is True
    assert await pool.fleet.canary.enabled() == [MODEL]
    off = await admin.put(f"/api/canary/{MODEL}", json={"enabled": False})
    assert off.json()["enabled"] is False and await pool.fleet.canary.enabled() == []
    for call in (admin.put("/api/canary/no-such-model", json={"enabled": True}, headers=EN),
                 admin.post("/api/canary/no-such-model/run", headers=EN)):
        refused = await call
        assert refused.status_code == 422 and "no-such-model" in refused.text
    bad_kind = await admin.post(f"/api/canary/{MODEL}/run?kind=sometimes", headers=EN)
    assert bad_kind.status_code == 422 and "sometimes" in bad_kind.text


async def test_a_run_records_pass_with_its_task_marked_canary(pool: Pool, admin: httpx.AsyncClient) -> None:
    ran = await admin.post(f"/api/canary/{MODEL}/run")
    assert ran.status_code == 200, ran.text
    check, generation = ran.json()["runs"]
    assert check["kind"] == "check" and check["state"] == "pass" and check["instance"] == "i0"
    assert generation["kind"] == "generation" and generation["state"] == "pass" and generation["task_id"]
    assert generation["timings"]["total"] >= 0
    (task,) = await pool.task_rows()
    assert task.api == "canary" and str(task.id) == generation["task_id"] and task.model == MODEL
    assert pool.fake.generations[-1].aspect_ratio == "1:1"
    last = model_entry((await admin.get("/api/canary")).json())["last"]
    assert last["generation"]["state"] == "pass" and last["check"]["state"] == "pass"


async def test_a_failure_after_a_pass_raises_the_event_flips_the_gauge_and_sends_a_signed_alert(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    with receiver([500]) as (url, received):
        settings = {"webhook_secret": SECRET, "alert_webhook": url, "fetch_private_addresses": True, "webhook_backoff": 0.05}
        async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
            canary = pool.fleet.canary
            assert (await canary.run(MODEL, "generation")).ok is True
            metrics = (await pool.http.get("/metrics")).text
            assert f'aistudio_canary_ok{{kind="generation",model="{MODEL}"}} 1.0' in metrics
            (iid,) = pool.instance_ids
            fake.script_generations(iid, FakeOutcome.error("ui_changed", retry_safe=False))
            failed = await canary.run(MODEL, "generation")
            assert failed.ok is False and failed.step == "ui_changed" and failed.instance_name == "i0"
            metrics = (await pool.http.get("/metrics")).text
            assert f'aistudio_canary_ok{{kind="generation",model="{MODEL}"}} 0.0' in metrics
            assert f'aistudio_canary_last_run_timestamp{{kind="generation",model="{MODEL}"}}' in metrics
            await canary.alerts_settled()
            assert len(received) == 2  # a 500 first, then delivered
            body = received[-1]["body"]
            alert = json.loads(body)
            assert alert["event"] == "canary_failed" and alert["model"] == MODEL and alert["kind"] == "generation"
            assert alert["step"] == "ui_changed" and alert["time"]
            headers = {k.lower(): v for k, v in received[-1]["headers"].items()}
            expected = hmac.new(SECRET.encode(), headers["x-fleet-timestamp"].encode() + b"." + body, hashlib.sha256)
            assert headers["x-fleet-signature"] == "sha256=" + expected.hexdigest()
            # A second failure is no change: no new event, no new alert.
            fake.script_generations(iid, FakeOutcome.error("ui_changed", retry_safe=False))
            assert (await canary.run(MODEL, "generation")).ok is False
            await canary.alerts_settled()
            assert len(received) == 2
            assert (await canary.run(MODEL, "generation")).ok is True
            await canary.alerts_settled()
            assert json.loads(received[-1]["body"])["event"] == "canary_recovered"
            async with pool.fleet.sessions() as session:
                kinds = list((await session.scalars(select(InstanceEvent.kind).where(InstanceEvent.kind.like("canary%"))
                                                    .order_by(InstanceEvent.id))).all())
            assert kinds == ["canary_failed", "canary_recovered"]


async def test_an_alert_that_cannot_be_delivered_is_logged_and_the_canary_goes_on(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = {"webhook_secret": SECRET, "alert_webhook": "http://127.0.0.1:9/hook", "webhook_attempts": 2,
                "webhook_backoff": 0.01}  # private addresses refused: every attempt fails
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        fake.script_generations(pool.instance_ids[0], FakeOutcome.error("ui_changed", retry_safe=False))
        assert (await pool.fleet.canary.run(MODEL, "generation")).ok is False
        await pool.fleet.canary.alerts_settled()
        assert (await pool.fleet.canary.run(MODEL, "check")).ok is True


async def test_the_page_check_is_free_and_turns_red_when_the_page_changes(pool: Pool, admin: httpx.AsyncClient) -> None:
    canary = pool.fleet.canary
    assert (await canary.run(MODEL, "check")).ok is True
    (iid,) = pool.instance_ids
    pool.fake.fake_page_change(iid, "run_button", "prompt_textarea")
    red = await canary.run(MODEL, "check")
    assert red.ok is False and red.step == "missing_roles" and "run_button" in red.message
    assert pool.fake.generations == [] and await pool.task_rows() == []  # no image spent
    snapshots = await pool.fleet.instances.snapshots(iid)  # a copy of the page it failed on, for the override
    assert [s["reason"] for s in snapshots] == ["canary"]
    last = model_entry((await admin.get("/api/canary")).json())["last"]
    assert last["check"]["state"] == "fail" and last["generation"] is None
    metrics = (await pool.http.get("/metrics")).text
    assert f'aistudio_canary_ok{{kind="check",model="{MODEL}"}} 0.0' in metrics


async def test_a_quota_answer_is_skipped_not_red(pool: Pool) -> None:
    (iid,) = pool.instance_ids
    pool.fake.script_generations(iid, FakeOutcome.error("quota_exhausted", retry_safe=True))
    run = await pool.fleet.canary.run(MODEL, "generation")
    assert run.ok is None and run.state == "skipped" and run.step is not None and run.step.startswith("skipped")
    assert await pool.fleet.canary.latest() == []


async def test_due_runs_only_enabled_models_and_only_when_their_interval_passed(pool: Pool) -> None:
    canary = pool.fleet.canary
    assert await canary.due_once() == []
    await canary.set_enabled(MODEL, True)
    first = await canary.due_once()
    assert sorted(r.kind for r in first) == ["check", "generation"]
    assert await canary.due_once() == []  # neither is due again yet


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("canary_interval", 0, "GATEWAY_CANARY_INTERVAL"),
        ("canary_interval", 1000, "GATEWAY_CANARY_INTERVAL"),
        ("canary_check_interval", 0.5, "GATEWAY_CANARY_CHECK_INTERVAL"),
        ("canary_check_interval", 100000, "GATEWAY_CANARY_CHECK_INTERVAL"),
        ("alert_webhook", "ftp://example.com/x", "GATEWAY_ALERT_WEBHOOK"),
        ("alert_webhook", "https://alerts.example.com/hook", "GATEWAY_WEBHOOK_SECRET"),
    ],
)
def test_canary_settings_out_of_range_are_refused_with_their_name(field: str, value: object, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        IsolatedSettings(**{field: value})


async def test_the_panel_canary_page_in_chinese_and_english(pool: Pool, admin: httpx.AsyncClient) -> None:
    await pool.fleet.canary.set_enabled(MODEL, True)
    pool.fake.fake_page_change(pool.instance_ids[0], "run_button")
    await pool.fleet.canary.run(MODEL, "check")
    zh = await admin.get("/canary", headers=ZH)
    assert zh.status_code == 200 and "金丝雀检测" in zh.text and "每日额度" in zh.text and "run_button" in zh.text
    assert f'data-canary-model="{MODEL}"' in zh.text and 'data-canary-state="fail"' in zh.text
    en = await admin.get("/canary", headers=EN)
    assert en.status_code == 200 and "Canary" in en.text and "daily allowance" in en.text

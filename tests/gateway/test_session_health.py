"""Session health on the fake runtime: the idle login check, session age, expiry warnings in the API,
the panel and /metrics; and the pure rules behind them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import Fleet, create_admin_app, create_api_app
from gateway.errors import FleetError
from gateway.reconciler.decide import InstanceRow
from gateway.reconciler.session_health import health_changes, login_check_due, parse_time
from gateway.runtime.fake import FakeRuntime
from gateway.instance_client import InstanceStatus
from tests.gateway.conftest import event_kinds, make_settings, passes_until, status_is
from tests.polling import await_until

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
DAY = 86400.0


def _row(**values: Any) -> InstanceRow:
    base: dict[str, Any] = dict(
        id=None, name="a", target="running", status="running", login_state="logged_in", busy=False,
        restart_count=0, next_restart_at=None, started_at=NOW, endpoint="http://x", token="t",
    )
    return InstanceRow(**{**base, **values})


# ---- the rules ---------------------------------------------------------------------------------------


def test_a_check_is_due_only_for_an_idle_ready_instance_whose_page_is_stale() -> None:
    stale = (NOW - timedelta(minutes=11)).isoformat()
    fresh = (NOW - timedelta(minutes=9)).isoformat()
    assert login_check_due(InstanceStatus(ready=True, login_checked_at=stale), NOW, 600)
    assert login_check_due(InstanceStatus(ready=True, login_checked_at=None), NOW, 600)
    assert not login_check_due(InstanceStatus(ready=True, login_checked_at=fresh), NOW, 600)
    assert not login_check_due(InstanceStatus(ready=True, busy=True, login_checked_at=stale), NOW, 600)
    assert not login_check_due(InstanceStatus(ready=False, login_checked_at=stale), NOW, 600)
    assert not login_check_due(InstanceStatus(ready=True, login_checked_at=stale), NOW, 0)  # 0 turns it off


def test_session_age_starts_at_the_first_login_and_ends_at_a_sign_out() -> None:
    values, _ = health_changes(_row(), InstanceStatus(ready=True), "logged_in", NOW, DAY)
    assert values["signed_in_since"] == NOW
    since = NOW - timedelta(days=40)
    values, _ = health_changes(_row(signed_in_since=since), InstanceStatus(ready=True), "logged_in", NOW, DAY)
    assert "signed_in_since" not in values  # unchanged: nothing written
    for signed_out in ("needs_login", "signin_refused"):
        values, _ = health_changes(_row(signed_in_since=since), InstanceStatus(ready=True), signed_out, NOW, DAY)
        assert values["signed_in_since"] is None


def test_an_expiring_session_is_announced_once() -> None:
    soon = NOW + timedelta(hours=20)
    status = InstanceStatus(ready=True, session_expires_at=soon.isoformat())
    values, events = health_changes(_row(signed_in_since=NOW), status, "logged_in", NOW, DAY)
    assert values == {"session_expires_at": soon}
    assert [kind for kind, _ in events] == ["session_expiring"]
    _, again = health_changes(_row(signed_in_since=NOW, session_expires_at=soon), status, "logged_in", NOW, DAY)
    assert again == []
    far = InstanceStatus(ready=True, session_expires_at=(NOW + timedelta(days=200)).isoformat())
    assert health_changes(_row(signed_in_since=NOW), far, "logged_in", NOW, DAY)[1] == []


def test_unreadable_or_naive_times_from_an_instance_are_ignored() -> None:
    assert parse_time("yesterday") is None
    assert parse_time("2026-12-03T08:00:00") is None  # no zone: cannot be compared safely
    assert parse_time("2026-12-03T08:00:00+00:00") == NOW


# ---- through the reconciler --------------------------------------------------------------------------


@pytest.fixture
async def checked_fleet(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Fleet]:
    """Passes driven by hand, on each database; the login check every 60 s."""
    settings = make_settings(database_url, tmp_path, login_check_interval=60.0)
    opened = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        yield opened
    finally:
        await opened.close()


async def _running(fleet: Fleet, name: str) -> str:
    view = await fleet.instances.create(name)
    await fleet.instances.start(view.instance_id)
    await passes_until(fleet, lambda: status_is(fleet, view.instance_id, "running"))
    return view.instance_id


async def test_an_idle_instance_signed_out_is_noticed_by_the_login_check(checked_fleet: Fleet, fake: FakeRuntime) -> None:
    fleet = checked_fleet
    instance_id = await _running(fleet, "idle")
    await passes_until(fleet, lambda: _has(fleet, instance_id, "signed_in_since"))
    fake.sign_out_silently(instance_id)
    for _ in range(3):  # the page was loaded at start: nothing is due, the stale state stays
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
    assert (await fleet.instances.get(instance_id)).login_state == "logged_in"
    assert fake.containers[instance_id].login_checks == 0

    fake.set_login_checked_at(instance_id, (datetime.now(UTC) - timedelta(seconds=61)).isoformat())
    await passes_until(fleet, lambda: _login(fleet, instance_id, "needs_login"))
    view = await fleet.instances.get(instance_id)
    assert not view.available and view.signed_in_since is None
    assert fake.containers[instance_id].login_checks == 1
    assert (await event_kinds(fleet, instance_id))[-1] == "login_state_changed"


async def test_a_busy_instance_is_not_checked(checked_fleet: Fleet, fake: FakeRuntime) -> None:
    fleet = checked_fleet
    instance_id = await _running(fleet, "busy")
    fake.containers[instance_id].busy = True
    fake.set_login_checked_at(instance_id, (datetime.now(UTC) - timedelta(hours=1)).isoformat())
    for _ in range(3):
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
    assert fake.containers[instance_id].login_checks == 0


async def test_a_session_import_starts_the_session_age_again(checked_fleet: Fleet) -> None:
    fleet = checked_fleet
    instance_id = await _running(fleet, "imported")
    await passes_until(fleet, lambda: _has(fleet, instance_id, "signed_in_since"))
    first = (await fleet.instances.get(instance_id)).signed_in_since
    state = {"cookies": [{"name": "SID", "value": "another", "domain": ".google.com", "path": "/"}], "origins": []}
    await fleet.instances.import_session(instance_id, json.dumps(state).encode())
    assert (await fleet.instances.get(instance_id)).signed_in_since > first
    # An import that would leave the browser signed out is refused, and changes nothing.
    second = (await fleet.instances.get(instance_id)).signed_in_since
    with pytest.raises(FleetError):
        await fleet.instances.import_session(instance_id, json.dumps({"cookies": [], "origins": []}).encode())
    assert (await fleet.instances.get(instance_id)).signed_in_since == second


async def _login(fleet: Fleet, instance_id: str, state: str) -> bool:
    return (await fleet.instances.get(instance_id)).login_state == state


async def _has(fleet: Fleet, instance_id: str, field: str) -> bool:
    return getattr(await fleet.instances.get(instance_id), field) is not None


# ---- API, panel, metrics -----------------------------------------------------------------------------


async def test_an_expiring_session_shows_in_the_api_the_panel_and_metrics(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    settings = make_settings(sqlite_url, tmp_path, session_warn_before=2 * DAY)
    expires = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as admin:  # its reconciler loops
        instance_id, other_id = [await _started_through_the_api(admin, name) for name in ("expiring", "fine")]
        fake.set_session_expiry(instance_id, expires.isoformat())
        fake.set_session_expiry(other_id, (datetime.now(UTC) + timedelta(days=300)).isoformat())
        view = await _view_until(admin, instance_id, lambda v: v["session_expires_at"] is not None)
        assert view["session_expiring"] is True and view["signed_in_since"] is not None
        assert datetime.fromisoformat(view["session_expires_at"]) == expires
        other = await _view_until(admin, other_id, lambda v: v["session_expires_at"] is not None)
        assert other["session_expiring"] is False
        events = (await admin.get(f"/api/instances/{instance_id}/events")).json()["events"]
        assert "session_expiring" in [e["kind"] for e in events]

        page = await admin.get(f"/instances/{instance_id}", headers={"Accept-Language": "en"})
        assert "data-session-expiring" in page.text and "Signed in for" in page.text
        assert "data-session-expiring" not in (await admin.get(f"/instances/{other_id}")).text

    async with AsyncTestClient(create_api_app(settings, runtime=fake)) as api:
        metrics = (await api.get("/metrics")).text
    assert _metric(metrics, "aistudio_sessions_expiring") == 1
    assert _metric(metrics, 'aistudio_session_expiry_timestamp_seconds{instance="expiring"}') == expires.timestamp()


async def _started_through_the_api(admin: AsyncTestClient[Any], name: str) -> str:
    instance_id = (await admin.post("/api/instances", json={"name": name})).json()["instance_id"]
    await admin.post(f"/api/instances/{instance_id}/start")
    await _view_until(admin, instance_id, lambda v: v["status"] == "running")
    return instance_id


async def _view_until(admin: AsyncTestClient[Any], instance_id: str, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    return await await_until(lambda: _view(admin, instance_id), until=check, timeout=timeout, what="the instance's view")


async def _view(admin: AsyncTestClient[Any], instance_id: str) -> dict[str, Any]:
    return (await admin.get(f"/api/instances/{instance_id}")).json()["instance"]


def _metric(exposition: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in exposition.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not exposed once:\n{exposition}"
    return values[0]


async def test_a_refused_sign_in_tells_the_operator_what_to_do(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with AsyncTestClient(create_admin_app(make_settings(sqlite_url, tmp_path), runtime=fake)) as admin:
        instance_id = await _started_through_the_api(admin, "refused")
        fake.set_login_state(instance_id, "signin_refused")
        view = await _view_until(admin, instance_id, lambda v: v["login_state"] == "signin_refused")
        assert view["available"] is False
        zh = (await admin.get(f"/instances/{instance_id}")).text
        assert 'data-login-advice="signin_refused"' in zh and "Google 拒绝登录" in zh and "导入" in zh
        en = (await admin.get(f"/instances/{instance_id}", headers={"Accept-Language": "en"})).text
        assert "Google refused sign-in" in en and "INSTANCE_BROWSER_MODE" in en

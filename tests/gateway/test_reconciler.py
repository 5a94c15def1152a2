"""The reconciler on the fake runtime: every fault, adoption after a restart, orphans, give-up."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from gateway.app import Fleet
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import event_kinds, make_settings, passes_until, status_is
from tests.polling import await_until


async def create_started(fleet: Fleet, name: str = "a") -> str:
    view = await fleet.instances.create(name)
    await fleet.instances.start(view.instance_id)
    return view.instance_id


async def running(fleet: Fleet, name: str = "a") -> str:
    instance_id = await create_started(fleet, name)
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    return instance_id


async def engine_started(fleet: Fleet, instance_id: str) -> None:
    """The engine runs its container (the start's own write says so); waiting for it to be ready comes next."""
    await await_until(lambda: event_kinds(fleet, instance_id), until=lambda kinds: "started" in kinds, timeout=5,
                      what="the 'started' event")


async def test_start_waits_for_ready_by_probing_and_records_login(fleet: Fleet, fake: FakeRuntime) -> None:
    fake.ready_delay = 0.3
    instance_id = await create_started(fleet)
    began = time.monotonic()
    await fleet.reconciler.reconcile_once()
    assert (await fleet.instances.get(instance_id)).status == "starting"
    await fleet.reconciler.drain()
    elapsed = time.monotonic() - began
    view = await fleet.instances.get(instance_id)
    assert view.status == "running" and view.login_state == "logged_in" and view.available
    assert 0.3 <= elapsed < 1.5  # ready as soon as /status says so, well before start_timeout (2 s)
    container = fake.containers[instance_id]
    assert container.env["INSTANCE_API_TOKEN"] == container.token
    assert container.env["INSTANCE_AISTUDIO_URL"] == fleet.settings.aistudio_url
    assert await event_kinds(fleet, instance_id) == ["created", "start_requested", "started", "ready"]


async def test_needs_login_is_recorded_and_changes_are_logged(fleet: Fleet, fake: FakeRuntime) -> None:
    fake.default_login_state = "needs_login"
    instance_id = await running(fleet)
    view = await fleet.instances.get(instance_id)
    assert view.login_state == "needs_login" and not view.available
    fake.set_login_state(instance_id, "logged_in")
    await passes_until(fleet, lambda: _login_is(fleet, instance_id, "logged_in"))
    assert (await event_kinds(fleet, instance_id))[-1] == "login_state_changed"


async def _login_is(fleet: Fleet, instance_id: str, state: str) -> bool:
    return (await fleet.instances.get(instance_id)).login_state == state


async def test_fails_to_start_then_restarts_with_backoff(fleet: Fleet, fake: FakeRuntime) -> None:
    fake.fail_next_starts(1, reason="image not found")
    instance_id = await create_started(fleet)
    await fleet.reconciler.reconcile_once()
    await fleet.reconciler.drain()
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and view.error_message == "image not found"
    assert view.next_restart_at is not None and view.restart_count == 1
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    assert fake.starts(instance_id) == 2
    view = await fleet.instances.get(instance_id)
    assert view.error_message is None and view.restart_count == 1  # cleared only after a stable while
    assert ["start_failed", "restarting"] == (await event_kinds(fleet, instance_id))[2:4]


async def test_gives_up_after_max_restarts_and_a_manual_start_retries(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await create_started(fleet)
    fake.fail_next_starts(3, instance_id=instance_id, reason="no space left on device")
    await passes_until(fleet, lambda: _gave_up(fleet, instance_id))
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and view.target == "running"
    assert "no space left on device" in view.error_message and "gave up after 2 restarts" in view.error_message
    assert fake.starts(instance_id) == 3  # the first try and max_restarts=2 restarts
    for _ in range(5):  # given up means no more tries until a person asks
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
    assert fake.starts(instance_id) == 3
    assert "gave_up" in await event_kinds(fleet, instance_id)
    await fleet.instances.start(instance_id)
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    assert fake.starts(instance_id) == 4


async def _gave_up(fleet: Fleet, instance_id: str) -> bool:
    return "gave_up" in await event_kinds(fleet, instance_id)


async def test_slow_engine_start_within_timeout_succeeds(fleet: Fleet, fake: FakeRuntime) -> None:
    fake.start_delay = 0.2
    fake.ready_delay = 0.2
    instance_id = await create_started(fleet)
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    assert fake.starts(instance_id) == 1


async def test_never_ready_fails_after_start_timeout(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    settings = make_settings(sqlite_url, tmp_path, start_timeout=0.3, max_restarts=0)
    async with _fleet(settings, fake) as fleet:
        instance_id = (await fleet.instances.create("slow")).instance_id
        fake.never_ready(instance_id)
        await fleet.instances.start(instance_id)
        began = time.monotonic()
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
        assert 0.3 <= time.monotonic() - began < 1.5
        view = await fleet.instances.get(instance_id)
        assert view.status == "error" and "not ready after 0.3s" in view.error_message
        assert fake.containers[instance_id].phase == "exited"  # stopped when giving up


async def test_process_dying_during_start_fails_fast(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = (await fleet.instances.create("crashy")).instance_id
    fake.exit_on_start(instance_id)
    await fleet.instances.start(instance_id)
    began = time.monotonic()
    await fleet.reconciler.reconcile_once()
    await fleet.reconciler.drain()
    assert time.monotonic() - began < 1.5  # noticed by inspecting, not by waiting for start_timeout (2 s)
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and "exited with code 1 before it was ready" in view.error_message


@pytest.mark.parametrize(("fault", "reason"), [("kill", "exited with code 137"), ("vanish", "disappeared")])
async def test_dead_container_is_restarted(fleet: Fleet, fake: FakeRuntime, fault: str, reason: str) -> None:
    instance_id = await running(fleet)
    old_token = fake.containers[instance_id].token
    getattr(fake, fault)(instance_id)
    await fleet.reconciler.reconcile_once()
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and reason in view.error_message
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    assert fake.starts(instance_id) == 2
    assert fake.containers[instance_id].token != old_token  # a fresh token on every start
    kinds = await event_kinds(fleet, instance_id)
    assert kinds[kinds.index("died") :] == ["died", "restarting", "started", "ready"]


async def test_unresponsive_instance_is_restarted_after_failed_probes(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    fake.hang(instance_id)
    await fleet.reconciler.reconcile_once()
    assert await status_is(fleet, instance_id, "running")  # one missed probe is not a death
    await fleet.reconciler.reconcile_once()
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and "not answering /status" in view.error_message
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))
    assert fake.starts(instance_id) == 2


async def test_engine_down_pass_fails_gracefully_and_recovers(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    fake.engine_down("cannot connect to the daemon")
    report = await fleet.reconciler.reconcile_once()
    assert not report.engine_ok
    assert fleet.engine_health.ok is False and "daemon" in fleet.engine_health.reason
    stats = await fleet.instances.stats()  # reads keep working
    assert stats.engine.ok is False and stats.running_instances == 1
    fake.engine_up()
    report = await fleet.reconciler.reconcile_once()
    assert report.engine_ok and fleet.engine_health.ok
    assert await status_is(fleet, instance_id, "running") and fake.starts(instance_id) == 1


async def test_engine_down_mid_start_does_not_count_as_a_crash(fleet: Fleet, fake: FakeRuntime) -> None:
    fake.start_delay = 0.1
    instance_id = await create_started(fleet)
    await fleet.reconciler.reconcile_once()
    fake.engine_down()
    await fleet.reconciler.drain()
    view = await fleet.instances.get(instance_id)
    assert view.status == "error" and view.restart_count == 0 and "fake engine unavailable" in view.error_message
    fake.engine_up()
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "running"))


async def test_stop_moves_to_stopped_and_keeps_the_volume(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    await fleet.instances.stop(instance_id)
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "stopped"))
    assert fake.containers[instance_id].phase == "exited" and instance_id in fake.volumes
    assert (await event_kinds(fleet, instance_id))[-2:] == ["stop_requested", "stopped"]


async def test_adoption_after_gateway_restart_keeps_healthy_instances(
    sqlite_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = make_settings(sqlite_url, tmp_path)
    async with _fleet(settings, fake) as first:
        ids = [await running(first, f"i{n}") for n in range(3)]
        tokens = {iid: fake.containers[iid].token for iid in ids}
    # The gateway is gone; its instances are not. A new gateway on the same database finds them.
    async with _fleet(settings, fake) as second:
        await second.reconciler.reconcile_once()
        await second.reconciler.drain()
        for iid in ids:
            assert await status_is(second, iid, "running")
            assert (await event_kinds(second, iid))[-1] == "adopted"
        assert sorted(fake.containers) == sorted(ids)  # no duplicates, no orphans
        assert {iid: fake.containers[iid].token for iid in ids} == tokens  # not restarted
        assert fake.starts() == 3
        await second.reconciler.reconcile_once()
        for iid in ids:
            assert (await event_kinds(second, iid)).count("adopted") == 1


async def test_start_in_progress_at_gateway_restart_is_awaited_not_repeated(
    sqlite_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    fake.ready_delay = 0.4
    settings = make_settings(sqlite_url, tmp_path)
    async with _fleet(settings, fake) as first:
        instance_id = await create_started(first)
        await first.reconciler.reconcile_once()
        await engine_started(first, instance_id)  # started, not ready yet: the gateway dies now
    async with _fleet(settings, fake) as second:
        assert await status_is(second, instance_id, "starting")
        await passes_until(second, lambda: status_is(second, instance_id, "running"))
        assert fake.starts(instance_id) == 1
        assert (await event_kinds(second, instance_id))[-1] == "adopted"


async def test_orphan_container_is_removed_but_its_volume_kept(fleet: Fleet, fake: FakeRuntime) -> None:
    owned = await running(fleet)
    orphan = str(uuid.uuid4())
    fake.plant(orphan)
    fake.volumes[orphan] = {"session": {"cookies": [{"name": "SID"}]}}
    report = await fleet.reconciler.reconcile_once()
    assert report.orphans_removed == 1
    assert orphan not in fake.containers and orphan in fake.volumes
    assert owned in fake.containers and fake.containers[owned].phase == "running"
    events = await fleet.instances.events(orphan)
    assert [e.kind for e in events] == ["orphan_removed"]


async def test_delete_removes_container_and_volume(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    await fleet.instances.stop(instance_id)
    await passes_until(fleet, lambda: status_is(fleet, instance_id, "stopped"))
    await fleet.instances.delete(instance_id)
    assert instance_id not in fake.containers and instance_id not in fake.volumes
    assert [e.kind for e in await fleet.instances.events(instance_id)][0] == "removed"  # history outlives the row


async def test_delete_can_keep_the_volume(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with _fleet(make_settings(sqlite_url, tmp_path, remove_volume_on_delete=False), fake) as fleet:
        instance_id = await running(fleet)
        await fleet.instances.stop(instance_id)
        await passes_until(fleet, lambda: status_is(fleet, instance_id, "stopped"))
        await fleet.instances.delete(instance_id)
        assert instance_id not in fake.containers and instance_id in fake.volumes


async def test_loop_wakes_up_when_a_target_changes(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    settings = make_settings(sqlite_url, tmp_path, reconcile_interval=30.0)
    async with _fleet(settings, fake, reconcile=True) as fleet:
        await asyncio.wait_for(fleet.reconciler.next_pass(), 5)  # a pass has run; the next is 30 s away unless woken
        instance_id = await create_started(fleet)
        await await_until(lambda: status_is(fleet, instance_id, "running"), timeout=2,
                          what="the API's start to wake the reconciler")


async def test_legacy_session_goes_to_the_first_instance_created_after_it_appears(
    sqlite_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    legacy = tmp_path / "ai_studio_session.json"
    settings = make_settings(sqlite_url, tmp_path, legacy_session_file=legacy)
    async with _fleet(settings, fake) as fleet:
        before = (await fleet.instances.create("before")).instance_id  # no file yet: nothing to migrate
        legacy.write_text('{"cookies": [{"name": "SID", "value": "old"}], "origins": []}')
        first = await running(fleet, "first")
        second = await running(fleet, "second")
        assert fake.volumes[first]["session"]["cookies"] == [{"name": "SID", "value": "old"}]
        assert "session" not in fake.volumes[second]
        assert before not in fake.volumes
        assert (await event_kinds(fleet, first))[-1] == "session_imported"
    # A restarted gateway remembers the file was consumed; a new file is migrated again.
    async with _fleet(settings, fake) as fleet:
        third = await running(fleet, "third")
        assert "session" not in fake.volumes[third]
        legacy.write_text('[{"name": "SID", "value": "new"}]')
        fourth = await running(fleet, "fourth")
        assert fake.volumes[fourth]["session"]["cookies"] == [{"name": "SID", "value": "new"}]


def _fleet(settings, fake: FakeRuntime, reconcile: bool = False):  # type: ignore[no-untyped-def]
    from gateway.app import open_fleet

    return open_fleet(settings, runtime=fake, reconcile=reconcile)


async def test_stop_during_a_slow_start_aborts_the_wait(sqlite_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    async with _fleet(make_settings(sqlite_url, tmp_path, start_timeout=6.0), fake) as fleet:
        instance_id = (await fleet.instances.create("slow")).instance_id
        fake.never_ready(instance_id)
        await fleet.instances.start(instance_id)
        await fleet.reconciler.reconcile_once()
        await engine_started(fleet, instance_id)
        await fleet.instances.stop(instance_id)  # while the start waits for a ready that never comes
        began = time.monotonic()
        await passes_until(fleet, lambda: status_is(fleet, instance_id, "stopped"))
        assert time.monotonic() - began < 3.0  # not held until start_timeout (6 s)
        kinds = await event_kinds(fleet, instance_id)
        assert "start_failed" not in kinds and kinds[-1] == "stopped"


async def test_a_dead_containers_last_log_lines_are_kept_in_its_event(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    fake.containers[instance_id].log("Chromium: out of memory")
    fake.kill(instance_id)
    await fleet.reconciler.reconcile_once()
    died = [e for e in await fleet.instances.events(instance_id) if e.kind == "died"]
    assert "Chromium: out of memory" in died[0].message and "exited with code 137" in died[0].message
    assert (await fleet.instances.get(instance_id)).error_message == "container exited with code 137"

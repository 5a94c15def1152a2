"""Google's refusal page, as an instance reports it on /status, reaches the gateway's row; the browser mode
setting reaches the instances (fake runtime)."""

from __future__ import annotations

from pathlib import Path

from gateway.app import Fleet
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import event_kinds, make_settings, passes_until
from tests.gateway.test_reconciler import _login_is, running


async def test_signin_refused_is_recorded_and_keeps_the_instance_out_of_the_pool(fleet: Fleet, fake: FakeRuntime) -> None:
    instance_id = await running(fleet)
    assert (await fleet.instances.get(instance_id)).available
    fake.set_login_state(instance_id, "signin_refused")
    await passes_until(fleet, lambda: _login_is(fleet, instance_id, "signin_refused"))
    view = await fleet.instances.get(instance_id)
    assert view.status == "running" and not view.available
    assert (await event_kinds(fleet, instance_id))[-1] == "login_state_changed"


async def test_browser_mode_setting_is_forwarded_to_instances(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    settings = make_settings(database_url, tmp_path, instance_browser_mode="headless-shell")
    opened = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        instance_id = await running(opened)
        assert fake.containers[instance_id].env["INSTANCE_BROWSER_MODE"] == "headless-shell"
    finally:
        await opened.close()

"""Logins that last, against a simulator as unkind as the real page: it renews its session cookie on every page
load and refuses a stale value, opens signed out with only a "Sign in" link, and redirects to the regions page.

Real Chromium, the instance as a process (tests/e2e and tests/instance/test_container.py run the built image)."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.instance.conftest import sim
from tests.instance.harness import descendants, saved_cookie, signed_in_state, start_instance, wait_saved_renewal
from tests.polling import wait_until

pytestmark = pytest.mark.browser


def _renew(inst, sim_url: str, account: str, times: int) -> str:
    """Page loads renew the account's cookie; each renewal on the volume before the next. The newest value."""
    value = ""
    for _ in range(times):
        assert inst.client.post("/navigate", json={"target": "home"}).is_success
        value = wait_saved_renewal(inst.data_dir, sim_url, account, timeout=5)
    return value


def test_a_renewed_cookie_is_on_the_volume_within_seconds(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-renew")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        first = wait_saved_renewal(fresh_dir, simulator_url, "acct-renew", timeout=5)
        newest = _renew(inst, simulator_url, "acct-renew", times=3)
        assert newest != first
        record = sim(simulator_url, "/_sim/record")
        assert record["cookie_renewals_by_account"]["acct-renew"] >= 4
        assert saved_cookie(fresh_dir) == record["current_cookie_by_account"]["acct-renew"]


def test_sigkill_after_renewals_comes_back_signed_in_as_the_same_account(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-crash")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        _renew(inst, simulator_url, "acct-crash", times=3)
        _kill_hard(inst.process.pid)  # as an OOM kill or `docker kill` would: no shutdown save
        inst.process.wait(timeout=10)
    with start_instance(simulator_url, fresh_dir) as inst:
        status = inst.wait_for(lambda s: s["ready"] and s["login_state"] != "unknown", what="ready")
        assert status["login_state"] == "logged_in", inst.log_tail()
        assert inst.generate("after the crash").json()["success"]
        record = sim(simulator_url, "/_sim/record")
        assert record["generations"][-1]["account"] == "acct-crash"
        assert record["stale_cookie_refused_by_account"].get("acct-crash", 0) == 0


def test_the_simulator_refuses_a_copy_older_than_the_newest_renewal(simulator_url, fresh_dir):
    """The other side of the test above: a login saved before the renewals is signed out, as Google may do."""
    sim(simulator_url, "/_sim/config", {"stale_grace_ms": 0})
    session = signed_in_state(simulator_url, "acct-stale")
    with start_instance(simulator_url, fresh_dir, session=session) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        old = {**session, "cookies": [*session["cookies"], _sidts(simulator_url, wait_saved_renewal(
            fresh_dir, simulator_url, "acct-stale", timeout=5))]}
        _renew(inst, simulator_url, "acct-stale", times=1)
    stale_dir = fresh_dir.parent / "stale"
    with start_instance(simulator_url, stale_dir, session=old) as inst:
        status = inst.wait_for(lambda s: s["ready"] and s["login_state"] != "unknown", what="ready")
        assert status["login_state"] == "needs_login"


def test_an_import_of_a_dead_session_leaves_the_working_login_and_the_previous_can_be_restored(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-a")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        wait_saved_renewal(fresh_dir, simulator_url, "acct-a", timeout=5)
        stored = (fresh_dir / "storage_state.json").read_bytes()

        sim(simulator_url, "/_sim/accounts/acct-dead/revoke", {})  # well formed, and signed out at Google
        refused = inst.client.put("/session", json=signed_in_state(simulator_url, "acct-dead"))
        assert refused.status_code == 422, refused.text
        assert "not signed in" in refused.json()["detail"]
        assert (fresh_dir / "storage_state.json").read_bytes() == stored
        assert inst.status()["login_state"] == "logged_in"
        assert inst.generate("still a").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][-1]["account"] == "acct-a"

        imported = inst.client.put("/session", json=signed_in_state(simulator_url, "acct-b"))
        assert imported.status_code == 200 and imported.json()["login_state"] == "logged_in", imported.text
        assert (fresh_dir / "storage_state.previous.json").exists()
        assert inst.generate("now b").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][-1]["account"] == "acct-b"

        restored = inst.client.post("/session/restore")
        assert restored.status_code == 200 and restored.json()["login_state"] == "logged_in", restored.text
        assert inst.generate("a again").json()["success"]
        assert sim(simulator_url, "/_sim/record")["generations"][-1]["account"] == "acct-a"


def test_a_page_with_only_a_signin_link_is_needs_login_at_load_after_a_task_and_in_the_check(simulator_url, fresh_dir):
    sim(simulator_url, "/_sim/config", {"signed_out_page": "link"})
    sim(simulator_url, "/_sim/accounts/acct-link/revoke", {})
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-link")) as inst:
        status = inst.wait_for(lambda s: s["ready"] and s["login_state"] != "unknown", what="ready")
        assert status["login_state"] == "needs_login" and "/prompts/" in status["page_url"]
        answer = inst.generate("nothing to run").json()
        assert answer["error"]["code"] == "needs_login" and answer["error"]["retry_safe"] is True, answer
        assert inst.client.post("/login/check").json()["login_state"] == "needs_login"


def test_a_task_that_meets_the_signin_link_is_a_sign_out_not_a_changed_page(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-late")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        sim(simulator_url, "/_sim/config", {"signed_out_page": "link"})
        sim(simulator_url, "/_sim/accounts/acct-late/revoke", {})
        assert inst.client.post("/navigate", json={"target": "home"}).is_success
        answer = inst.generate("signed out meanwhile").json()
        assert answer["error"]["code"] == "needs_login", answer
        assert inst.status()["login_state"] == "needs_login"


def test_a_region_redirect_takes_the_page_out_of_reach_until_a_load_works(simulator_url, fresh_dir):
    sim(simulator_url, "/_sim/accounts/acct-far/config", {"region_redirect": True})
    env = {"INSTANCE_UNREACHABLE_RETRY_S": "0.5"}
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-far"), **env) as inst:
        status = inst.wait_for(lambda s: s["reach"] == "region_blocked", what="region_blocked")
        assert "available-regions" in status["page_error"]
        refused = inst.generate_between_checks("far away").json()
        assert refused["error"]["code"] == "region_blocked" and refused["error"]["retry_safe"] is True
        sim(simulator_url, "/_sim/accounts/acct-far/config", {"region_redirect": False})
        back = inst.wait_for(lambda s: s["reach"] == "reachable" and s["login_state"] == "logged_in", timeout=30,
                             what="back in reach")
        assert back["page_error"] is None


def _kill_hard(pid: int) -> None:
    """SIGKILL to the instance and everything below it (its Chromium too), all at once."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _sidts(sim_url: str, value: str) -> dict:
    return {"name": "SIDTS", "value": value, "domain": httpx.URL(sim_url).host, "path": "/",
            "expires": time.time() + 86400, "httpOnly": True, "secure": False, "sameSite": "Lax"}


def test_the_volume_never_keeps_a_half_written_login(simulator_url, fresh_dir):
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-atomic")) as inst:
        inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        _renew(inst, simulator_url, "acct-atomic", times=2)
        wait_until(lambda: not list(fresh_dir.glob(".storage_state.*")), timeout=5, what="no temporary files left")

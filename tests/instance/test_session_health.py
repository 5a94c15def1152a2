"""Session health on a real instance (real Chromium, the simulator): what /status says of the login, and the
idle login check that notices a sign-out before the next task does."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from tests.instance.conftest import sim
from tests.instance.harness import signed_in_state, start_instance


def _when(value: str | None) -> datetime:
    assert value is not None
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None
    return parsed


def _check(inst) -> httpx.Response:
    return inst.client.post("/login/check", timeout=60)


def test_status_reports_when_the_login_was_checked_saved_and_expires(simulator_url, fresh_dir):
    state = signed_in_state(simulator_url, "acct-health")
    first_expiry = min(c["expires"] for c in state["cookies"])
    with start_instance(simulator_url, fresh_dir, session=state) as inst:
        status = inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        assert _when(status["login_checked_at"]) <= datetime.now(UTC)
        assert abs(_when(status["session_expires_at"]).timestamp() - first_expiry) < 1
        assert status["last_success_at"] is None
        asked_at = datetime.now(UTC)
        assert inst.generate("a red square").json()["success"] is True
        status = inst.status()
        assert asked_at <= _when(status["last_success_at"]) <= datetime.now(UTC)
        if status["session_saved_at"] is not None:  # written when the instance saved the login it was given
            assert _when(status["session_saved_at"]) <= datetime.now(UTC)


def test_the_login_check_notices_a_sign_out_of_an_idle_instance(simulator_url, fresh_dir):
    sim(simulator_url, "/_sim/reset", {})
    with start_instance(simulator_url, fresh_dir, session=signed_in_state(simulator_url, "acct-idle")) as inst:
        before = inst.wait_for(lambda s: s["login_state"] == "logged_in", what="logged_in")
        sim(simulator_url, "/_sim/accounts/acct-idle/revoke", {})  # signed out elsewhere (password change)
        assert inst.status()["login_state"] == "logged_in"  # the idle page has not noticed
        answer = _check(inst)
        assert answer.status_code == 200, answer.text
        assert answer.json()["login_state"] == "needs_login"
        after = inst.status()
        assert after["login_state"] == "needs_login"
        assert _when(after["login_checked_at"]) > _when(before["login_checked_at"])

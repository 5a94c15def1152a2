"""`aistudio-fleet`, the installed console script, run as a subprocess against a real gateway process (local
runtime: real instance processes with Chromium) and the AI Studio simulator, which requires sign-in here and
names each session after its SID cookie. An old-style data/ directory moves in and its accounts stay signed in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.instance.harness import require_chromium
from tests.legacy.old_system import EXPIRED, NO_COOKIES, SIGNED_IN, STRAY_ID, write_old_data
from tests.panel.harness import ADMIN_TOKEN, Gateway, start_gateway
from tests.simulator.fixtures import control

pytestmark = pytest.mark.browser

CLI = Path(sys.executable).parent / "aistudio-fleet"


@pytest.fixture(scope="module")
def gateway(simulator_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require_chromium()
    assert CLI.is_file(), f"{CLI} is missing: pip install -e . installs the console script"
    control(simulator_server, "/_sim/reset", {})
    with start_gateway(tmp_path_factory.mktemp("cli-gateway"), simulator_server) as running:
        yield running


def cli(gateway: Gateway | None, *args: str, token: str | None = ADMIN_TOKEN, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AISTUDIO_FLEET_"))}
    if gateway is not None:
        base["AISTUDIO_FLEET_URL"] = gateway.admin_url
    if token:
        base["AISTUDIO_FLEET_TOKEN"] = token
    base["LANG"] = "C.UTF-8"
    return subprocess.run([str(CLI), *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}") from None


def by_name(gateway: Gateway) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in gateway.api.get("/api/instances").json()["instances"]}


def test_an_old_data_directory_moves_in_signed_in_and_a_second_run_changes_nothing(
    gateway: Gateway, simulator_server: str, tmp_path: Path
) -> None:
    old = write_old_data(tmp_path / "data", simulator_server)

    dry = cli(gateway, "migrate", str(old), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = as_json(dry)
    assert report["dry_run"] is True and [i["result"] for i in report["instances"]] == ["would_create"] * 3
    assert [i["name"] for i in report["instances"]] == [SIGNED_IN.name, EXPIRED.name, "gamma-one"]
    alpha, beta, gamma = report["instances"]
    assert alpha["session"]["imported"] is True and alpha["session"]["cookies"] == 6 and alpha["session"]["expired"] is False
    assert beta["session"]["expired"] is True and beta["session"]["imported"] is False
    assert beta["session"]["not_imported"]["code"] == "migrate_session_expired"
    assert gamma["session"]["file"] is None and gamma["renamed"]["code"] == "migrate_renamed_invalid"
    assert [s["file"] for s in report["stray_cookie_files"]] == [f"cookies/browser_{STRAY_ID}_session.json"]
    assert by_name(gateway) == {}  # a dry run changes nothing

    done = cli(gateway, "migrate", str(old), "--start")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 created, 3 started, 0 skipped, 0 failed." in done.stdout, done.stdout
    assert f"browser_{STRAY_ID}_session.json" in done.stdout and "renamed" in done.stdout

    views = by_name(gateway)
    assert {name: v["legacy_id"] for name, v in views.items()} == {
        SIGNED_IN.name: SIGNED_IN.instance_id, EXPIRED.name: EXPIRED.instance_id, "gamma-one": NO_COOKIES.instance_id}
    signed_in = gateway.wait_instance(views[SIGNED_IN.name]["instance_id"], lambda v: v["status"] == "running" and v["login_state"] == "logged_in",
                                      timeout=120, what="the migrated account signed in")
    for name in (EXPIRED.name, "gamma-one"):
        gateway.wait_instance(views[name]["instance_id"], lambda v: v["status"] == "running" and v["login_state"] == "needs_login",
                              timeout=120, what=f"{name} running, not signed in")

    # Signed in as the same account: its browser holds the old SID, and the simulator runs its work as that account.
    exported = cli(gateway, "session", "export", SIGNED_IN.name)
    assert exported.returncode == 0, exported.stderr
    assert {c["name"]: c["value"] for c in json.loads(exported.stdout)["cookies"]}["SID"] == SIGNED_IN.account
    generated = httpx.post(f"{gateway.api_url}/generate", json={"prompt": "a red square", "aspect_ratio": "1:1"}, timeout=120, trust_env=False)
    assert generated.status_code == 200 and generated.json()["success"], generated.text
    assert generated.json()["instance"] == SIGNED_IN.name
    assert control(simulator_server, "/_sim/record")["generations"][-1]["account"] == SIGNED_IN.account

    again = cli(gateway, "migrate", str(old), "--start", "--json")
    assert again.returncode == 0, again.stderr
    second = as_json(again)
    assert [i["result"] for i in second["instances"]] == ["skipped"] * 3 and second["summary"]["created"] == 0
    assert all(i["notes"][0]["code"] == "migrate_already_migrated" for i in second["instances"])
    human = cli(gateway, "migrate", str(old))
    assert human.returncode == 0 and "Nothing to do: every old instance is already here." in human.stdout
    assert {n: v["instance_id"] for n, v in by_name(gateway).items()} == {n: v["instance_id"] for n, v in views.items()}
    assert signed_in["legacy_id"] == SIGNED_IN.instance_id

    listed = cli(gateway, "instances", "ls")
    assert listed.returncode == 0 and SIGNED_IN.name in listed.stdout and "logged_in" in listed.stdout
    assert "3 instance(s), 3 running" in listed.stdout
    tasks = as_json(cli(gateway, "tasks", "ls", "--instance", SIGNED_IN.name, "--json"))
    assert [t["status"] for t in tasks["tasks"]] == ["succeeded"]


def test_commands_and_their_exit_codes(gateway: Gateway, simulator_server: str, tmp_path: Path) -> None:
    created = cli(gateway, "instances", "create", "cli-one", "--json")
    assert created.returncode == 0, created.stderr
    instance_id = as_json(created)["instance_id"]
    # A session into a stopped instance waits for its start.
    session_file = tmp_path / "state.json"
    session_file.write_text(json.dumps({"cookies": [{"name": "SID", "value": "acct-cli", "domain": "127.0.0.1", "path": "/",
                                                    "expires": 4102444800, "httpOnly": True, "secure": False, "sameSite": "Lax"}], "origins": []}))
    stored = cli(gateway, "session", "import", instance_id[:8], str(session_file), "--json")
    assert stored.returncode == 0 and as_json(stored)["pending"] is True
    assert cli(gateway, "instances", "start", "cli-one").returncode == 0
    gateway.wait_instance(instance_id, lambda v: v["status"] == "running" and v["login_state"] == "logged_in", timeout=120, what="cli-one signed in")

    # 1: the gateway refused (a running instance cannot be removed; an unknown name), with its message.
    refused = cli(gateway, "instances", "rm", "cli-one")
    assert refused.returncode == 1 and "still running" in refused.stderr
    unknown = cli(gateway, "instances", "start", "no-such-instance", "--json")
    assert unknown.returncode == 1 and as_json(unknown)["error"] == "instance_not_found"
    unauthorized = cli(gateway, "instances", "ls", "--json", token=None)
    assert unauthorized.returncode == 1 and as_json(unauthorized)["status"] == 401
    # 3: nothing answers.
    unreachable = cli(None, "--url", "http://127.0.0.1:9", "instances", "ls", "--json")
    assert unreachable.returncode == 3 and "cannot reach the gateway" in as_json(unreachable)["message"]
    # 2: usage.
    assert cli(gateway, "instances", "frobnicate").returncode == 2
    assert cli(gateway, "migrate", str(tmp_path / "missing")).returncode == 2
    (tmp_path / "empty").mkdir()
    empty = cli(gateway, "migrate", str(tmp_path / "empty"))
    assert empty.returncode == 2 and "none of the old system's files" in empty.stderr
    # 4: a migration that left something behind (an index nobody can read), reported with what it could do.
    broken = write_old_data(tmp_path / "broken", simulator_server)
    (broken / "browser_instances.json").write_text("{ not json")
    partial = cli(gateway, "migrate", str(broken), "--json")
    assert partial.returncode == 4
    body = as_json(partial)
    assert body["success"] is False and body["problems"][0]["code"] == "migrate_index_unreadable"
    assert len(body["stray_cookie_files"]) == 3 and body["instances"] == []

    # Logs, once and followed (Ctrl-C ends it with 0).
    logs = cli(gateway, "logs", "cli-one", "--tail", "5")
    assert logs.returncode == 0 and logs.stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    follow = subprocess.Popen([str(CLI), "--url", gateway.admin_url, "logs", "-f", "cli-one", "--tail", "3"],
                              env={**env, "AISTUDIO_FLEET_TOKEN": ADMIN_TOKEN}, stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None and follow.stdout.readline().strip()
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=15) == 0
    finally:
        follow.kill()

    assert cli(gateway, "instances", "stop", "cli-one").returncode == 0
    gateway.wait_instance(instance_id, lambda v: v["status"] == "stopped", timeout=60, what="cli-one stopped")
    removed = cli(gateway, "instances", "rm", "cli-one")
    assert removed.returncode == 0 and "deleted" in removed.stdout


def test_db_upgrade_runs_the_migrations_directly(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    upgraded = cli(None, "db", "upgrade", "--json", GATEWAY_DATABASE_URL=url)
    assert upgraded.returncode == 0, upgraded.stderr
    revision = as_json(upgraded)["revision"]
    assert revision and revision != "base"
    again = cli(None, "db", "upgrade", GATEWAY_DATABASE_URL=url)
    assert again.returncode == 0 and f"schema at revision {revision}" in again.stdout
    down = cli(None, "db", "upgrade", GATEWAY_DATABASE_URL="postgresql+asyncpg://fleet:pw@127.0.0.1:9/fleet")
    assert down.returncode == 3 and "cannot reach the database" in down.stderr and "pw" not in down.stderr


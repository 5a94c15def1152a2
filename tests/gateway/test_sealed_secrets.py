"""Secrets at rest (gateway/db/sealing.py): instance tokens, proxy URLs, pending sessions and the Postgres signing
key are sealed in the database, read back where the gateway uses them, sealed by migration 0011 when they were
plain, re-sealed by a key rotation, and a gateway with the wrong key refuses to start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.app import Fleet, create_api_app
from gateway.db.engine import create_db_engine
from gateway.db.sealing import KEY_FILE, SecretKeyProblem, new_key
from gateway.runtime.fake import FakeRuntime
from gateway.settings import Settings
from tests.gateway.conftest import TEST_CLIENT_HOST, make_settings, passes_until, status_is
from tests.gateway.pool import open_pool, serve
from tests.gateway.test_durable_tasks import receiver
from tests.polling import await_until

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pr0xy-passw0rd-in-clear"
PROXY = f"http://fleet:{PASSWORD}@proxy.example:3128"
COOKIE = "google-sid-cookie-in-clear"
SESSION = json.dumps({"cookies": [{"name": "SID", "value": COOKIE, "domain": ".google.com", "path": "/"}], "origins": []})
HOOK = "https://hooks.example.com/services/T0/hook-credential-in-clear"
SIGNING = "ab" * 32  # a signing key an older gateway kept in fleet_markers on Postgres


async def raw(database_url: str, sql: str) -> list[Any]:
    """What the database holds, read with plain SQL on a bare engine (no key attached)."""
    engine = create_db_engine(database_url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(sql))).all())
    finally:
        await engine.dispose()


async def execute(database_url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    engine = create_db_engine(database_url)
    try:
        async with engine.begin() as connection:
            for sql, params in statements:
                await connection.execute(text(sql), params)
    finally:
        await engine.dispose()


def fernet_settings(database_url: str, data_dir: Path, keys: str) -> Settings:
    return make_settings(database_url, data_dir, encryption_key=keys)


def cli(database_url: str, data_dir: Path, *args: str, keys: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command as an operator runs it, with the gateway's settings from the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_DATABASE_URL": database_url, "GATEWAY_DATA_DIR": str(data_dir)}
    if keys is not None:
        env["GATEWAY_ENCRYPTION_KEY"] = keys
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


async def instance_rows(database_url: str) -> list[Any]:
    return await raw(database_url, "SELECT name, token, proxy_url, pending_session, proxy_exit FROM instances ORDER BY name")


def assert_sealed(value: str | None, *clear: str) -> None:
    assert value is not None and value.startswith("fernet:"), value
    assert not any(part in value for part in clear)


# ---- sealed in the database, used as before -----------------------------------------------------------------


async def test_the_database_holds_no_clear_secret_and_the_gateway_still_uses_them(database_url: str, tmp_path: Path) -> None:
    fake = FakeRuntime()
    settings = make_settings(database_url, tmp_path)  # no key configured: one is made in the data folder
    fleet = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        view = await fleet.instances.create("sealed", PROXY, session=SESSION.encode())
        [row] = await instance_rows(database_url)
        assert_sealed(row.proxy_url, PASSWORD, "proxy.example")
        assert_sealed(row.pending_session, COOKIE)
        assert row.proxy_exit and PASSWORD not in row.proxy_exit
        assert (tmp_path / KEY_FILE).stat().st_mode & 0o077 == 0  # the made key is the gateway's alone

        await fleet.instances.start(view.instance_id)
        await passes_until(fleet, lambda: status_is(fleet, view.instance_id, "running"))
        container = fake.containers[view.instance_id]
        # The browser got its proxy in clear, and the pending session reached the instance.
        assert PASSWORD in json.dumps(container.env)
        async def delivered() -> bool:
            return (await raw(database_url, "SELECT pending_session FROM instances"))[0].pending_session is None

        await passes_until(fleet, delivered)
        assert fake.volumes[view.instance_id]["session"]["cookies"][0]["value"] == COOKIE  # opened, delivered
        [row] = await instance_rows(database_url)
        assert_sealed(row.token, container.token)
        if database_url.startswith("postgresql"):
            [(signing,)] = await raw(database_url, "SELECT value FROM fleet_markers WHERE key = 'signing_key'")
            assert_sealed(signing, fleet.secret)

        # The token still authenticates: a generation through the API reaches the instance with it.
        async with serve(create_api_app(settings, fleet=fleet)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Host": TEST_CLIENT_HOST}) as http:
                answer = await http.post("/generate", json={"prompt": "a sealed banana"})
        assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
        # The management API shows the proxy masked, as before.
        assert (await fleet.instances.get(view.instance_id)).proxy == "http://f***:***@proxy.example:3128"
    finally:
        await fleet.close()


async def test_one_proxy_exit_has_one_fingerprint_and_another_exit_another(database_url: str, tmp_path: Path) -> None:
    fleet = await Fleet.open(make_settings(database_url, tmp_path), runtime=FakeRuntime(), reconcile=False)
    try:
        await fleet.instances.create("a", PROXY)
        await fleet.instances.create("b", PROXY)
        other = await fleet.instances.create("c", PROXY.replace("3128", "3129"))
        await fleet.instances.set_proxy(other.instance_id, None)
        await fleet.instances.create("d", PROXY.replace("fleet:", "other:"))
    finally:
        await fleet.close()
    exits = {row.name: row.proxy_exit for row in await instance_rows(database_url)}
    assert exits["a"] == exits["b"] and exits["c"] is None and exits["d"] not in (None, exits["a"])


async def test_a_callback_url_is_sealed_and_still_called(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    # Private addresses allowed only so that a loopback receiver can stand in for the client's server.
    settings = {"webhook_secret": "hook-signing-secret", "fetch_private_addresses": True}
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with receiver([]) as (url, received):
            hook = f"{url}?token=hook-credential-in-clear"
            accepted = await pool.http.post("/tasks", json={"prompt": "a sealed fox", "callback_url": hook})
            assert accepted.status_code == 202, accepted.text
            await await_until(lambda: len(received) >= 1, timeout=10, what="the callback")
            await pool.fleet.dispatcher.webhooks.settled()
    [(stored,)] = await raw(database_url, "SELECT callback_url FROM tasks")
    assert_sealed(stored, "hook-credential-in-clear", "127.0.0.1")


# ---- migration 0011 -----------------------------------------------------------------------------------------


async def plant_plain_rows(database_url: str, data_dir: Path) -> str:
    """A database at revision 0009 as an older gateway left it: a plain token, proxy, session and signing key."""
    upgrade = cli(database_url, data_dir, "-m", "alembic", "upgrade", "0009")
    assert upgrade.returncode == 0, upgrade.stderr
    instance_id = uuid.uuid4()
    sqlite = database_url.startswith("sqlite")
    now: Any = "2026-12-01 00:00:00.000000" if sqlite else datetime(2026, 12, 1, tzinfo=UTC)
    columns = "id, name, target, status, login_state, aistudio_reach, busy, tasks_done, tasks_failed, restart_count"
    await execute(database_url, (
        f"INSERT INTO instances ({columns}, created_at, updated_at, token, proxy_url, pending_session) VALUES "
        "(:id, 'old', 'stopped', 'stopped', 'unknown', 'unknown', false, 0, 0, 0, :now, :now, :token, :proxy, :session)",
        {"id": instance_id.hex if sqlite else instance_id, "now": now,
         "token": "plain-instance-token", "proxy": PROXY, "session": SESSION},
    ), ("INSERT INTO fleet_markers (key, value, created_at) VALUES ('signing_key', :value, :now)",
        {"value": SIGNING, "now": now}), (
        "INSERT INTO tasks (id, status, mode, prompt, aspect_ratio, reference_count, attempts, image_count, created_at, "
        "callback_url) VALUES (:id, 'succeeded', 'async', 'p', 'Auto', 0, 1, 1, :now, :url)",
        {"id": uuid.uuid4().hex if sqlite else uuid.uuid4(), "now": now, "url": HOOK},
    ))
    return str(instance_id)


async def test_migration_seals_the_plain_rows_of_an_older_gateway(database_url: str, tmp_path: Path) -> None:
    instance_id = await plant_plain_rows(database_url, tmp_path)
    key = new_key()
    upgrade = cli(database_url, tmp_path, "-m", "alembic", "upgrade", "head", keys=key)
    assert upgrade.returncode == 0, upgrade.stderr
    [row] = await instance_rows(database_url)
    assert_sealed(row.token, "plain-instance-token")
    assert_sealed(row.proxy_url, PASSWORD)
    assert_sealed(row.pending_session, COOKIE)
    [(signing,)] = await raw(database_url, "SELECT value FROM fleet_markers WHERE key = 'signing_key'")
    assert_sealed(signing, SIGNING)
    [(callback,)] = await raw(database_url, "SELECT callback_url FROM tasks")
    assert_sealed(callback, "hook-credential-in-clear")
    assert not (tmp_path / KEY_FILE).exists()  # the configured key sealed them; none was made

    fleet = await Fleet.open(fernet_settings(database_url, tmp_path, key), runtime=FakeRuntime(), reconcile=False)
    try:
        assert (await fleet.instances.get(instance_id)).proxy == "http://f***:***@proxy.example:3128"
        if database_url.startswith("postgresql"):
            assert fleet.secret == SIGNING  # panel sessions and image URLs of before stay valid
    finally:
        await fleet.close()
    down = cli(database_url, tmp_path, "-m", "alembic", "downgrade", "0009", keys=key)
    assert down.returncode == 0, down.stderr
    [(token, proxy_url)] = await raw(database_url, "SELECT token, proxy_url FROM instances")
    assert (token, proxy_url) == ("plain-instance-token", PROXY)
    assert await raw(database_url, "SELECT callback_url FROM tasks") == [(HOOK,)]


async def test_a_gateway_started_on_plain_rows_seals_them_with_the_key_it_makes(database_url: str, tmp_path: Path) -> None:
    await plant_plain_rows(database_url, tmp_path)
    fleet = await Fleet.open(make_settings(database_url, tmp_path), runtime=FakeRuntime(), reconcile=False)
    await fleet.close()
    [row] = await instance_rows(database_url)
    assert_sealed(row.token, "plain-instance-token")
    assert (tmp_path / KEY_FILE).is_file()


# ---- the wrong key stops the start ----------------------------------------------------------------------------


async def test_a_gateway_with_another_key_refuses_to_start_with_the_reason(database_url: str, tmp_path: Path) -> None:
    fleet = await Fleet.open(fernet_settings(database_url, tmp_path, new_key()), runtime=FakeRuntime(), reconcile=False)
    try:
        await fleet.instances.create("sealed", PROXY)
    finally:
        await fleet.close()
    for settings in (fernet_settings(database_url, tmp_path, new_key()), make_settings(database_url, tmp_path / "other")):
        with pytest.raises(SecretKeyProblem, match="sealed with another encryption key"):
            await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)


async def test_the_entry_point_names_the_key_problem_instead_of_serving_500s(sqlite_url: str, tmp_path: Path) -> None:
    fleet = await Fleet.open(fernet_settings(sqlite_url, tmp_path, new_key()), runtime=FakeRuntime(), reconcile=False)
    await fleet.close()
    started = cli(sqlite_url, tmp_path, "-m", "gateway", keys=new_key())
    assert started.returncode == 2
    assert "refusing to start" in started.stderr and "another encryption key" in started.stderr
    assert "Traceback" not in started.stderr


def test_a_malformed_key_is_refused_at_start_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="GATEWAY_ENCRYPTION_KEY: key 2 is not a Fernet key") as refused:
        make_settings("sqlite+aiosqlite:///x.db", tmp_path, encryption_key=f"{new_key()},not-a-key-at-all")
    assert "not-a-key-at-all" not in str(refused.value)


async def test_an_unreadable_key_file_stops_the_start(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url, tmp_path, encryption_key_file=tmp_path / "missing-key")
    with pytest.raises(SecretKeyProblem, match="GATEWAY_ENCRYPTION_KEY_FILE: cannot read"):
        await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)


# ---- rotation -------------------------------------------------------------------------------------------------


async def test_rotation_new_key_first_then_reseal_then_the_old_key_goes(database_url: str, tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    fake = FakeRuntime()
    fleet = await Fleet.open(fernet_settings(database_url, tmp_path, old), runtime=fake, reconcile=False)
    try:
        view = await fleet.instances.create("rotated", PROXY)
        await fleet.instances.start(view.instance_id)
        await passes_until(fleet, lambda: status_is(fleet, view.instance_id, "running"))
    finally:
        await fleet.close()
    before = await instance_rows(database_url)

    # 1. Every gateway gets the new key first and keeps the old one for reading: it starts and reads the old rows.
    key_file = tmp_path / "keys"
    key_file.write_text(f"{new}\n{old}\n")
    both = make_settings(database_url, tmp_path, encryption_key_file=key_file)
    fleet = await Fleet.open(both, runtime=fake, reconcile=False)
    try:
        assert (await fleet.instances.get(view.instance_id)).proxy == "http://f***:***@proxy.example:3128"
    finally:
        await fleet.close()

    # 2. The CLI seals everything again with the new key.
    resealed = cli(database_url, tmp_path, "-m", "gateway.cli", "db", "reseal", "--json", keys=f"{new},{old}")
    assert resealed.returncode == 0, resealed.stderr
    assert json.loads(resealed.stdout)["resealed"] >= 2
    after = await instance_rows(database_url)
    assert after[0].token != before[0].token and after[0].proxy_url != before[0].proxy_url
    assert after[0].proxy_exit != before[0].proxy_exit  # fingerprinted with the new key

    # 3. The old key goes: a gateway with the new key alone starts, and the instance's token still authenticates.
    settings = fernet_settings(database_url, tmp_path, new)
    fleet = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        async with serve(create_api_app(settings, fleet=fleet)) as url:
            async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Host": TEST_CLIENT_HOST}) as http:
                answer = await http.post("/generate", json={"prompt": "a rotated banana"})
        assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
    finally:
        await fleet.close()
    with pytest.raises(SecretKeyProblem):
        await Fleet.open(fernet_settings(database_url, tmp_path, old), runtime=FakeRuntime(), reconcile=False)

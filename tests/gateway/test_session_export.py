"""`aistudio-fleet session export -o FILE` against a served admin app (fake runtime): the file is the instance's
session with mode 600, whatever was at FILE before: a symlink is replaced, never followed; a file's mode is not kept."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import httpx
from click.testing import CliRunner, Result

from gateway.app import create_admin_app, open_fleet
from gateway.cli.commands import main as cli_main
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.gateway.pool import serve
from tests.polling import await_until


async def export(url: str, name: str, output: Path) -> Result:
    argv = ["--url", url, "session", "export", name, "-o", str(output)]
    return await asyncio.to_thread(CliRunner().invoke, cli_main, argv, catch_exceptions=False)


async def test_export_replaces_a_symlink_and_a_loose_file_with_a_private_file(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    async with open_fleet(settings, runtime=fake) as fleet, serve(create_admin_app(settings, fleet=fleet)) as url:
        async with httpx.AsyncClient(base_url=url, trust_env=False) as admin:
            created = await admin.post("/api/instances", json={"name": "exported"})
            assert created.status_code == 200, created.text
            instance_id = created.json()["instance_id"]
            await admin.post(f"/api/instances/{instance_id}/start")

            async def running() -> bool:
                return (await admin.get(f"/api/instances/{instance_id}")).json()["instance"]["status"] == "running"

            await await_until(running, timeout=10, what="the instance running")
            await admin.put(f"/api/instances/{instance_id}/session", content=b'{"cookies": [{"name": "SID", "value": "s"}], "origins": []}')
            session = (await admin.get(f"/api/instances/{instance_id}/session")).content
            assert b"SID" in session

        victim = tmp_path / "victim.txt"
        victim.write_text("another user's file")
        victim.chmod(0o644)
        link = tmp_path / "session-link.json"
        link.symlink_to(victim)
        loose = tmp_path / "session-loose.json"
        loose.write_text("old")
        loose.chmod(0o644)
        for target in (link, loose, tmp_path / "session-new.json"):
            result = await export(url, "exported", target)
            assert result.exit_code == 0, result.output
            assert not target.is_symlink() and target.read_bytes() == session, target
            assert stat.S_IMODE(target.stat().st_mode) == 0o600, (target, oct(target.stat().st_mode))
        assert victim.read_text() == "another user's file" and stat.S_IMODE(victim.stat().st_mode) == 0o644
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []  # no temporary left

        refused = await export(url, "exported", tmp_path)  # a folder: refused, and nothing is left beside it
        assert refused.exit_code != 0 and "is a directory" in refused.output
        assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.endswith(".tmp")) == []

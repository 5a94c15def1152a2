"""An instance's start progress (a pod being scheduled, its image pulled, with the pod's Events) on its panel page,
in Chinese by default and in English, escaped; gone once the start ended."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import update

from gateway.db.models import Instance

PROGRESS = 'pending: ContainerCreating · events: Pulling: Pulling image "registry.example/<instance>:1.2"'


async def set_progress(app: Litestar, instance_id: str, progress: str | None) -> None:
    async with app.state.fleet.sessions.begin() as session:
        await session.execute(update(Instance).where(Instance.id == uuid.UUID(instance_id)).values(start_progress=progress))


async def test_the_start_progress_shows_on_the_instance_page(panel: AsyncTestClient[Any], admin_app: Litestar) -> None:
    created = await panel.post("/api/instances", json={"name": "pulling"})
    instance_id = created.json()["instance_id"]
    await set_progress(admin_app, instance_id, PROGRESS)

    chinese = (await panel.get(f"/instances/{instance_id}")).text
    assert "<dt>启动进度</dt>" in chinese and "data-start-progress" in chinese
    assert 'registry.example/&lt;instance&gt;:1.2' in chinese and "<instance>" not in chinese
    english = (await panel.get(f"/instances/{instance_id}", headers={"Accept-Language": "en"})).text
    assert "<dt>Starting</dt>" in english and "Pulling: Pulling image" in english
    assert (await panel.get(f"/api/instances/{instance_id}")).json()["instance"]["start_progress"] == PROGRESS

    await set_progress(admin_app, instance_id, None)
    assert "data-start-progress" not in (await panel.get(f"/instances/{instance_id}")).text

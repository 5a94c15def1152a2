"""The panel's page snapshots (per instance): the list beside the failure, a download link each, and a button
that takes one now; the same service as the management API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2_fragments.litestar import HTMXBlockTemplate
from litestar import Controller, Request, get, post
from litestar.params import FromPath
from litestar.di import NamedDependency
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from gateway.api.errors import request_language
from gateway.errors import FleetError
from gateway.i18n import translate
from gateway.panel.controllers import DEPENDENCIES, context
from gateway.services.instances import InstanceService


class SnapshotsPanelController(Controller):
    dependencies = DEPENDENCIES
    include_in_schema = False

    @get("/instances/{instance_id:str}/snapshots", name="panel:snapshots")
    async def snapshots(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Template:
        """The list; an instance that is not running says so inside the section (it loads with the page)."""
        try:
            listing = await instances.snapshots(instance_id)
        except FleetError as exc:
            return _block(request, instance_id, error=translate(exc.key, request_language(request), **exc.params))
        return _block(request, instance_id, snapshots=listing)

    @post("/instances/{instance_id:str}/snapshots", name="panel:snapshot-take")
    async def take(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Template:
        taken = await instances.take_snapshot(instance_id, "manual")
        view = await instances.get(instance_id)
        message = translate("snapshot_taken", request_language(request), snapshot_id=taken["id"], name=view.name)
        return _block(request, instance_id, snapshots=await instances.snapshots(instance_id), message=message)


def _block(request: Request[Any, Any, Any], instance_id: str, *, snapshots: list[dict[str, Any]] | None = None,
           error: str | None = None, message: str | None = None) -> Template:
    rows = [_row(s) for s in snapshots] if snapshots is not None else None
    values = context(request, snapshots_of=instance_id, snapshots=rows, snapshots_error=error, snapshots_message=message)
    return HTMXBlockTemplate(template_name="instance.html", block_name="snapshots", context=values)


def _row(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The instance's ISO time as a datetime, for the panel's clock filter (a bad one shows as none)."""
    try:
        taken_at = datetime.fromisoformat(snapshot.get("taken_at") or "")
    except ValueError:
        taken_at = None
    return {**snapshot, "taken_at": taken_at}


SNAPSHOTS_PANEL_CONTROLLERS = [SnapshotsPanelController]

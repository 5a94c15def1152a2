"""An instance's page snapshots on the management API: list them, take one now, download one as a zip.

The zip streams from the instance to the admin; its media type is always the gateway's own (application/zip),
never the instance's, and the snapshot id is checked against the contract's pattern before it reaches a URL.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Stream

from gateway.api.management import DEPENDENCIES
from gateway.errors import Invalid
from gateway.i18n import translate
from gateway.services.instances import InstanceService

MAX_BODY = 4096


class SnapshotIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str = "manual"


class SnapshotsOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    snapshots: list[dict[str, Any]]


class SnapshotTakenOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    snapshot: dict[str, Any]


class SnapshotsController(Controller):
    path = "/api/instances/{instance_id:str}/snapshots"
    tags = ["instances"]
    dependencies = DEPENDENCIES

    @get("/", operation_id="listInstanceSnapshots", summary="The instance's page snapshots, newest first")
    async def list_snapshots(self, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> SnapshotsOut:
        return SnapshotsOut(instance_id=instance_id, snapshots=await instances.snapshots(instance_id))

    @post("/", operation_id="takeInstanceSnapshot", summary="Copy the instance's page now (HTML, screenshot, page check)")
    async def take_snapshot(
        self, request: Request[Any, Any, Any], instance_id: FromPath[str], instances: NamedDependency[InstanceService],
        language: NamedDependency[str],
    ) -> SnapshotTakenOut:
        taken = await instances.take_snapshot(instance_id, snapshot_reason(await request.body()))
        view = await instances.get(instance_id)
        message = translate("snapshot_taken", language, snapshot_id=taken["id"], name=view.name)
        return SnapshotTakenOut(message=message, snapshot=taken)

    @get("/{snapshot_id:str}", operation_id="downloadInstanceSnapshot", summary="One page snapshot as a zip")
    async def download(
        self, instance_id: FromPath[str], snapshot_id: FromPath[str], instances: NamedDependency[InstanceService]
    ) -> Stream:
        chunks = await instances.snapshot_zip(instance_id, snapshot_id)
        return Stream(chunks, media_type="application/zip", headers=download_headers(snapshot_id))


def snapshot_reason(body: bytes) -> str:
    """The reason from an optional `{"reason": "..."}` body; anything else is a 422 that says what is expected."""
    if not body.strip():
        return "manual"
    if len(body) > MAX_BODY:
        raise Invalid("snapshot_reason_invalid", reason="…")
    try:
        return msgspec.json.decode(body, type=SnapshotIn).reason
    except msgspec.DecodeError:
        raise Invalid("snapshot_reason_invalid", reason=body[:40].decode("utf-8", "replace")) from None


def download_headers(snapshot_id: str) -> dict[str, str]:
    """An attachment the browser saves and never renders; the id's shape was checked, so it is safe in the name."""
    return {
        "Content-Disposition": f'attachment; filename="snapshot-{snapshot_id}.zip"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }


SNAPSHOT_CONTROLLERS = [SnapshotsController]

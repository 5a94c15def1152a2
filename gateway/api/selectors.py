"""The selectors override and the page check on the management API: thin handlers over the selectors service
and the instance service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from gateway.api.management import DEPENDENCIES
from gateway.i18n import translate
from gateway.services.instances import InstanceService
from gateway.services.selectors import PushResult, SelectorsService


def provide_selectors(state: State) -> SelectorsService:
    return state.fleet.selectors


class SelectorsOut(msgspec.Struct, kw_only=True):
    success: bool = True
    override: dict[str, Any] | None
    updated_at: datetime | None
    revision: int | None
    packaged_version: str
    known_roles: list[str]
    known_texts: list[str]
    packaged: dict[str, Any]


class SelectorsChangedOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    override: dict[str, Any] | None
    removed: bool | None = None
    pushed: int
    failed: int
    results: list[PushResult]


class DiagnoseOut(msgspec.Struct, kw_only=True):
    success: bool = True
    instance_id: str
    report: dict[str, Any]


def push_message(key: str, language: str, results: list[PushResult]) -> str:
    """What happened, with the per-instance failures named (the panel shows the same line)."""
    ok = sum(1 for r in results if r.ok)
    message = translate(key, language, ok=ok, total=len(results))
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    return message + (" " + translate("selectors_push_failed", language, failures="; ".join(failed)) if failed else "")


class SelectorsController(Controller):
    path = "/api/selectors"
    tags = ["selectors"]
    dependencies = {**DEPENDENCIES, "selectors": Provide(provide_selectors, sync_to_thread=False)}

    @get("/", operation_id="getSelectorsOverride", summary="The fleet-wide selectors override and the known roles")
    async def get_override(self, selectors: NamedDependency[SelectorsService]) -> SelectorsOut:
        view = await selectors.current()
        return SelectorsOut(**msgspec.structs.asdict(view))

    @put("/", operation_id="putSelectorsOverride", summary="Check, store and push an override (selectors.json's shape)")
    async def put_override(
        self, request: Request[Any, Any, Any], selectors: NamedDependency[SelectorsService], language: NamedDependency[str]
    ) -> SelectorsChangedOut:
        document, results = await selectors.replace(await request.body())
        return _changed("selectors_saved", language, results, override=document)

    @delete("/", operation_id="deleteSelectorsOverride", status_code=200, summary="Back to the packaged selectors everywhere")
    async def delete_override(self, selectors: NamedDependency[SelectorsService], language: NamedDependency[str]) -> SelectorsChangedOut:
        removed, results = await selectors.remove()
        return _changed("selectors_removed", language, results, override=None, removed=removed)


class PageCheckController(Controller):
    path = "/api/instances/{instance_id:str}"
    tags = ["instances"]
    dependencies = DEPENDENCIES

    @get("/diagnose", operation_id="diagnoseInstance", summary="Each selector role against the instance's live page")
    async def diagnose(self, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> DiagnoseOut:
        return DiagnoseOut(instance_id=instance_id, report=await instances.diagnose(instance_id))


def _changed(key: str, language: str, results: list[PushResult], **values: Any) -> SelectorsChangedOut:
    ok = sum(1 for r in results if r.ok)
    return SelectorsChangedOut(
        message=push_message(key, language, results), pushed=ok, failed=len(results) - ok, results=results, **values
    )


SELECTORS_CONTROLLERS = [SelectorsController, PageCheckController]

"""The fleet's catalogue on the management API: what the fleet serves now (packaged, the operator's edit, what the
signed-in accounts' pages offer, retired), and the operator's edit itself."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from gateway.api.management import DEPENDENCIES
from gateway.i18n import translate
from gateway.services.catalogue import CatalogueService, CatalogueView


def provide_catalogue(state: State) -> CatalogueService:
    return state.fleet.catalogue


class CatalogueChangedOut(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    override: dict[str, Any] | None
    removed: bool | None = None


class CatalogueController(Controller):
    path = "/api/catalogue"
    tags = ["catalogue"]
    dependencies = {**DEPENDENCIES, "catalogue": Provide(provide_catalogue, sync_to_thread=False)}

    @get("/", operation_id="getCatalogue", summary="The models the fleet serves now, the operator's edit, retired models")
    async def get_catalogue(self, catalogue: NamedDependency[CatalogueService]) -> CatalogueView:
        return await catalogue.current()

    @put("/", operation_id="putCatalogue", summary="Check and store the operator's catalogue edit")
    async def put_catalogue(
        self, request: Request[Any, Any, Any], catalogue: NamedDependency[CatalogueService], language: NamedDependency[str]
    ) -> CatalogueChangedOut:
        document = await catalogue.replace(await request.body())
        return CatalogueChangedOut(message=translate("catalogue_saved", language), override=document)

    @delete("/", operation_id="deleteCatalogue", status_code=200, summary="Back to the packaged catalogue")
    async def delete_catalogue(self, catalogue: NamedDependency[CatalogueService], language: NamedDependency[str]) -> CatalogueChangedOut:
        removed = await catalogue.remove()
        return CatalogueChangedOut(message=translate("catalogue_removed", language), override=None, removed=removed)


CATALOGUE_CONTROLLERS = [CatalogueController]

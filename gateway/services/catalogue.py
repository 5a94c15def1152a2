"""The fleet's catalogue as the operator edits it: checked, kept in `fleet_settings` (like the selectors override),
and used by the one model check (gateway/dispatcher/inputs.py through gateway.accounts.page_catalogue).

Nothing is pushed to instances: a request for an edited or added model carries the model's options
(`model_options`), which is all an instance needs. The listing joins the packaged catalogue, the operator's edit and
what the signed-in accounts' pages offer.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_contract import catalogue
from gateway.accounts import page_catalogue
from gateway.db.models import FleetSetting
from gateway.db.revisions import current_revision, next_revision
from gateway.db.types import utcnow
from gateway.errors import BadRequest, Invalid, TooLarge

SETTING_KEY = "catalogue_override"
MAX_BYTES = 256 * 1024


class CatalogueEntry(msgspec.Struct, kw_only=True):
    id: str
    name: str
    aspect_ratios: list[str]
    image_sizes: list[str]
    source: str  # "packaged", "operator" (added or edited by the operator), "pages" (learned from the pages)
    offered_by: int  # signed-in accounts whose page lists it
    offered_by_pages: bool | None  # False: no signed-in page offers it any more; None: no page has told yet


class RetiredEntry(msgspec.Struct, kw_only=True):
    id: str
    name: str
    retired_on: str
    successor: str


class CatalogueView(msgspec.Struct, kw_only=True):
    override: dict[str, Any] | None
    updated_at: datetime | None
    revision: int | None  # of the last change (set or removed); a process installs only a newer one
    packaged_version: str
    models: list[CatalogueEntry]
    retired: list[RetiredEntry]


class CatalogueService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def load(self) -> None:
        """The stored edit into this process's model check (at start)."""
        revision, row = await self._stored()
        page_catalogue.install_edit(row.value if row else None, revision, force=True)

    async def current(self) -> CatalogueView:
        revision, row = await self._stored()
        page_catalogue.install_edit(row.value if row else None, revision)  # another replica may have changed it
        return CatalogueView(
            override=row.value if row else None,
            updated_at=row.updated_at if row else None,
            revision=revision,
            packaged_version=catalogue.load().version,
            models=listing(),
            retired=[RetiredEntry(id=r.id, name=r.name, retired_on=r.retired_on, successor=r.successor)
                     for r in catalogue.load().retired],
        )

    async def replace(self, body: bytes) -> dict[str, Any]:
        """Check and store an edit; a refused one changes nothing (the current catalogue stays)."""
        if len(body) > MAX_BYTES:
            raise TooLarge("catalogue_too_large", limit=MAX_BYTES)
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest("catalogue_not_json", detail=str(exc)) from None
        try:
            page_catalogue.check_edit(document)
        except page_catalogue.EditProblem as problem:
            raise Invalid(problem.code, **problem.params) from None
        async with self._sessions.begin() as session:
            revision = await next_revision(session, SETTING_KEY)
            row = await session.get(FleetSetting, SETTING_KEY)
            if row is None:
                session.add(FleetSetting(key=SETTING_KEY, value=document, updated_at=utcnow()))
            else:
                row.value, row.updated_at = document, utcnow()
        page_catalogue.install_edit(document, revision)
        return document

    async def remove(self) -> bool:
        async with self._sessions.begin() as session:
            revision = await next_revision(session, SETTING_KEY)
            removed = (await session.execute(delete(FleetSetting).where(FleetSetting.key == SETTING_KEY))).rowcount == 1
        page_catalogue.install_edit(None, revision)
        return removed

    async def _stored(self) -> tuple[int | None, FleetSetting | None]:
        async with self._sessions() as session:
            revision = await current_revision(session, SETTING_KEY)  # before the edit: see current_revision
            row = await session.get(FleetSetting, SETTING_KEY)
        return revision, row


def listing() -> list[CatalogueEntry]:
    counts = page_catalogue.offer_counts()
    packaged_ids = set(catalogue.load().ids)
    entries = []
    for spec, offered, packaged in page_catalogue.servable_models():
        edited = page_catalogue.operator_spec(spec.id) is not None
        source = "operator" if edited else ("packaged" if packaged and spec.id in packaged_ids else "pages")
        entries.append(CatalogueEntry(
            id=spec.id, name=spec.name, aspect_ratios=list(spec.aspect_ratios), image_sizes=list(spec.image_sizes),
            source=source, offered_by=counts.get(spec.id, 0), offered_by_pages=offered,
        ))
    return entries

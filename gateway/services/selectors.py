"""The fleet-wide selectors override: checked here, kept in `fleet_settings`, pushed to every running instance,
and delivered to each instance when it becomes ready.

The packaged `selectors.json` and the shape check come from the contract package, which the instance uses too.
Selector syntax is checked in a browser: one running instance parses the override (a dry run) before it is
stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_contract import selectors as selectors_contract
from gateway.db.models import EventKind, FleetSetting, Instance, Status, new_event
from gateway.db.revisions import current_revision, next_revision
from gateway.db.types import utcnow
from gateway.errors import BadRequest, FleetError, Invalid, TooLarge
from gateway.instance_client import InstanceAddress, InstanceClient, InstanceRejected, InstanceNoAnswer

log = logging.getLogger(__name__)

SETTING_KEY = "selectors_override"
PACKAGED_SELECTORS = Path(selectors_contract.__file__).resolve().parent / selectors_contract.SELECTORS_FILE
MAX_BYTES = selectors_contract.MAX_BYTES
PUSH_CONCURRENCY = 8
PUSH_TIMEOUT = 15.0


class SelectorsUnavailable(FleetError):
    """The packaged selectors file cannot be read, so role names cannot be checked."""

    status_code = 503
    key = "selectors_packaged_missing"


class PushResult(msgspec.Struct, kw_only=True):
    """What one running instance said to a change: its selectors version now, or why it failed."""

    instance_id: str
    name: str
    ok: bool
    version: str | None = None
    revision: int | None = None  # the revision in force on the instance after the call
    stale: bool = False  # the instance already had this change or a newer one: nothing changed there
    error: str | None = None


class OverrideView(msgspec.Struct, kw_only=True):
    override: dict[str, Any] | None
    updated_at: datetime | None
    revision: int | None  # of the last change (set or removed); instances apply only a newer one
    packaged_version: str
    known_roles: list[str]
    known_texts: list[str]
    packaged: dict[str, Any]


@dataclass(frozen=True)
class _Target:
    instance_id: uuid.UUID
    name: str
    address: InstanceAddress


class SelectorsService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        client: InstanceClient,
        *,
        packaged_path: Path = PACKAGED_SELECTORS,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._packaged_path = packaged_path
        self._change_lock = asyncio.Lock()  # one change at a time in this gateway: pushes do not interleave

    # Reads ---------------------------------------------------------------------------------------

    async def current(self) -> OverrideView:
        packaged = await asyncio.to_thread(self._packaged)
        async with self._sessions() as session:
            revision = await current_revision(session, SETTING_KEY)
            row = await session.get(FleetSetting, SETTING_KEY)
        return OverrideView(
            override=row.value if row else None,
            updated_at=row.updated_at if row else None,
            revision=revision,
            packaged_version=str(packaged.get("version", "unknown")),
            known_roles=list(packaged.get("roles", {})),
            known_texts=list(packaged.get("texts", {})),
            packaged=packaged,
        )

    # Changes -------------------------------------------------------------------------------------

    async def replace(self, body: bytes) -> tuple[dict[str, Any], list[PushResult]]:
        """Check, store and push an override; a refused one changes nothing anywhere."""
        if len(body) > MAX_BYTES:
            raise TooLarge("selectors_too_large", limit=MAX_BYTES)
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest("selectors_not_json", detail=str(exc)) from None
        packaged = await asyncio.to_thread(self._packaged)
        check_override(document, packaged)
        async with self._change_lock:
            targets = await self._running()
            await self._dry_run(targets, body)
            revision = await self._store(document)
            results = await self._push(
                targets, lambda address: self._client.put_selectors(address, body, revision=revision, timeout=PUSH_TIMEOUT)
            )
            version = document.get("version")
            await self._record(results, f"selectors override set (version {version})" if version else "selectors override set")
        return document, results

    async def remove(self) -> tuple[bool, list[PushResult]]:
        """Back to the packaged selectors everywhere; True when there was an override."""
        async with self._change_lock:
            async with self._sessions.begin() as session:
                revision = await next_revision(session, SETTING_KEY)
                removed = (await session.execute(delete(FleetSetting).where(FleetSetting.key == SETTING_KEY))).rowcount == 1
            targets = await self._running()
            results = await self._push(
                targets, lambda address: self._client.delete_selectors(address, revision=revision, timeout=PUSH_TIMEOUT)
            )
            await self._record(results, "selectors override removed")
        return removed, results

    async def deliver(self, instance_id: uuid.UUID) -> None:
        """Bring a just-ready instance in line: the stored override, or none (it may keep an old one on its volume)."""
        # Under the change lock: a delivery that read "no override" must not land after a change pushed one.
        async with self._change_lock:
            await self._deliver(instance_id)

    async def _deliver(self, instance_id: uuid.UUID) -> None:
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Instance.name, Instance.endpoint, Instance.token).where(Instance.id == instance_id)
                )
            ).first()
            revision = await current_revision(session, SETTING_KEY)  # before the override: see current_revision
            setting = await session.get(FleetSetting, SETTING_KEY)
        if row is None or not row.endpoint:
            return
        address = InstanceAddress(row.endpoint, row.token)
        try:
            if setting is None:
                answer = await self._client.delete_selectors(address, revision=revision, timeout=PUSH_TIMEOUT)
                message = "selectors override removed at start" if answer.removed else None
            else:
                body = json.dumps(setting.value).encode()
                answer = await self._client.put_selectors(address, body, revision=revision, timeout=PUSH_TIMEOUT)
                message = None if answer.stale else f"selectors override delivered at start (version {answer.version})"
        except (InstanceNoAnswer, InstanceRejected) as exc:
            log.warning("selectors override not delivered to %s: %s", row.name, exc)
            message = f"selectors override not delivered at start: {exc}" if setting is not None else None
        if message:
            async with self._sessions.begin() as session:
                session.add(new_event(instance_id, row.name, EventKind.SELECTORS_CHANGED, message))

    # Internals -----------------------------------------------------------------------------------

    def _packaged(self) -> dict[str, Any]:
        """Read on every use: the packaged file gains roles between releases."""
        try:
            packaged = json.loads(self._packaged_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SelectorsUnavailable(path=str(self._packaged_path), reason=str(exc)) from exc
        return packaged if isinstance(packaged, dict) else {}

    async def _running(self) -> list[_Target]:
        query = select(Instance.id, Instance.name, Instance.endpoint, Instance.token).where(
            Instance.status == Status.RUNNING, Instance.endpoint.is_not(None)
        )
        async with self._sessions() as session:
            rows = (await session.execute(query.order_by(Instance.created_at, Instance.id))).all()
        return [_Target(r.id, r.name, InstanceAddress(r.endpoint, r.token)) for r in rows]

    async def _dry_run(self, targets: list[_Target], body: bytes) -> None:
        """One running instance parses the selectors in its browser; an unreachable one does not block the change."""
        for target in targets[:1]:
            try:
                await self._client.put_selectors(target.address, body, dry_run=True, timeout=PUSH_TIMEOUT)
            except InstanceRejected as exc:
                if exc.status_code in (400, 422):
                    raise Invalid("selectors_rejected", name=target.name, reason=exc.detail) from exc
            except InstanceNoAnswer:
                pass

    async def _store(self, document: dict[str, Any]) -> int:
        """Kept with its revision, in one transaction: the revision the instances compare."""
        async with self._sessions.begin() as session:
            revision = await next_revision(session, SETTING_KEY)
            row = await session.get(FleetSetting, SETTING_KEY)
            if row is None:
                session.add(FleetSetting(key=SETTING_KEY, value=document, updated_at=utcnow()))
            else:
                row.value, row.updated_at = document, utcnow()
        return revision

    async def _push(self, targets: list[_Target], call: Any) -> list[PushResult]:
        """Every running instance at once (bounded); each answers for itself."""
        slots = asyncio.Semaphore(PUSH_CONCURRENCY)

        async def one(target: _Target) -> PushResult:
            async with slots:
                try:
                    answer = await call(target.address)
                except (InstanceNoAnswer, InstanceRejected) as exc:
                    return PushResult(instance_id=str(target.instance_id), name=target.name, ok=False, error=str(exc))
            return PushResult(instance_id=str(target.instance_id), name=target.name, ok=True, version=answer.version,
                              revision=answer.revision, stale=answer.stale)

        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def _record(self, results: list[PushResult], change: str) -> None:
        """One SELECTORS_CHANGED event per instance: pushed, failed, or due at its next start."""
        pushed = {r.instance_id: r for r in results}
        async with self._sessions.begin() as session:
            for instance_id, name in (await session.execute(select(Instance.id, Instance.name))).all():
                result = pushed.get(str(instance_id))
                if result is None:
                    message = f"{change}; delivered at its next start"
                elif result.stale:
                    message = f"{change}; not applied: the instance has a newer change (revision {result.revision})"
                elif result.ok:
                    message = f"{change}; pushed (version {result.version})"
                else:
                    message = f"{change}; push failed: {result.error}"
                session.add(new_event(instance_id, name, EventKind.SELECTORS_CHANGED, message))


def check_override(document: Any, packaged: dict[str, Any]) -> dict[str, Any]:
    """The contract's shape check (the instance applies the same one), worded in the operator's language."""
    problem = selectors_contract.check_override(document, packaged)
    if problem is not None:
        raise Invalid(problem.code, **problem.params)
    return document

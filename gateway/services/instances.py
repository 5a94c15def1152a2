"""The instance service: what the management API and the panel can do to instances.

It sets `target` and never `status` (the reconciler's alone), and wakes the reconciler when a target changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import delete, exists, func, case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.accounts.policy import BlockKind
from gateway.db.models import (
    NAME_MAX_LENGTH,
    EventKind,
    FleetMarker,
    Instance,
    InstanceEvent,
    UNREACHABLE_SHOWN,
    LoginState,
    block_in_force,
    session_expiring,
    ModelBlock,
    Reach,
    Status,
    Target,
    Task,
    TaskStatus,
    cooling_down,
    is_available,
    is_busy,
    new_event,
)
from gateway.db.types import utcnow
from gateway.i18n import translate
from gateway.errors import Conflict, EngineDown, InstanceUnavailable, Invalid, NotFound, RuntimeFailed, TooLarge
from fleet_contract.messages import SNAPSHOT_ID_PATTERN, SNAPSHOT_REASON_PATTERN
from fleet_contract.proxy import ProxyURLError, mask_proxy, normalize_proxy
from fleet_contract.regional import RegionalError, normalize_locale, normalize_timezone
from gateway.runtime.base import Runtime, RuntimeError_, RuntimeUnavailable, egress_fence, security_warnings
from gateway.runtime.health import EngineHealth
from gateway.instance_client import (
    ClientConnection,
    InstanceBadAnswer,
    InstanceAddress,
    InstanceClient,
    InstanceNoAnswer,
    InstanceRejected,
)
from gateway.services.proxies import check_reachable
from gateway.services.session_shape import SessionShapeError, check_session
from gateway.services.views import EngineView, EventView, InstanceView, ModelBlockView, StatsView
from gateway.settings import InstanceSettings, SessionSettings

log = logging.getLogger(__name__)

# Letters and digits of any script (CJK included), "-" and "_"; the container name derives from the id.
NAME_PATTERN = re.compile(rf"^[\w-]{{1,{NAME_MAX_LENGTH}}}$")
# The old system's instance ids (`aistudio-fleet migrate`): ASCII letters, digits and a few separators.
LEGACY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
LEGACY_MARKER_PREFIX = "legacy_session:"

_VIEW_COLUMNS = (
    Instance.id,
    Instance.name,
    Instance.status,
    Instance.target,
    Instance.login_state,
    Instance.created_at,
    Instance.last_used_at,
    Instance.last_error,
    Instance.start_progress,
    Instance.cooldown_until,
    Instance.started_at,
    Instance.tasks_done,
    Instance.tasks_failed,
    Instance.restart_count,
    Instance.next_restart_at,
    Instance.handle,
    Instance.proxy_url,
    Instance.timezone,
    Instance.locale,
    Instance.page_error,
    Instance.aistudio_reach,
    Instance.login_checked_at,
    Instance.signed_in_since,
    Instance.session_saved_at,
    Instance.session_expires_at,
    Instance.last_success_at,
    Instance.legacy_id,
    Instance.pace_seconds,
    Instance.daily_cap,
)

# An account's own pacing (the API's and the panel's bounds; the fleet's settings have the same).
PACE_SECONDS_MAX = 3600.0
DAILY_CAP_MAX = 100_000
PACING_FIELDS = ("pace_seconds", "daily_cap")


class InstanceService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runtime: Runtime,
        client: InstanceClient,
        settings: InstanceSettings,
        engine_health: EngineHealth,
        on_target_changed: Callable[[], None] = lambda: None,
        *,
        session: SessionSettings,
        proxy_exit: Callable[[str | None], str | None],
    ) -> None:
        """`proxy_exit`: a proxy URL's keyed fingerprint (SecretBox.exit_of), stored beside the sealed URL."""
        self._sessions = sessions
        self._proxy_exit = proxy_exit
        self._runtime = runtime
        self._client = client
        self._settings = settings
        self._session_settings = session  # upload limits, the legacy file, expiry warnings
        self._engine_health = engine_health
        self._on_target_changed = on_target_changed

    # Reads ---------------------------------------------------------------------------------------

    async def list(self) -> list[InstanceView]:
        now = utcnow()
        query = _view_query(now).order_by(Instance.created_at, Instance.id)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
            blocks = await _model_blocks(session)
        return [_blocked(_to_view(row, self._settings, self._session_settings), blocks) for row in rows]

    async def get(self, instance_id: str) -> InstanceView:
        uid = _parse_id(instance_id)
        async with self._sessions() as session:
            row = (await session.execute(_view_query(utcnow()).where(Instance.id == uid))).first()
            blocks = await _model_blocks(session, uid)
        if row is None:
            raise NotFound("instance_not_found", instance_id=instance_id)
        return _blocked(_to_view(row, self._settings, self._session_settings), blocks)

    async def stats(self) -> StatsView:
        now = utcnow()

        def count(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        def tasks_in(status: TaskStatus) -> Any:
            return select(func.count()).select_from(Task).where(Task.status == status).scalar_subquery()

        running = Instance.status == Status.RUNNING
        query = select(
            func.count(Instance.id),
            count(running),
            count(is_available(now)),
            count(running & is_busy(now)),
            count(Instance.status == Status.STARTING),
            count(Instance.status == Status.STOPPED),
            count(Instance.status == Status.ERROR),
            count(running & (Instance.login_state == LoginState.NEEDS_LOGIN)),
            count(running & cooling_down(now)),
            tasks_in(TaskStatus.RUNNING),
            tasks_in(TaskStatus.QUEUED),
        )
        async with self._sessions() as session:
            row = (await session.execute(query)).one()
        total, running_n, available, busy, starting, stopped, error, needs_login, cooling, active, queued = (
            int(value or 0) for value in row
        )
        health = self._engine_health
        return StatsView(
            total_instances=total,
            running_instances=running_n,
            available_instances=available,
            busy_instances=busy,
            concurrency_capacity=running_n,
            starting_instances=starting,
            stopped_instances=stopped,
            error_instances=error,
            needs_login_instances=needs_login,
            cooling_down_instances=cooling,
            active_tasks=active,
            queued_tasks=queued,
            engine=EngineView(name=health.engine, ok=health.ok, reason=health.reason, since=health.since,
                              egress_fence=egress_fence(self._runtime)[0], warnings=security_warnings(self._runtime)),
        )

    async def events(self, instance_id: str, *, limit: int = 100) -> list[EventView]:
        uid = _parse_id(instance_id)
        query = (
            select(InstanceEvent)
            .where(InstanceEvent.instance_id == uid)
            .order_by(InstanceEvent.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            events = (await session.scalars(query)).all()
            # The history outlives the row; unknown only when there is neither.
            if not events and not await session.scalar(select(exists().where(Instance.id == uid))):
                raise NotFound("instance_not_found", instance_id=instance_id)
        return [
            EventView(
                id=e.id,
                instance_id=str(e.instance_id),
                instance_name=e.instance_name,
                kind=e.kind,
                message=e.message,
                created_at=e.created_at,
            )
            for e in events
        ]

    async def logs(self, instance_id: str, *, tail: int) -> list[str]:
        await self.get(instance_id)
        try:
            return [line async for line in self._runtime.logs(str(_parse_id(instance_id)), tail=tail)]
        except RuntimeUnavailable as exc:
            raise EngineDown(exc.engine, exc.reason) from exc
        except RuntimeError_ as exc:
            raise RuntimeFailed(engine=self._runtime.name, reason=str(exc)) from exc

    async def follow_logs(self, instance_id: str, *, tail: int) -> AsyncIterator[str]:
        """Checks the instance and the engine now, so the caller can still answer 404/503; then streams."""
        await self.get(instance_id)
        uid = str(_parse_id(instance_id))
        await self._engine_call(self._runtime.inspect(uid))
        return self._runtime.logs(uid, tail=tail, follow=True)

    # Targets -------------------------------------------------------------------------------------

    async def create(
        self, name: str, proxy: str | None = None, *, legacy_id: str | None = None, session: bytes | None = None,
        timezone: str | None = None, locale: str | None = None,
    ) -> InstanceView:
        """A stopped instance. `legacy_id`: the old system's id of the instance it replaces (once only);
        `session`: a session it gets once it is ready, stored with the row in one transaction; `timezone`,
        `locale`: its browser's own (None: the fleet defaults)."""
        name = _valid_name(name)
        regional = valid_regional(timezone, locale)
        proxy_url = _valid_proxy(proxy)
        check_reachable(self._runtime, proxy_url)
        legacy_id = _valid_legacy_id(legacy_id)
        pending = self._valid_pending(session) if session is not None else None
        # A migrated instance brings its own login; the single-instance file stays for the next plain create.
        legacy = await self._read_legacy_session() if legacy_id is None and pending is None else None
        for with_legacy in (True, False):
            try:
                instance_id = await self._insert(
                    name, legacy if with_legacy else None, proxy_url, legacy_id=legacy_id, pending=pending,
                    regional=regional,
                )
                break
            except IntegrityError:
                if await self._name_taken(name):
                    raise Conflict("instance_name_taken", name=name) from None
                if legacy_id is not None and (owner := await self._legacy_owner(legacy_id)) is not None:
                    raise Conflict("instance_legacy_taken", legacy_id=legacy_id, name=owner) from None
                if not (with_legacy and legacy):
                    raise
                # Another create consumed the same legacy file in between: create without it.
        return await self.get(str(instance_id))

    async def set_proxy(self, instance_id: str, proxy: str | None) -> tuple[InstanceView, bool]:
        """The instance's own egress proxy ("" or None: the fleet default); used from its next start.
        Returns the state and whether anything changed."""
        proxy_url = _valid_proxy(proxy)
        check_reachable(self._runtime, proxy_url)
        uid = _parse_id(instance_id)
        async with self._sessions.begin() as session:
            row = (await session.execute(select(Instance.name, Instance.proxy_url).where(Instance.id == uid))).first()
            if row is None:
                raise NotFound("instance_not_found", instance_id=instance_id)
            if row.proxy_url == proxy_url:
                changed = False
            else:
                await session.execute(update(Instance).where(Instance.id == uid).values(
                    proxy_url=proxy_url, proxy_exit=self._proxy_exit(proxy_url)))
                session.add(new_event(uid, row.name, EventKind.PROXY_CHANGED, _proxy_event(proxy_url)))
                changed = True
        if changed:
            log.info("instance %s: proxy changed to %s", row.name, mask_proxy(proxy_url) or "the fleet default")
        return await self.get(instance_id), changed

    async def set_regional(self, instance_id: str, changes: dict[str, str | None]) -> tuple[InstanceView, bool]:
        """The instance's own time zone and/or locale (`changes` holds the fields given; "" or None: the fleet
        default); used from its next start, like the proxy. Returns the state and whether anything changed."""
        values = {field: value for field, value in zip(
            ("timezone", "locale"), valid_regional(changes.get("timezone"), changes.get("locale")), strict=True)
            if field in changes}
        return await self._change_fields(instance_id, values, EventKind.REGIONAL_CHANGED, _regional_event)

    async def set_pacing(self, instance_id: str, changes: dict[str, Any]) -> tuple[InstanceView, bool]:
        """The account's own pause between tasks and/or daily cap per model (`changes` holds the fields given;
        None: the fleet's); used from its next task. A new cap lifts the cap blocks the old one wrote today.
        Returns the state and whether anything changed."""

        async def lift_cap_blocks(session: AsyncSession, uid: uuid.UUID, changed: dict[str, Any]) -> None:
            if "daily_cap" in changed:
                await session.execute(delete(ModelBlock).where(ModelBlock.instance_id == uid, ModelBlock.kind == BlockKind.CAP.value))

        return await self._change_fields(instance_id, valid_pacing(changes), EventKind.PACING_CHANGED, _pacing_event,
                                         also=lift_cap_blocks)

    async def _change_fields(
        self,
        instance_id: str,
        values: dict[str, Any],
        kind: EventKind,
        describe: Callable[[dict[str, Any]], str],
        also: Callable[[AsyncSession, uuid.UUID, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> tuple[InstanceView, bool]:
        """Writes the instance columns among `values` that differ from the row, with one event saying what
        changed (and `also`, in the same transaction). Returns the state and whether anything changed."""
        uid = _parse_id(instance_id)
        async with self._sessions.begin() as session:
            row = (await session.execute(
                select(Instance.name, *(getattr(Instance, field) for field in values)).where(Instance.id == uid))).first()
            if row is None:
                raise NotFound("instance_not_found", instance_id=instance_id)
            values = {field: value for field, value in values.items() if getattr(row, field) != value}
            if values:
                await session.execute(update(Instance).where(Instance.id == uid).values(**values))
                if also is not None:
                    await also(session, uid, values)
                session.add(new_event(uid, row.name, kind, describe(values)))
        if values:
            log.info("instance %s: %s", row.name, describe(values))
        return await self.get(instance_id), bool(values)

    async def start(self, instance_id: str) -> tuple[InstanceView, bool]:
        """Asks for `running`; returns the state and whether anything changed (False: it already was)."""
        view = await self.get(instance_id)
        if view.target == Target.RUNNING and view.status in (Status.RUNNING, Status.STARTING):
            return view, False
        await self._engine_call(self._runtime.inspect(view.instance_id))
        # A manual start also retries an instance the reconciler gave up on.
        values = {"target": Target.RUNNING, "restart_count": 0, "next_restart_at": None}
        await self._set_target(view, values, EventKind.START_REQUESTED, "start requested through the API")
        return await self.get(instance_id), True

    async def stop(self, instance_id: str) -> tuple[InstanceView, bool]:
        view = await self.get(instance_id)
        if view.target == Target.STOPPED and view.status == Status.STOPPED:
            return view, False
        await self._engine_call(self._runtime.inspect(view.instance_id))
        await self._set_target(view, {"target": Target.STOPPED}, EventKind.STOP_REQUESTED, "stop requested through the API")
        return await self.get(instance_id), True

    async def delete(self, instance_id: str) -> InstanceView:
        view = await self.get(instance_id)
        if not _deletable(view.target, view.status):
            raise Conflict("instance_delete_running", name=view.name, status=view.status)
        remove_volume = self._settings.remove_volume_on_delete
        await self._engine_call(self._runtime.remove(view.instance_id, remove_volume=remove_volume))
        uid = uuid.UUID(view.instance_id)
        async with self._sessions.begin() as session:
            # Conditional, so a start that slipped in after the check wins over the delete.
            deleted = await session.execute(
                delete(Instance).where(
                    Instance.id == uid,
                    Instance.target == Target.STOPPED,
                    Instance.status.in_((Status.STOPPED, Status.ERROR)),
                )
            )
            if deleted.rowcount != 1:
                raise Conflict("instance_delete_running", name=view.name, status="starting")
            volume = "removed" if remove_volume else "kept"
            session.add(new_event(uid, view.name, EventKind.REMOVED, f"deleted through the API; volume {volume}"))
        return view

    # Sessions ------------------------------------------------------------------------------------

    async def export_session(self, instance_id: str) -> bytes:
        view, address = await self._running_address(instance_id)
        return await self._instance_call(view, self._client.get_session(address))

    async def import_session(self, instance_id: str, body: bytes, *, origin: str = "through the API") -> dict[str, Any]:
        """Into the running instance now; a stopped one keeps it in its row and gets it when next ready
        (the answer then says `pending`)."""
        if len(body) > self._session_settings.max_session_bytes:
            raise TooLarge("session_too_large", size=len(body), limit=self._session_settings.max_session_bytes)
        view = await self.get(instance_id)
        if view.status in (Status.STOPPED, Status.ERROR):
            return await self._store_pending(view, body, origin)
        view, address = await self._running_address(instance_id)
        imported = await self._instance_call(view, self._client.put_session(address, body))
        result = msgspec.to_builtins(imported)
        message = f"session imported {origin}: {imported.cookies} cookies"
        async with self._sessions.begin() as session:
            session.add(new_event(uuid.UUID(view.instance_id), view.name, EventKind.SESSION_IMPORTED, message))
            # Perhaps another account now: the models the old one could not use may work again.
            await session.execute(delete(ModelBlock).where(ModelBlock.instance_id == uuid.UUID(view.instance_id)))
            # A new login: the session's age starts again (the reconciler stamps it when none is set).
            since = utcnow() if imported.login_state == LoginState.LOGGED_IN else None
            await session.execute(update(Instance).where(Instance.id == uuid.UUID(view.instance_id)).values(signed_in_since=since))
        self._on_target_changed()  # a pass probes it now, so its new login state shows at once
        return result

    async def restore_session(self, instance_id: str) -> dict[str, Any]:
        """The running instance goes back to the login its last import replaced (tried like any import)."""
        view, address = await self._running_address(instance_id)
        restored = await self._instance_call(view, self._client.restore_session(address))
        async with self._sessions.begin() as session:
            message = f"previous login restored: {restored.cookies} cookies"
            session.add(new_event(uuid.UUID(view.instance_id), view.name, EventKind.SESSION_IMPORTED, message))
            await session.execute(delete(ModelBlock).where(ModelBlock.instance_id == uuid.UUID(view.instance_id)))
            await session.execute(update(Instance).where(Instance.id == uuid.UUID(view.instance_id)).values(signed_in_since=utcnow()))
        self._on_target_changed()
        return msgspec.to_builtins(restored)

    async def copy_session(self, source_id: str, target_id: str) -> dict[str, Any]:
        """Signs `target` in with `source`'s current login (both running)."""
        if _parse_id(source_id) == _parse_id(target_id):
            raise Invalid("session_copy_same")
        source = await self.get(source_id)
        body = await self.export_session(source_id)
        return await self.import_session(target_id, body, origin=f"from instance {source.name}")

    # The instance's browser ---------------------------------------------------------------------

    async def screenshot(self, instance_id: str) -> tuple[bytes, str]:
        """A PNG of the instance's page now, and its media type."""
        view, address = await self._running_address(instance_id)
        return await self._instance_call(view, self._client.screenshot(address))

    async def navigate(self, instance_id: str, *, target: str | None = None, url: str | None = None) -> None:
        """Moves the instance's page to its sign-in page, its AI Studio home, or an http(s) URL (manual sign-in)."""
        if (target is None) == (url is None) or target not in (None, "signin", "home"):
            raise Invalid("navigate_invalid")
        if url is not None and not re.match(r"^https?://", url):
            raise Invalid("navigate_invalid")
        view, address = await self._running_address(instance_id)
        await self._instance_call(view, self._client.navigate(address, url=url, target=target))

    async def diagnose(self, instance_id: str) -> dict[str, Any]:
        """The instance's page check: each selector role against its live page now (read-only)."""
        view, address = await self._running_address(instance_id)
        return msgspec.to_builtins(await self._instance_call(view, self._client.diagnose(address)))

    # Page snapshots (the instance keeps them on its volume) ------------------------------------------

    async def snapshots(self, instance_id: str) -> list[dict[str, Any]]:
        """The running instance's page snapshots, newest first."""
        view, address = await self._running_address(instance_id)
        listing = await self._snapshot_call(view, self._client.list_snapshots(address))
        return msgspec.to_builtins(listing.snapshots)

    async def take_snapshot(self, instance_id: str, reason: str = "manual") -> dict[str, Any]:
        """A snapshot of the running instance's page now (HTML without scripts, screenshot, page check)."""
        if not _SNAPSHOT_REASON.fullmatch(reason):
            raise Invalid("snapshot_reason_invalid", reason=reason[:40])
        view, address = await self._running_address(instance_id)
        return msgspec.to_builtins(await self._snapshot_call(view, self._client.take_snapshot(address, reason)))

    async def snapshot_zip(self, instance_id: str, snapshot_id: str) -> AsyncIterator[bytes]:
        """The snapshot's zip as it streams from the instance; the id's shape is checked before anything is sent."""
        if not _SNAPSHOT_ID.fullmatch(snapshot_id):
            raise Invalid("snapshot_id_invalid", snapshot_id=snapshot_id[:80])
        view, address = await self._running_address(instance_id)
        return await self._snapshot_call(view, self._client.snapshot_zip(address, snapshot_id), snapshot_id)

    async def _snapshot_call(self, view: InstanceView, call: Any, snapshot_id: str | None = None) -> Any:
        """The instance's 404 and 422 worded for snapshots; everything else as any other instance call."""
        try:
            return await call
        except (InstanceRejected, InstanceNoAnswer) as exc:
            status = exc.status_code if isinstance(exc, InstanceRejected) else None
            if status == 404 and snapshot_id is not None:
                raise NotFound("snapshot_not_found", snapshot_id=snapshot_id, name=view.name) from exc
            if status in (400, 422):
                raise Invalid("snapshot_refused", name=view.name, reason=exc.detail) from exc
            if status == 507:
                raise InstanceUnavailable("snapshot_not_stored", name=view.name, reason=exc.detail) from exc
            return await self._instance_call(view, _raise(exc))

    @contextlib.asynccontextmanager
    async def liveview(self, instance_id: str) -> AsyncIterator[ClientConnection]:
        """The instance's live view (its token stays here): frames from it, mouse and keyboard to it."""
        view, address = await self._running_address(instance_id)
        upstream = await self._instance_call(view, self._client.open_liveview(address))
        try:
            yield upstream
        finally:
            await upstream.close()

    # Internals -----------------------------------------------------------------------------------

    async def _insert(
        self, name: str, legacy: tuple[str, str, bytes] | None, proxy_url: str | None = None, *,
        legacy_id: str | None = None, pending: tuple[str, int] | None = None,
        regional: tuple[str | None, str | None] = (None, None),
    ) -> uuid.UUID:
        instance_id = uuid.uuid4()
        async with self._sessions.begin() as session:
            session.add(Instance(
                id=instance_id, name=name, proxy_url=proxy_url, proxy_exit=self._proxy_exit(proxy_url), legacy_id=legacy_id,
                pending_session=pending[0] if pending else None, timezone=regional[0], locale=regional[1],
            ))
            # Flush first, so a taken name fails before the legacy marker is written.
            await session.flush()
            created = "created through the API" + (f" for old instance {legacy_id}" if legacy_id else "")
            session.add(new_event(instance_id, name, EventKind.CREATED, created))
            if pending is not None:
                message = f"session with {pending[1]} cookies stored; imported once the instance is ready"
                session.add(new_event(instance_id, name, EventKind.SESSION_IMPORTED, message))
            if proxy_url is not None:
                session.add(new_event(instance_id, name, EventKind.PROXY_CHANGED, _proxy_event(proxy_url)))
            if given := {f: v for f, v in zip(("timezone", "locale"), regional, strict=True) if v is not None}:
                session.add(new_event(instance_id, name, EventKind.REGIONAL_CHANGED, _regional_event(given)))
            if legacy is not None:
                marker, path, content = legacy
                session.add(FleetMarker(key=marker, value=str(instance_id)))
                await session.execute(
                    update(Instance).where(Instance.id == instance_id).values(pending_session=content.decode())
                )
                message = f"legacy session {path} will be imported once the instance is ready"
                session.add(new_event(instance_id, name, EventKind.SESSION_IMPORTED, message))
        return instance_id

    def _valid_pending(self, body: bytes) -> tuple[str, int]:
        """A session to keep until the instance is ready: checked now, as the instance would, and its cookie count."""
        if len(body) > self._session_settings.max_session_bytes:
            raise TooLarge("session_too_large", size=len(body), limit=self._session_settings.max_session_bytes)
        try:
            summary = check_session(body)
        except SessionShapeError as exc:
            raise Invalid("session_invalid", reason=str(exc)) from None
        return body.decode("utf-8-sig"), summary.cookies

    async def _store_pending(self, view: InstanceView, body: bytes, origin: str) -> dict[str, Any]:
        text, cookies = self._valid_pending(body)
        uid = uuid.UUID(view.instance_id)
        async with self._sessions.begin() as session:
            # Only while it is still stopped: a start that slipped in gets a 409 rather than a lost session.
            stored = await session.execute(
                update(Instance)
                .where(Instance.id == uid, Instance.status.in_((Status.STOPPED, Status.ERROR)))
                .values(pending_session=text)
            )
            if stored.rowcount != 1:
                raise Conflict("instance_not_running", name=view.name, status=Status.STARTING)
            message = f"session stored {origin}: {cookies} cookies; imported once the instance is ready"
            session.add(new_event(uid, view.name, EventKind.SESSION_IMPORTED, message))
            await session.execute(delete(ModelBlock).where(ModelBlock.instance_id == uid))
        return {"cookies": cookies, "login_state": view.login_state, "pending": True}

    async def _legacy_owner(self, legacy_id: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(select(Instance.name).where(Instance.legacy_id == legacy_id))

    async def _name_taken(self, name: str) -> bool:
        async with self._sessions() as session:
            return bool(await session.scalar(select(exists().where(Instance.name == name))))

    async def _read_legacy_session(self) -> tuple[str, str, bytes] | None:
        """The old system's session file when it is there and not migrated yet: (marker key, path, bytes)."""
        path = self._session_settings.legacy_session_file
        if path is None:
            return None
        content = await asyncio.to_thread(_read_if_file, path)
        if content is None:
            return None
        if len(content) > self._session_settings.max_session_bytes:
            log.warning("legacy session %s is larger than max_session_bytes; not migrated", path)
            return None
        try:
            content.decode()
        except UnicodeDecodeError:
            log.warning("legacy session %s is not UTF-8 text; not migrated", path)
            return None
        marker = LEGACY_MARKER_PREFIX + hashlib.sha256(content).hexdigest()
        async with self._sessions() as session:
            if await session.get(FleetMarker, marker) is not None:
                return None
        return marker, str(path), content

    async def _set_target(self, view: InstanceView, values: dict[str, Any], kind: EventKind, message: str) -> None:
        uid = uuid.UUID(view.instance_id)
        async with self._sessions.begin() as session:
            result = await session.execute(update(Instance).where(Instance.id == uid).values(**values))
            if result.rowcount != 1:
                raise NotFound("instance_not_found", instance_id=view.instance_id)
            session.add(new_event(uid, view.name, kind, message))
        self._on_target_changed()

    async def _engine_call(self, call: Any) -> Any:
        try:
            return await call
        except RuntimeUnavailable as exc:
            raise EngineDown(exc.engine, exc.reason) from exc
        except RuntimeError_ as exc:
            raise RuntimeFailed(engine=self._runtime.name, reason=str(exc)) from exc

    async def _running_address(self, instance_id: str) -> tuple[InstanceView, InstanceAddress]:
        view = await self.get(instance_id)
        async with self._sessions() as session:
            endpoint, token = (
                await session.execute(
                    select(Instance.endpoint, Instance.token).where(Instance.id == uuid.UUID(view.instance_id))
                )
            ).one()
        if view.status != Status.RUNNING or not endpoint:
            raise Conflict("instance_not_running", name=view.name, status=view.status)
        return view, InstanceAddress(endpoint, token)

    async def _instance_call(self, view: InstanceView, call: Any) -> Any:
        """Runs a call to the instance and turns its failures into domain errors a person can read."""
        try:
            return await call
        except InstanceNoAnswer as exc:
            raise InstanceUnavailable(name=view.name, reason=str(exc)) from exc
        except InstanceBadAnswer as exc:
            raise InstanceUnavailable("instance_bad_answer", name=view.name, reason=str(exc)) from exc
        except InstanceRejected as exc:
            if exc.status_code == 413:
                raise TooLarge("session_too_large", size="?", limit=self._session_settings.max_session_bytes) from exc
            if exc.status_code in (400, 422):
                raise Invalid("session_invalid", reason=exc.detail) from exc
            if exc.status_code == 409:
                raise Conflict("instance_busy", name=view.name) from exc
            raise InstanceUnavailable("instance_rejected", name=view.name, reason=str(exc)) from exc


_SNAPSHOT_ID = re.compile(SNAPSHOT_ID_PATTERN)
_SNAPSHOT_REASON = re.compile(SNAPSHOT_REASON_PATTERN)


async def _raise(exc: Exception) -> Any:
    """An awaitable that raises `exc`: hands an instance's refusal to `_instance_call`'s wording."""
    raise exc


async def _model_blocks(session: AsyncSession, instance_id: uuid.UUID | None = None) -> dict[uuid.UUID, list[ModelBlockView]]:
    """The model blocks in force (void ones, from before the instance's last start, are left out)."""
    query = (
        select(ModelBlock.instance_id, ModelBlock.model, ModelBlock.reason, ModelBlock.created_at, ModelBlock.kind,
               ModelBlock.until)
        .join(Instance, Instance.id == ModelBlock.instance_id)
        .where(block_in_force(utcnow()))
        .order_by(ModelBlock.created_at, ModelBlock.model)
    )
    if instance_id is not None:
        query = query.where(ModelBlock.instance_id == instance_id)
    found: dict[uuid.UUID, list[ModelBlockView]] = {}
    for row in (await session.execute(query)).all():
        found.setdefault(row.instance_id, []).append(ModelBlockView(
            model=row.model, reason=row.reason, since=row.created_at, kind=row.kind, until=row.until))
    return found


def _blocked(view: InstanceView, blocks: dict[uuid.UUID, list[ModelBlockView]]) -> InstanceView:
    view.unavailable_models = blocks.get(uuid.UUID(view.instance_id), [])
    return view


def _view_query(now: datetime) -> Any:
    return select(*_VIEW_COLUMNS, is_busy(now).label("is_busy"), is_available(now).label("available"))


def _to_view(row: Any, settings: InstanceSettings, session: SessionSettings) -> InstanceView:
    default_proxy = settings.default_proxy_url
    return InstanceView(
        instance_id=str(row.id),
        name=row.name,
        status=row.status,
        created_at=row.created_at,
        last_used=row.last_used_at,
        error_message=row.last_error,
        start_progress=row.start_progress,
        is_busy=bool(row.is_busy),
        target=row.target,
        login_state=shown_login_state(row.login_state, row.aistudio_reach),
        aistudio_reach=row.aistudio_reach,
        available=bool(row.available),
        cooldown_until=row.cooldown_until,
        started_at=row.started_at,
        tasks_done=row.tasks_done,
        tasks_failed=row.tasks_failed,
        restart_count=row.restart_count,
        next_restart_at=row.next_restart_at,
        handle=row.handle,
        proxy=mask_proxy(row.proxy_url),
        effective_proxy=mask_proxy(row.proxy_url or default_proxy),
        timezone=row.timezone,
        locale=row.locale,
        effective_timezone=row.timezone or settings.default_timezone,
        effective_locale=row.locale or settings.default_locale,
        login_checked_at=row.login_checked_at,
        signed_in_since=row.signed_in_since,
        session_saved_at=row.session_saved_at,
        session_expires_at=row.session_expires_at,
        session_expiring=session_expiring(row.session_expires_at, utcnow(), session.session_warn_before),
        last_success_at=row.last_success_at,
        page_error=row.page_error,
        legacy_id=row.legacy_id,
        pace_seconds=row.pace_seconds,
        daily_cap=row.daily_cap,
    )


def shown_login_state(login_state: str, aistudio_reach: str) -> str:
    """The old API's login_state: `unreachable` while the page cannot load AI Studio (one release, then gone)."""
    return UNREACHABLE_SHOWN if aistudio_reach == Reach.UNREACHABLE else login_state


def _parse_id(instance_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(instance_id)
    except (ValueError, TypeError, AttributeError):
        raise NotFound("instance_not_found", instance_id=str(instance_id)[:80]) from None


def _valid_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not NAME_PATTERN.fullmatch(name):
        raise Invalid("instance_name_invalid", name=name[:80])
    return name


def _valid_legacy_id(legacy_id: str | None) -> str | None:
    if legacy_id is None:
        return None
    if not isinstance(legacy_id, str) or not LEGACY_ID_PATTERN.fullmatch(legacy_id):
        raise Invalid("instance_legacy_id_invalid", legacy_id=str(legacy_id)[:80])
    return legacy_id


def _valid_proxy(proxy: str | None) -> str | None:
    try:
        return normalize_proxy(proxy)
    except ProxyURLError as exc:
        raise Invalid(f"proxy_invalid_{exc.reason}") from None


def valid_regional(timezone: str | None, locale: str | None) -> tuple[str | None, str | None]:
    """An IANA time zone and a BCP 47 locale, normalized ("" or None: the fleet default), or Invalid naming the field."""
    try:
        return normalize_timezone(timezone), normalize_locale(locale)
    except RegionalError as exc:
        raise Invalid(f"{exc.field}_invalid", value=str(timezone if exc.field == "timezone" else locale)[:64]) from None


def valid_pacing(changes: dict[str, Any]) -> dict[str, float | int | None]:
    """The pacing fields given, checked ("" or None: the fleet's), or Invalid naming the first bad one: a pause of
    0 to 3600 seconds, a daily cap of 1 to 100000. Numbers or their text (the panel's form) are taken."""
    checked: dict[str, float | int | None] = {}
    for field in PACING_FIELDS:
        if field in changes:
            checked[field] = _pace_seconds(changes[field]) if field == "pace_seconds" else _daily_cap(changes[field])
    return checked


def _pace_seconds(value: Any) -> float | None:
    number = _number(value, "pace_seconds")
    if number is None:
        return None
    if not (math.isfinite(number) and 0 <= number <= PACE_SECONDS_MAX):
        raise Invalid("pace_seconds_invalid", value=_shown(value))
    return float(number)


def _daily_cap(value: Any) -> int | None:
    number = _number(value, "daily_cap")
    if number is None:
        return None
    if not (math.isfinite(number) and number == int(number) and 1 <= number <= DAILY_CAP_MAX):
        raise Invalid("daily_cap_invalid", value=_shown(value))
    return int(number)


def _number(value: Any, field: str) -> float | None:
    """A number, or None for "back to the fleet's"; anything else is Invalid naming the field."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # JSON true is no number of seconds
        raise Invalid(f"{field}_invalid", value=_shown(value))
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise Invalid(f"{field}_invalid", value=_shown(value)) from None


def _shown(value: Any) -> str:
    return str(value)[:32]


def _pacing_event(values: dict[str, float | int | None]) -> str:
    said = []
    if "pace_seconds" in values:
        pace = values["pace_seconds"]
        said.append(f"pause between tasks {pace:g} s" if pace is not None else "pause between tasks: the fleet's")
    if "daily_cap" in values:
        cap = values["daily_cap"]
        said.append(f"daily cap per model {cap} (today's cap blocks lifted)" if cap is not None
                    else "daily cap per model: the fleet's (today's cap blocks lifted)")
    return "; ".join(said) + "; from its next task"


def pacing_message(view: InstanceView, language: str) -> str:
    """What the API and the panel say after a pacing change, in the reader's language."""
    fleet = translate("pacing_fleet_default", language)
    pace = f"{view.pace_seconds:g} s" if view.pace_seconds is not None else fleet
    cap = str(view.daily_cap) if view.daily_cap is not None else fleet
    return translate("pacing_set", language, name=view.name, pace=pace, cap=cap)


def _regional_event(values: dict[str, str | None]) -> str:
    words = {"timezone": "time zone", "locale": "locale"}
    said = [f"{words[field]} {value or 'cleared (the fleet default)'}" for field, value in values.items()]
    return "; ".join(said) + "; takes effect at the next start"


def regional_message(view: InstanceView) -> tuple[str, dict[str, Any]]:
    """What the API and the panel say after a time zone or locale change: a message key and its parameters."""
    return "regional_set", {"name": view.name, "timezone": view.effective_timezone, "locale": view.effective_locale}


def _proxy_event(proxy_url: str | None) -> str:
    """The event's words: the masked proxy only, never its credentials."""
    if proxy_url is None:
        return "proxy cleared: the fleet default applies from the next start"
    return f"proxy set to {mask_proxy(proxy_url)}; takes effect at the next start"


def proxy_message(view: InstanceView) -> tuple[str, dict[str, Any]]:
    """What the API and the panel say after a proxy change: a message key and its parameters."""
    if view.proxy is not None:
        return "proxy_set", {"name": view.name, "proxy": view.proxy}
    if view.effective_proxy is not None:
        return "proxy_cleared_default", {"name": view.name, "proxy": view.effective_proxy}
    return "proxy_cleared_none", {"name": view.name}


def _deletable(target: str, status: str) -> bool:
    return target == Target.STOPPED and status in (Status.STOPPED, Status.ERROR)


def _read_if_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError as exc:
        log.warning("cannot read legacy session %s: %s", path, exc)
        return None

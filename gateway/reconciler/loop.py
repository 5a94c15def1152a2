"""The reconcile loop: one pass lists the engine once, loads every row once, and acts per instance.

Starts and stops can take seconds, so they run as background actions (one per instance at most); probes of
running instances run concurrently within the pass, bounded. Every step is idempotent, so a gateway killed
at any point picks up where it was on its next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_contract.codes import OUT_OF_REACH, Reach
from fleet_contract.environment import InstanceEnvironment
from fleet_contract.messages import LoginCheck
from gateway.db.models import EventKind, Instance, LoginState, Status, Target, new_event
from gateway.db.outage import Backlog, DatabaseUnreachable, database_unreachable
from gateway.db.types import utcnow
from gateway.reconciler.leader import LeaderLock
from gateway.reconciler.decide import Action, InstanceRow, backoff_delay, decide, describe_exit
from gateway.reconciler.session_health import health_changes, login_check_due
from gateway.runtime.base import InstanceSpec, Runtime, RuntimeError_, RuntimeState, RuntimeUnavailable
from gateway.runtime.health import EngineHealth
from gateway.accounts import page_catalogue
from gateway.instance_client import (
    InstanceAddress,
    InstanceBadAnswer,
    InstanceClient,
    InstanceNoAnswer,
    InstanceRejected,
    InstanceStatus,
)
from gateway.settings import InstanceSettings, ReconcileSettings, SessionSettings

log = logging.getLogger(__name__)

Event = tuple[EventKind, str]

# Readiness is probed this often (at most) during a start: a ready instance is noticed within 0.2 s.
START_PROBE_PAUSE_MAX = 0.2


class StartFailed(Exception):
    """The instance did not become ready; the message is the reason shown to operators."""


class StartAborted(Exception):
    """The target changed to stopped while waiting for readiness: the next pass stops it."""


@dataclass
class PassReport:
    duration: float = 0.0
    engine_ok: bool = True
    instances: int = 0
    probed: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    orphans_removed: int = 0


@dataclass
class _ProbeOutcome:
    row: InstanceRow
    values: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    crashed: str | None = None


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runtime: Runtime,
        client: InstanceClient,
        settings: ReconcileSettings,
        engine_health: EngineHealth,
        leader: LeaderLock | None = None,
        on_ready: Callable[[uuid.UUID], Awaitable[None]] | None = None,
        *,
        instance: InstanceSettings,
        session: SessionSettings,
    ) -> None:
        self._leader = leader  # None: always lead (tests driving passes by hand)
        self._on_ready = on_ready  # brings a just-ready instance in line with fleet settings (selectors override)
        self._sessions = sessions
        self._runtime = runtime
        self._client = client
        self._settings = settings
        self._instance_settings = instance  # what each started instance is given
        self._session_settings = session
        self._health = engine_health
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._actions: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._finished_during_pass: set[uuid.UUID] = set()
        self._probe_failures: dict[uuid.UUID, int] = {}
        self._login_checks: dict[uuid.UUID, float] = {}  # when each instance's login was last checked (monotonic)
        self._checking: set[asyncio.Task[None]] = set()  # login checks: beside, not instead of, starts and stops
        self._suspects: set[uuid.UUID] = set()
        self._offers_written: dict[uuid.UUID, dict[str, Any]] = {}  # what the page offered, as last written to the row
        page_catalogue.clear()  # this fleet's pages tell it again on their next probe
        # Instances whose stored session met a passing failure (busy, 5xx, no answer): tried again each pass.
        self._undelivered: set[uuid.UUID] = set()
        # Running instances this reconciler started or has seen healthy; any other running one is adopted.
        self._known_running: set[uuid.UUID] = set()
        self._start_slots = asyncio.Semaphore(settings.start_concurrency)
        self._probe_slots = asyncio.Semaphore(settings.probe_concurrency)
        self._next_due: float | None = None
        self._passes_begun = self._passes_ended = 0  # loop passes, so a caller can wait for one that began later
        self.last_report: PassReport | None = None
        # Status moves that met a database outage: written before the next pass reads the rows.
        self._unwritten = Backlog("reconciler")

    # Lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="reconciler")

    async def close(self) -> None:
        """Stops the loop and cancels running actions; instances keep running and are adopted next time."""
        tasks = [t for t in (self._loop_task, *self._actions.values(), *self._checking) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        await self._unwritten.close()
        if self._leader is not None:
            await self._leader.release()

    def wake(self) -> None:
        """Run a pass now (a target changed)."""
        self._wake.set()

    def suspect(self, instance_id: uuid.UUID) -> None:
        """Someone (the dispatcher) could not reach this instance: probe it now, one failure is enough."""
        self._suspects.add(instance_id)
        self.wake()

    async def next_pass(self) -> None:
        """Wait for a loop pass that begins after this call to end (what a target change did shows in the rows)."""
        wanted = self._passes_begun + 1
        self.wake()
        while self._passes_ended < wanted:
            await asyncio.sleep(0.01)

    async def drain(self) -> None:
        """Wait for every background start/stop to finish (tests and shutdown)."""
        while self._actions:
            await asyncio.gather(*list(self._actions.values()), return_exceptions=True)

    @property
    def busy_instances(self) -> set[uuid.UUID]:
        return set(self._actions)

    @property
    def is_leader(self) -> bool:
        return self._leader is not None and self._leader.held

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            self._passes_begun += 1
            try:
                if self._leader is None or await self._leader.acquire():
                    self.last_report = await self.reconcile_once()
                else:
                    await self.follow_offers()
            except Exception as exc:  # a bug in one pass must not end reconciliation
                if database_unreachable(exc):  # an outage: the next pass tries again
                    log.warning("reconcile pass skipped: database unreachable (%s)", _first_line(exc))
                else:
                    log.exception("reconcile pass failed")
            finally:
                self._passes_ended += 1
            timeout = self._settings.reconcile_interval
            if self._next_due is not None:
                timeout = max(0.0, min(timeout, self._next_due - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def follow_offers(self) -> None:
        """A replica that does not lead probes no page: it learns what the pages offer from the leader's rows."""
        query = select(Instance.id, Instance.offered_models, Instance.status, Instance.login_state)
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
        page_catalogue.load_rows([
            (row.id, row.offered_models, row.status == Status.RUNNING and row.login_state == LoginState.LOGGED_IN)
            for row in rows
        ])

    # One pass ------------------------------------------------------------------------------------

    async def reconcile_once(self) -> PassReport:
        began = time.perf_counter()
        report = PassReport()
        self._finished_during_pass.clear()
        skip = set(self._actions)
        try:
            # The engine first, the rows second: a container that exists was started from a row loaded here.
            states = await self._runtime.list_managed()
        except RuntimeUnavailable as exc:
            self._health.mark_down(exc.reason)
            report.engine_ok = False
            report.duration = time.perf_counter() - began
            return report
        self._health.mark_up()
        await self._unwritten.ready()  # moves kept during an outage land before the rows are read
        rows = await self._load_rows()
        report.instances = len(rows)
        now = utcnow()
        self._next_due = None
        report.orphans_removed = await self._remove_orphans(states, {str(row.id) for row in rows})
        probes: list[Coroutine[Any, Any, _ProbeOutcome]] = []
        for row in rows:
            if row.id in skip or row.id in self._actions or row.id in self._finished_during_pass:
                continue
            state = states.get(str(row.id))
            action = decide(row, state, now, self._settings.max_restarts)
            report.actions[action] = report.actions.get(action, 0) + 1
            if action == Action.PROBE:
                assert state is not None
                probes.append(self._probe(row, state, now))
            elif action == Action.CRASHED:
                await self._failed(row.id, row.name, describe_exit(state), EventKind.DIED, await self._last_words(row.id))
            elif action == Action.START:
                token = await self._begin_start(row)
                if token is not None:
                    self._spawn(row.id, self._start(row, token))
            elif action == Action.AWAIT_READY:
                self._spawn(row.id, self._resume_start(row, state))
            elif action == Action.STOP:
                self._spawn(row.id, self._stop(row))
            elif action == Action.MARK_STOPPED:
                await self._write(row.id, row.name, {"status": Status.STOPPED}, (EventKind.STOPPED, "stopped as requested"))
            elif action == Action.WAIT and row.next_restart_at is not None:
                self._due_at(row.next_restart_at, now)
        if probes:
            outcomes = await asyncio.gather(*probes)
            report.probed = len(outcomes)
            await self._apply_probes(outcomes)
            await self._retry_deliveries([o.row for o in outcomes if o.crashed is None])
        report.duration = time.perf_counter() - began
        return report

    async def _load_rows(self) -> list[InstanceRow]:
        query = select(
            Instance.id,
            Instance.name,
            Instance.target,
            Instance.status,
            Instance.login_state,
            Instance.busy,
            Instance.restart_count,
            Instance.next_restart_at,
            Instance.started_at,
            Instance.endpoint,
            Instance.token,
            Instance.login_checked_at,
            Instance.signed_in_since,
            Instance.session_saved_at,
            Instance.session_expires_at,
            Instance.page_error,
            Instance.aistudio_reach,
        )
        async with self._sessions() as session:
            return [InstanceRow(*row) for row in (await session.execute(query)).all()]

    def _spawn(self, instance_id: uuid.UUID, action: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(action, name=f"reconcile-{instance_id}")
        self._actions[instance_id] = task

        def finished(_task: asyncio.Task[None]) -> None:
            self._actions.pop(instance_id, None)
            self._finished_during_pass.add(instance_id)
            error = None if _task.cancelled() else _task.exception()
            if error is not None and database_unreachable(error):
                log.warning("reconcile action for %s stopped: database unreachable (%s)", instance_id, _first_line(error))
            elif error is not None:
                log.error("reconcile action for %s failed", instance_id, exc_info=error)
            self.wake()  # its outcome (e.g. a restart scheduled) may need the next pass

        task.add_done_callback(finished)

    def _due_at(self, when: datetime, now: datetime) -> None:
        due = time.monotonic() + max(0.0, (when - now).total_seconds())
        self._next_due = due if self._next_due is None else min(self._next_due, due)

    # Orphans -------------------------------------------------------------------------------------

    async def _remove_orphans(self, states: dict[str, RuntimeState], owned: set[str]) -> int:
        removed = 0
        for instance_id in states.keys() - owned:
            try:
                # The container only: a gateway pointed at the wrong database must not wipe everyone's logins.
                await self._runtime.remove(instance_id, remove_volume=False)
            except (RuntimeError_, RuntimeUnavailable) as exc:
                log.warning("cannot remove orphan container of %s: %s", instance_id, exc)
                continue
            removed += 1
            log.info("removed orphan container of unknown instance %s", instance_id)
            try:
                orphan_id = uuid.UUID(instance_id)
            except ValueError:
                continue
            async with self._sessions.begin() as session:
                message = "labeled container that no instance owns removed (its volume is kept)"
                session.add(new_event(orphan_id, "", EventKind.ORPHAN_REMOVED, message))
        return removed

    # Start ---------------------------------------------------------------------------------------

    async def _begin_start(self, row: InstanceRow) -> str | None:
        """Mark it starting with a fresh token before any engine call, so a gateway killed mid-start can adopt
        what it started; None when the row is gone."""
        token = secrets.token_urlsafe(32)
        values = {
            "status": Status.STARTING, "token": token, "endpoint": None, "login_state": LoginState.UNKNOWN, "busy": False,
            "page_error": None,
        }
        return token if await self._write(row.id, row.name, values) else None

    async def _start(self, row: InstanceRow, token: str) -> None:
        async def launch() -> str | None:
            state = await self._runtime.inspect(str(row.id))
            if state.phase != "missing":
                # A stale container carries an old token in its environment: replace it, keep the volume.
                await self._runtime.remove(str(row.id), remove_volume=False)
            state = await self._runtime.start(
                self._spec(row, token, await self._proxy_of(row.id), await self._regional_of(row.id)))
            started = {"handle": state.handle, "endpoint": state.endpoint}
            await self._write(row.id, row.name, started, (EventKind.STARTED, f"started as {state.handle}"))
            return state.endpoint

        async with self._start_slots:
            await self._launch_until_ready(row, launch, token, "ready", keep_last_words=True)

    async def _resume_start(self, row: InstanceRow, state: RuntimeState | None) -> None:
        """A start was under way when the gateway stopped: wait for that same container instead of a new one."""
        endpoint = (state.endpoint if state else None) or row.endpoint

        async def launch() -> str | None:
            return endpoint

        reason = "adopted: a start in progress before the gateway restarted"
        await self._launch_until_ready(row, launch, row.token, reason, keep_last_words=False)

    async def _launch_until_ready(
        self,
        row: InstanceRow,
        launch: Callable[[], Awaitable[str | None]],
        token: str | None,
        reason: str,
        *,
        keep_last_words: bool,
    ) -> None:
        """Launch (or find) the instance, wait for its readiness, and record how that ended."""
        try:
            endpoint = await launch()
            deadline = time.monotonic() + self._settings.start_timeout
            status = await self._await_ready(row.id, endpoint, token, deadline)
        except (StartFailed, RuntimeError_) as exc:
            last_words = await self._last_words(row.id) if keep_last_words else ""
            await self._failed(row.id, row.name, str(exc), EventKind.START_FAILED, last_words)
            return
        except RuntimeUnavailable as exc:
            await self._engine_lost(row, exc)
            return
        except StartAborted:
            return
        await self._became_ready(row, status, reason)

    def _spec(self, row: InstanceRow, token: str, proxy_url: str | None = None,
              regional: tuple[str | None, str | None] = (None, None)) -> InstanceSpec:
        environment = InstanceEnvironment(
            api_token=token,
            aistudio_url=self._instance_settings.aistudio_url,
            signin_url=self._instance_settings.signin_url or None,
            browser_mode=self._instance_settings.browser_mode or None,
            # For the browser alone (the instance gives it to Chromium); the instance's own ports never use it.
            proxy=proxy_url or self._instance_settings.default_proxy_url,
            # Set with the proxy, so that the browser's clock and languages tell the same story as its address.
            timezone=regional[0] or self._instance_settings.default_timezone,
            locale=regional[1] or self._instance_settings.default_locale,
        )
        return InstanceSpec.of(str(row.id), row.name, environment)

    async def _proxy_of(self, instance_id: uuid.UUID) -> str | None:
        """Read at each start (not with every pass's rows): a change applies from the next start."""
        async with self._sessions() as session:
            return await session.scalar(select(Instance.proxy_url).where(Instance.id == instance_id))

    async def _regional_of(self, instance_id: uuid.UUID) -> tuple[str | None, str | None]:
        """Its own time zone and locale (None: the fleet defaults), read at each start like the proxy."""
        async with self._sessions() as session:
            row = (await session.execute(
                select(Instance.timezone, Instance.locale).where(Instance.id == instance_id))).first()
            return (row.timezone, row.locale) if row is not None else (None, None)

    async def _await_ready(
        self, instance_id: uuid.UUID, endpoint: str | None, token: str | None, deadline: float
    ) -> InstanceStatus:
        """Probe /status until it says ready; fail early when the container exits or rejects our token."""
        pause = 0.05
        last_problem = "no answer yet"
        next_engine_check = 0.0
        prepare_limit = self._settings.prepare_timeout
        prepared_by = time.monotonic() + prepare_limit if prepare_limit else None
        progress: str | None = None
        while True:
            answered = False
            if endpoint:
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    status = await self._client.status(
                        InstanceAddress(endpoint, token), timeout=min(self._settings.probe_timeout, remaining)
                    )
                    if status.ready:
                        return status
                    answered = True
                    last_problem = f"browser {status.browser}"
                except InstanceRejected as exc:
                    if exc.status_code == 401:
                        raise StartFailed("the instance rejected the gateway's token") from exc
                    last_problem = str(exc)
                except (InstanceNoAnswer, InstanceBadAnswer) as exc:
                    last_problem = str(exc)
            # An instance that answers runs; silence may mean it exited: ask the engine, at most once a second
            # (it serves every start at once, and this loop probes every START_PROBE_PAUSE_MAX).
            if not answered and time.monotonic() >= next_engine_check:
                next_engine_check = time.monotonic() + 1.0
                state = await self._runtime.inspect(str(instance_id))
                if state.phase != "running":
                    raise StartFailed(f"{describe_exit(state)} before it was ready")
                if state.preparing:  # scheduling or pulling: the start timeout counts from when the container runs
                    deadline = max(deadline, time.monotonic() + self._settings.start_timeout)
                    if prepared_by is not None and time.monotonic() >= prepared_by:
                        raise StartFailed(f"its container did not start within {prepare_limit:g}s ({state.detail})")
                if (state.detail if state.preparing else None) != progress:
                    progress = state.detail if state.preparing else None
                    await self._write(instance_id, None, {"start_progress": progress})
                if state.endpoint and state.endpoint != endpoint:
                    endpoint = state.endpoint
                    await self._write(instance_id, None, {"endpoint": endpoint})
            if time.monotonic() >= deadline:
                raise StartFailed(f"not ready after {self._settings.start_timeout:g}s ({last_problem})")
            if await self._target_of(instance_id) != Target.RUNNING:
                raise StartAborted
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, START_PROBE_PAUSE_MAX)

    async def _target_of(self, instance_id: uuid.UUID) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(select(Instance.target).where(Instance.id == instance_id))

    async def _became_ready(self, row: InstanceRow, status: InstanceStatus, how: str) -> None:
        values = {
            "status": Status.RUNNING,
            "start_progress": None,
            "login_state": _login_state(status.login_state),
            "busy": status.busy,
            "started_at": utcnow(),
            "last_error": None,
            "next_restart_at": None,
            "aistudio_reach": status.reach,
            "page_error": status.page_error,
        }
        health, warnings = health_changes(row, status, values["login_state"], utcnow(), self._session_settings.session_warn_before)
        values.update(health)
        self._note_offers(row.id, status, values["login_state"], values)  # the session's age and freshness from the first answer, not the next probe's
        kind = EventKind.ADOPTED if how.startswith("adopted") else EventKind.READY
        said = f"{how}; login state {status.login_state}" + (f"; AI Studio unreachable: {status.page_error}" if status.page_error else "")
        if await self._write(row.id, row.name, values, (kind, said), *warnings):
            self._known_running.add(row.id)
            self._probe_failures.pop(row.id, None)
            await self._deliver_pending_session(row)
            if self._on_ready is not None:
                await self._on_ready(row.id)

    async def _retry_deliveries(self, answering: list[InstanceRow]) -> None:
        """Stored sessions a passing failure kept from their instance, tried again while it answers."""
        for row in answering:
            if row.id in self._undelivered and row.id not in self._actions:
                await self._deliver_pending_session(row)

    async def _deliver_pending_session(self, row: InstanceRow) -> None:
        """A stored session (legacy file, migration, import into a stopped instance) waits in the row until the
        instance can take it."""
        async with self._sessions() as session:
            pending = await session.scalar(select(Instance.pending_session).where(Instance.id == row.id))
            address = (await session.execute(select(Instance.endpoint, Instance.token).where(Instance.id == row.id))).first()
        if not pending or address is None or not address.endpoint:
            self._undelivered.discard(row.id)
            return
        try:
            result = await self._client.put_session(InstanceAddress(address.endpoint, address.token), pending.encode())
        except (InstanceNoAnswer, InstanceBadAnswer) as exc:
            self._undelivered.add(row.id)
            log.warning("stored session for %s not delivered yet: %s", row.name, exc)
            return
        except InstanceRejected as exc:
            if exc.status_code not in DEFINITE_REFUSALS:
                # Busy, a starting browser, a full volume, AI Studio not loading: the next pass tries again.
                self._undelivered.add(row.id)
                log.warning("stored session for %s not delivered yet: %s", row.name, exc)
                return
            self._undelivered.discard(row.id)
            # The instance cannot read it, or it does not sign AI Studio in: it never will, so it is dropped.
            await self._write(row.id, row.name, {"pending_session": None}, (EventKind.SESSION_IMPORTED, f"stored session rejected: {exc}"))
            return
        self._undelivered.discard(row.id)
        values = {"pending_session": None, "login_state": _login_state(result.login_state)}
        message = f"stored session imported: {result.cookies} cookies"
        await self._write(row.id, row.name, values, (EventKind.SESSION_IMPORTED, message))

    # Failure and restart -------------------------------------------------------------------------

    async def _last_words(self, instance_id: uuid.UUID, lines: int = 20) -> str:
        """The end of a dead container's log, kept in its event: the restart replaces the container."""
        try:
            tail = [line async for line in self._runtime.logs(str(instance_id), tail=lines)]
        except (RuntimeError_, RuntimeUnavailable) as exc:
            return f"(logs unavailable: {exc})"
        return "\n".join(tail)

    async def _failed(
        self, instance_id: uuid.UUID, name: str, reason: str, kind: EventKind, last_words: str = ""
    ) -> None:
        """A crash or a failed start: schedule a restart with backoff, or give up after max_restarts."""
        self._known_running.discard(instance_id)
        page_catalogue.forget(instance_id)
        self._offers_written.pop(instance_id, None)
        self._probe_failures.pop(instance_id, None)
        async with self._sessions() as session:
            count = await session.scalar(select(Instance.restart_count).where(Instance.id == instance_id))
        if count is None:
            return
        failures = count + 1
        settings = self._settings
        values: dict[str, Any] = {"status": Status.ERROR, "restart_count": failures, "busy": False, "endpoint": None,
                                  "start_progress": None}
        log.warning("instance %s: %s", name, reason)
        if failures > settings.max_restarts:
            message = f"{reason}; gave up after {settings.max_restarts} restarts"
            values.update(last_error=message, next_restart_at=None)
            await self._write(instance_id, name, values, (kind, _with_log(reason, last_words)), (EventKind.GAVE_UP, message))
            await self._stop_quietly(instance_id)
            return
        delay = backoff_delay(failures, settings.restart_backoff_base, settings.restart_backoff_max)
        now = utcnow()
        values.update(last_error=reason, next_restart_at=now + timedelta(seconds=delay))
        restarting = (EventKind.RESTARTING, f"restart {failures}/{settings.max_restarts} in {delay:.2f}s")
        await self._write(instance_id, name, values, (kind, _with_log(reason, last_words)), restarting)
        self._due_at(values["next_restart_at"], now)

    async def _engine_lost(self, row: InstanceRow, exc: RuntimeUnavailable) -> None:
        """The engine went away mid-start: not the instance's fault, so no restart is counted."""
        self._health.mark_down(exc.reason)
        retry_at = utcnow() + timedelta(seconds=self._settings.restart_backoff_base)
        values = {"status": Status.ERROR, "last_error": str(exc), "next_restart_at": retry_at}
        await self._write(row.id, row.name, values, (EventKind.ENGINE_DOWN, str(exc)))

    async def _stop_quietly(self, instance_id: uuid.UUID) -> None:
        try:
            await self._runtime.stop(str(instance_id), timeout=self._settings.stop_timeout)
        except (RuntimeError_, RuntimeUnavailable) as exc:
            log.warning("cannot stop %s after giving up: %s", instance_id, exc)

    # Stop ----------------------------------------------------------------------------------------

    async def _stop(self, row: InstanceRow) -> None:
        if row.status != Status.STOPPING:
            await self._write(row.id, row.name, {"status": Status.STOPPING})
        try:
            await self._runtime.stop(str(row.id), timeout=self._settings.stop_timeout)
        except RuntimeUnavailable as exc:
            self._health.mark_down(exc.reason)
            return  # still `stopping`; the next pass tries again
        except RuntimeError_ as exc:
            await self._write(row.id, row.name, {"status": Status.ERROR, "last_error": f"stop failed: {exc}"}, (EventKind.STOPPED, f"stop failed: {exc}"))
            return
        self._known_running.discard(row.id)
        page_catalogue.forget(row.id)
        self._offers_written.pop(row.id, None)
        values = {"status": Status.STOPPED, "busy": False, "endpoint": None, "token": None}
        await self._write(row.id, row.name, values, (EventKind.STOPPED, "stopped as requested"))

    # Probes --------------------------------------------------------------------------------------

    async def _probe(self, row: InstanceRow, state: RuntimeState, now: datetime) -> _ProbeOutcome:
        outcome = _ProbeOutcome(row)
        endpoint = state.endpoint or row.endpoint
        if not endpoint:
            outcome.crashed = "the engine reports no address for the instance"
            return outcome
        try:
            async with self._probe_slots:
                status = await self._client.status(InstanceAddress(endpoint, row.token), timeout=self._settings.probe_timeout)
        except (InstanceNoAnswer, InstanceRejected, InstanceBadAnswer) as exc:
            failures = self._probe_failures.get(row.id, 0) + 1
            self._probe_failures[row.id] = failures
            rejected_token = isinstance(exc, InstanceRejected) and exc.status_code == 401
            suspected = row.id in self._suspects
            if rejected_token or suspected or failures >= self._settings.probe_failures_before_restart:
                outcome.crashed = f"not answering /status ({exc})"
            self._suspects.discard(row.id)
            return outcome
        self._suspects.discard(row.id)
        self._probe_failures.pop(row.id, None)
        if endpoint != row.endpoint:
            outcome.values["endpoint"] = endpoint
        if status.busy != row.busy:
            outcome.values["busy"] = status.busy
        login_state = _login_state(status.login_state)
        if status.ready and login_state != row.login_state:
            outcome.values["login_state"] = login_state
            outcome.events.append((EventKind.LOGIN_STATE_CHANGED, f"{row.login_state} → {login_state}"))
        if status.ready:
            reach_values, reach_events = reach_changes(row, status)
            outcome.values.update(reach_values)
            outcome.events.extend(reach_events)
            values, events = health_changes(row, status, login_state, now, self._session_settings.session_warn_before)
            outcome.values.update(values)
            outcome.events.extend(events)
            if login_check_due(status, now, self._session_settings.login_check_interval):
                self._check_login_soon(row, endpoint)
        stable_for = (now - row.started_at).total_seconds() if row.started_at else 0.0
        if row.restart_count and stable_for >= self._settings.restart_reset_after:
            outcome.values["restart_count"] = 0
        if status.ready:
            self._note_offers(row.id, status, login_state, outcome.values)
        if row.id not in self._known_running:
            self._known_running.add(row.id)
            outcome.events.append((EventKind.ADOPTED, f"found running after a gateway restart; kept (login state {login_state})"))
        return outcome

    def _note_offers(self, instance_id: uuid.UUID, status: InstanceStatus, login_state: Any, values: dict[str, Any]) -> None:
        """What the page's model picker offers this account: kept for the one model check, written to the row
        when it changed."""
        doc = page_catalogue.document(status)
        page_catalogue.record(instance_id, doc, login_state == LoginState.LOGGED_IN)
        if doc is not None:
            compared = {k: v for k, v in doc.items() if k != "read_at"}
            if self._offers_written.get(instance_id) != compared:
                self._offers_written[instance_id] = compared
                values["offered_models"] = doc

    def _check_login_soon(self, row: InstanceRow, endpoint: str) -> None:
        """At most one check per instance per interval, whether it worked or not."""
        last = self._login_checks.get(row.id)
        if last is not None and time.monotonic() - last < self._session_settings.login_check_interval:
            return
        self._login_checks[row.id] = time.monotonic()
        # Not an action: a page load that hangs on a dead proxy must not hold up an operator's stop.
        task = asyncio.create_task(self._check_login(row, endpoint), name=f"login-check-{row.id}")
        self._checking.add(task)
        task.add_done_callback(self._login_check_done)

    def _login_check_done(self, task: asyncio.Task[None]) -> None:
        self._checking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("login check failed: %s", task.exception())

    async def _check_login(self, row: InstanceRow, endpoint: str) -> None:
        """The idle instance reloads AI Studio; a changed login state is written as the probe would."""
        try:
            status = await self._client.check_login(InstanceAddress(endpoint, row.token), timeout=self._settings.start_timeout)
        except InstanceRejected as exc:
            if exc.status_code != 409:  # 409: a task got there first, which tells the login state anyway
                log.warning("login check of %s refused: %s", row.name, exc)
            return
        except (InstanceNoAnswer, InstanceBadAnswer) as exc:
            log.warning("login check of %s failed: %s", row.name, exc)
            return
        login_state = _login_state(status.login_state)
        values, events = health_changes(row, status, login_state, utcnow(), self._session_settings.session_warn_before)
        reach_values, reach_events = reach_changes(row, status)
        values.update(reach_values)
        events.extend(reach_events)
        if login_state != row.login_state:
            values["login_state"] = login_state
            events.append((EventKind.LOGIN_STATE_CHANGED, f"{row.login_state} → {login_state} (login check)"))
        if values or events:
            await self._write(row.id, row.name, values, *events)

    async def _apply_probes(self, outcomes: list[_ProbeOutcome]) -> None:
        """All healthy probes' changes in one transaction; crashes go through the restart path."""
        changed = [o for o in outcomes if o.crashed is None and (o.values or o.events)]
        if changed:
            async with self._sessions.begin() as session:
                for outcome in changed:
                    if outcome.values:
                        await session.execute(update(Instance).where(Instance.id == outcome.row.id).values(**outcome.values))
                    for kind, message in outcome.events:
                        session.add(new_event(outcome.row.id, outcome.row.name, kind, message))
        for outcome in outcomes:
            if outcome.crashed is not None:
                await self._failed(outcome.row.id, outcome.row.name, outcome.crashed, EventKind.DIED)

    # Writes --------------------------------------------------------------------------------------

    async def _write(self, instance_id: uuid.UUID, name: str | None, values: dict[str, Any], *events: Event) -> bool:
        """Update one row and log its events in one transaction; False when the row is gone (deleted).
        When the database cannot be reached, the write is kept (it lands, in order, once the database is
        back, before the next pass reads the rows) and DatabaseUnreachable ends the action."""
        found: list[bool] = []

        async def write() -> None:
            found.append(await self._write_row(instance_id, name, values, events))

        what = f"{name or instance_id}: {', '.join(f'{k}={v}' for k, v in values.items() if k in _SHOWN)} {[k for k, _ in events]}"
        if not await self._unwritten.write(what, write):
            raise DatabaseUnreachable(f"{what} waits for the database")
        return found[0] if found else False

    async def _write_row(self, instance_id: uuid.UUID, name: str | None, values: dict[str, Any], events: tuple[Event, ...]) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(update(Instance).where(Instance.id == instance_id).values(**values))
            if result.rowcount != 1:
                return False
            for kind, message in events:
                session.add(new_event(instance_id, name or "", kind, message))
        return True


_SHOWN = ("status", "login_state", "busy")
# Answers to a session delivery that say the session itself is bad (not JSON, too large, not signed in).
DEFINITE_REFUSALS = (400, 413, 422)  # in the log line of a kept write (never the token)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _with_log(reason: str, last_words: str) -> str:
    return f"{reason}\n--- last log lines ---\n{last_words}" if last_words else reason


def reach_changes(row: InstanceRow, status: InstanceStatus | LoginCheck) -> tuple[dict[str, Any], list[tuple[EventKind, str]]]:
    """Whether the page reaches AI Studio, and `page_error` with it: kept while unreachable, cleared after."""
    values: dict[str, Any] = {}
    events: list[tuple[EventKind, str]] = []
    error = status.page_error if status.reach in OUT_OF_REACH else None
    if status.reach != row.aistudio_reach:
        values["aistudio_reach"] = status.reach
        if status.reach == Reach.UNREACHABLE:
            events.append((EventKind.AISTUDIO_REACH_CHANGED, f"AI Studio unreachable: {error or 'no reason given'}"))
        elif status.reach == Reach.REGION_BLOCKED:
            events.append((EventKind.AISTUDIO_REACH_CHANGED, f"AI Studio not served where this instance's address is: {error or ''}"))
        elif row.aistudio_reach in OUT_OF_REACH:
            events.append((EventKind.AISTUDIO_REACH_CHANGED, "AI Studio reachable again"))
    if error != row.page_error:
        values["page_error"] = error
    return values, events


def _login_state(value: str) -> str:
    return value if value in LoginState._value2member_map_ else LoginState.UNKNOWN

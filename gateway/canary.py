"""The canary: per model, when the operator turns it on, a small generation every GATEWAY_CANARY_INTERVAL hours
and a free page check every GATEWAY_CANARY_CHECK_INTERVAL minutes, so a change of AI Studio's page is seen
before users see it.

- Which models: `fleet_settings` row `canary` ({"models": [...]}), set from the panel or `PUT /api/canary/{model}`.
- A generation run goes through the dispatcher like any task (`api="canary"`, so history and the account ledger
  count it): the lease picks an idle signed-in account not blocked for the model, least recently used first, so
  accounts take turns. It spends one image of that account's daily allowance. The prompt is tiny, 1:1, at the
  model's smallest size. A failure records the instance's error code as the step (ui_changed, timeout, ...).
  A quota answer, or no account able to run it, is not a page change: recorded as skipped (`ok` None).
- A check run asks an idle running signed-in instance (the one after the last checked, by name) for its page
  check (`GET /diagnose`): it passes when the check has no error and no expected role is missing.
- Every run is a `canary_runs` row. When a model's result of one kind turns from pass (or nothing yet) to fail,
  an instance event `canary_failed` is written and an alert POSTed to GATEWAY_ALERT_WEBHOOK; fail to pass writes
  `canary_recovered` and alerts too. Alerts are signed like task webhooks (X-Fleet-Signature with
  GATEWAY_WEBHOOK_SECRET), retried GATEWAY_WEBHOOK_ATTEMPTS times with doubling pauses; a failed delivery is
  logged and never stops the loop.
- `/metrics` reads the last result of each model and kind from the database at each scrape
  (`aistudio_canary_ok`, `aistudio_canary_last_run_timestamp`), so every replica shows the same.
- One loop per database: gateways sharing a Postgres elect one by an advisory lock of its own (SQLite: one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from fleet_contract import catalogue
from gateway.db.models import CanaryRun, EventKind, FleetSetting, Instance, is_available, new_event
from gateway.db.types import utcnow
from gateway.dispatcher.durable import TaskMeta
from gateway.dispatcher.inputs import GenerationRequest
from gateway.dispatcher.webhooks import post_signed
from gateway.errors import FleetError, Invalid
from gateway.instance_client import InstanceAddress, InstanceCallError, InstanceClient
from gateway.reconciler.leader import CANARY_LOCK_KEY, LeaderLock
from gateway.settings import CanarySettings

log = logging.getLogger(__name__)

SETTING_KEY = "canary"
KINDS = ("generation", "check")
PROMPT = "a small red circle on a white background"
QUOTA_CODES = frozenset({"quota_exhausted", "rate_limited", "daily_cap"})
NO_EVENT_INSTANCE = uuid.UUID(int=0)  # a failure with no instance to name (the event log needs an id)
HISTORY = 20


@dataclass
class RunView:
    model: str
    kind: str
    started_at: datetime
    ok: bool | None
    step: str | None
    message: str
    timings: dict[str, Any] | None
    instance_name: str | None
    task_id: str | None

    @property
    def state(self) -> str:
        return "pass" if self.ok else ("skipped" if self.ok is None else "fail")


@dataclass
class ModelCanary:
    """One model's canary as the panel and `GET /api/canary` show it."""

    model: str
    name: str
    enabled: bool
    last: dict[str, RunView | None] = field(default_factory=dict)  # by kind: the last run
    history: list[RunView] = field(default_factory=list)  # newest first, both kinds


def _view(row: CanaryRun) -> RunView:
    return RunView(row.model, row.kind, row.started_at, row.ok, row.step, row.message, row.timings, row.instance_name,
                   str(row.task_id) if row.task_id else None)


def known_model(model: str) -> str:
    """A current model's id, else 422 naming it."""
    spec = catalogue.load().find(model)
    if spec is None or spec.id != model or not spec.driven:
        choices = ", ".join(m.id for m in catalogue.load().driven)
        raise Invalid("model_unknown", value=str(model)[:80], choices=choices)
    return spec.id


class Canary:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: AsyncEngine,
        client: InstanceClient,
        settings: CanarySettings,
        generate: Callable[[GenerationRequest, TaskMeta], Awaitable[Any]],
        *,
        tick: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._client = client
        self._settings = settings
        self._generate = generate
        self._tick = tick
        self._leader = LeaderLock(engine, key=CANARY_LOCK_KEY, what="the canary")
        self._loop: asyncio.Task[None] | None = None
        self._alerts: set[asyncio.Task[None]] = set()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def settings(self) -> CanarySettings:
        return self._settings

    # Lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._forever(), name="canary")

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        for alert in list(self._alerts):
            alert.cancel()
        await self.alerts_settled()
        await self._leader.release()

    async def alerts_settled(self) -> None:
        if self._alerts:
            await asyncio.gather(*list(self._alerts), return_exceptions=True)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._tick)  # not at once: a gateway that restarts often does not run it each time
            try:
                if await self._leader.acquire():
                    await self.due_once()
            except Exception:  # noqa: BLE001 - a database outage; the next round tries again
                log.exception("canary pass failed")

    async def due_once(self, now: datetime | None = None) -> list[RunView]:
        """Runs what is due: each enabled model's check and generation whose last run is older than its interval."""
        now = now or utcnow()
        done = []
        for model in await self.enabled():
            for kind, every in (("check", self._settings.check_seconds), ("generation", self._settings.generation_seconds)):
                last = await self._last(model, kind)
                if last is None or (now - last.started_at).total_seconds() >= every:
                    done.append(await self.run(model, kind))
        return done

    # Which models --------------------------------------------------------------------------------

    async def enabled(self) -> list[str]:
        async with self._sessions() as session:
            row = await session.get(FleetSetting, SETTING_KEY)
        listed = (row.value or {}).get("models", []) if row else []
        return [m for m in listed if isinstance(m, str)]

    async def set_enabled(self, model: str, enabled: bool) -> bool:
        model = known_model(model)
        async with self._sessions.begin() as session:
            row = await session.get(FleetSetting, SETTING_KEY, with_for_update=True)
            models = [m for m in ((row.value or {}).get("models", []) if row else []) if m != model]
            if enabled:
                models.append(model)
            value = {"models": sorted(models)}
            if row is None:
                session.add(FleetSetting(key=SETTING_KEY, value=value, updated_at=utcnow()))
            else:
                row.value = value
        log.info("canary of %s turned %s", model, "on" if enabled else "off")
        return enabled

    # Reads ---------------------------------------------------------------------------------------

    async def overview(self, *, history: int = HISTORY) -> list[ModelCanary]:
        """Every current model, enabled or not, with its last results and recent runs."""
        enabled = set(await self.enabled())
        found = []
        for spec in catalogue.load().driven:
            runs = await self.history(spec.id, limit=history)
            last = {kind: next((r for r in runs if r.kind == kind), None) for kind in KINDS}
            for kind in KINDS:  # the newest of a kind may be older than the shown history
                if last[kind] is None:
                    last[kind] = await self._last(spec.id, kind)
            found.append(ModelCanary(spec.id, spec.name, spec.id in enabled, last, runs))
        return found

    async def history(self, model: str, *, limit: int = HISTORY) -> list[RunView]:
        statement = select(CanaryRun).where(CanaryRun.model == model).order_by(CanaryRun.id.desc()).limit(limit)
        async with self._sessions() as session:
            return [_view(r) for r in (await session.scalars(statement)).all()]

    async def latest(self) -> list[RunView]:
        """The last decided (pass or fail) run of each model and kind: what `/metrics` shows."""
        found = []
        for spec in catalogue.load().driven:
            for kind in KINDS:
                last = await self._last(spec.id, kind, decided=True)
                if last is not None:
                    found.append(last)
        return found

    async def _last(self, model: str, kind: str, *, decided: bool = False) -> RunView | None:
        statement = select(CanaryRun).where(CanaryRun.model == model, CanaryRun.kind == kind)
        if decided:
            statement = statement.where(CanaryRun.ok.is_not(None))
        async with self._sessions() as session:
            row = await session.scalar(statement.order_by(CanaryRun.id.desc()).limit(1))
        return _view(row) if row is not None else None

    # Runs ----------------------------------------------------------------------------------------

    async def run(self, model: str, kind: str) -> RunView:
        """One run now (the loop, or "run now"); one at a time per model and kind in this gateway."""
        model = known_model(model)
        if kind not in KINDS:
            raise Invalid("canary_kind_unknown", value=str(kind)[:20], choices=", ".join(KINDS))
        lock = self._locks.setdefault((model, kind), asyncio.Lock())
        async with lock:
            started = utcnow()
            outcome = await (self._generation(model) if kind == "generation" else self._check())
            return await self._record(model, kind, started, outcome)

    async def _generation(self, model: str) -> dict[str, Any]:
        spec = catalogue.load().find(model)
        assert spec is not None
        ratio = "1:1" if not spec.aspect_ratios or "1:1" in spec.aspect_ratios else spec.aspect_ratios[0]
        request = GenerationRequest(prompt=PROMPT, aspect_ratio=ratio, model=model,
                                    image_size=spec.image_sizes[0] if spec.image_sizes else None)
        began = time.monotonic()
        try:
            result = await self._generate(request, TaskMeta(api="canary"))
        except FleetError as exc:  # no account can take it now (none running, all blocked or spent, queue full)
            return {"ok": None, "step": f"skipped: {exc.key}", "message": str(exc.params or ""),
                    "timings": {"total": round(time.monotonic() - began, 3)}}
        timings = dict(result.timings or {})
        timings.setdefault("total", round(time.monotonic() - began, 3))
        common = {"timings": timings, "instance_name": result.instance_name, "task_id": result.task_id}
        if result.succeeded:
            return {"ok": True, "step": None, "message": f"{len(result.images_b64) or 1} image(s)", **common}
        code = result.error_code or "failed"
        if code in QUOTA_CODES:
            return {"ok": None, "step": "skipped: no allowance", "message": result.error_message or code, **common}
        return {"ok": False, "step": code, "message": (result.error_message or "")[:2000], **common}

    async def _check(self) -> dict[str, Any]:
        target = await self._check_target()
        if target is None:
            return {"ok": None, "step": "skipped: no idle instance", "message": ""}
        name, address = target
        began = time.monotonic()
        try:
            check = await self._client.diagnose(address)
        except InstanceCallError as exc:
            return {"ok": False, "step": "no_answer", "message": str(exc)[:2000], "instance_name": name,
                    "timings": {"total": round(time.monotonic() - began, 3)}}
        timings = {"total": round(time.monotonic() - began, 3)}
        missing = list(check.missing_expected)
        if check.error:
            await self._keep_page(address, name)
            return {"ok": False, "step": "check_error", "message": check.error[:2000], "instance_name": name, "timings": timings}
        if missing:
            await self._keep_page(address, name)
            return {"ok": False, "step": "missing_roles", "message": ", ".join(missing), "instance_name": name, "timings": timings}
        roles = len(check.roles)
        return {"ok": True, "step": None, "message": f"{roles} roles found", "instance_name": name, "timings": timings}

    async def _keep_page(self, address: InstanceAddress, name: str) -> None:
        """A failed check leaves a copy of the page (the instance's snapshot), for the selectors override; a
        failed generation with ui_changed leaves one by itself."""
        try:
            await self._client.take_snapshot(address, "canary")
        except InstanceCallError as exc:  # the check's result stands without its copy
            log.warning("canary: no page snapshot from %s: %s", name, exc)

    async def _check_target(self) -> tuple[str, InstanceAddress] | None:
        """An idle instance that could take a task, the one after the last checked (by name), so they take turns."""
        now = utcnow()
        async with self._sessions() as session:
            rows = (await session.execute(
                select(Instance.name, Instance.endpoint, Instance.token).where(is_available(now)).order_by(Instance.name)
            )).all()
            last = await session.scalar(
                select(CanaryRun.instance_name).where(CanaryRun.kind == "check", CanaryRun.instance_name.is_not(None))
                .order_by(CanaryRun.id.desc()).limit(1)
            )
        if not rows:
            return None
        chosen = next((r for r in rows if last is not None and r.name > last), rows[0])
        return chosen.name, InstanceAddress(chosen.endpoint, chosen.token)

    async def _record(self, model: str, kind: str, started: datetime, outcome: dict[str, Any]) -> RunView:
        previous = await self._last(model, kind, decided=True)
        ok = outcome.get("ok")
        task_id = outcome.get("task_id")
        row = CanaryRun(
            model=model, kind=kind, started_at=started, ok=ok, step=outcome.get("step"), message=outcome.get("message") or "",
            timings=outcome.get("timings"), instance_name=outcome.get("instance_name"),
            task_id=uuid.UUID(str(task_id)) if task_id else None,
        )
        change = None
        if ok is False and (previous is None or previous.ok):
            change = EventKind.CANARY_FAILED
        elif ok is True and previous is not None and previous.ok is False:
            change = EventKind.CANARY_RECOVERED
        async with self._sessions.begin() as session:
            session.add(row)
            if change is not None:
                instance_id, name = await self._instance_named(session, row.instance_name)
                what = "failed" if change == EventKind.CANARY_FAILED else "passes again"
                detail = f": {row.step} {row.message}".rstrip() if ok is False else ""
                session.add(new_event(instance_id, name, change, f"canary {kind} of {model} {what}{detail}"[:2000]))
        view = _view(row)
        if change is not None:
            log.warning("canary %s of %s: %s (%s)", kind, model, view.state, view.step or view.message)
            self._alert(view)
        return view

    @staticmethod
    async def _instance_named(session: AsyncSession, name: str | None) -> tuple[uuid.UUID, str]:
        if name:
            found = await session.scalar(select(Instance.id).where(Instance.name == name))
            if found is not None:
                return found, name
        return NO_EVENT_INSTANCE, name or "canary"

    # Alerts --------------------------------------------------------------------------------------

    def _alert(self, run: RunView) -> None:
        url = self._settings.alert_webhook
        if not url:
            return
        payload = {
            "event": "canary_failed" if run.ok is False else "canary_recovered",
            "model": run.model, "kind": run.kind, "ok": run.ok, "step": run.step, "message": run.message,
            "instance": run.instance_name, "time": run.started_at.isoformat(timespec="seconds"),
        }
        delivery = asyncio.create_task(self._deliver(url, payload), name=f"canary-alert-{run.model}")
        self._alerts.add(delivery)
        delivery.add_done_callback(self._alerts.discard)

    async def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        hooks = self._settings.webhooks
        body = json.dumps(payload, ensure_ascii=False).encode()
        pause = hooks.backoff
        try:
            async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=hooks.timeout) as client:
                for number in range(1, hooks.attempts + 1):
                    outcome = await post_signed(client, url, body, hooks.secret_value, allow_private=hooks.fetch_private_addresses,
                                                headers={"X-Fleet-Event": payload["event"]}, user_agent="aistudio-fleet-alert")
                    if outcome.get("ok"):
                        return
                    log.warning("canary alert attempt %d not delivered: %s", number, outcome.get("error") or outcome.get("status"))
                    if number < hooks.attempts:
                        await asyncio.sleep(pause)
                        pause *= 2
        except Exception:  # noqa: BLE001 - an alert that cannot go out is logged, never raised into the loop
            log.exception("canary alert delivery failed")
            return
        log.error("canary alert (%s of %s) not delivered after %d attempts", payload["kind"], payload["model"], hooks.attempts)


def run_out(run: RunView) -> dict[str, Any]:
    return {
        "model": run.model, "kind": run.kind, "state": run.state, "ok": run.ok, "step": run.step, "message": run.message,
        "started_at": run.started_at.isoformat(), "timings": run.timings, "instance": run.instance_name, "task_id": run.task_id,
    }


__all__ = ["Canary", "ModelCanary", "RunView", "known_model", "run_out"]

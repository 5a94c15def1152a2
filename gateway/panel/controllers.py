"""The admin panel's handlers: pages, their htmx fragments, actions and live streams.

Every handler calls the same services as the management API; a page and its fragments are one template
(jinja2-fragments renders a block of it for htmx and for live updates).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jinja2_fragments.litestar import HTMXBlockTemplate
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import FromPath, FromQuery
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Redirect, ServerSentEvent, ServerSentEventMessage, Template
from markupsafe import escape

from gateway.accounts.usage import UsageReader
from gateway.api.errors import LANGUAGE_COOKIE, describe_error, request_language
from gateway.db.types import utcnow
from gateway.errors import FleetError, Invalid
from gateway.i18n import LANGUAGES, translate
from gateway.panel.auth import SESSION_COOKIE, AdminAuth, LoginRequired, safe_next
from gateway.panel.live import PoolSnapshot, PoolWatcher
from gateway.panel.rendering import render_fragment
from gateway.services.history import OUTCOMES, TaskHistoryService
from gateway.services.instances import PACING_FIELDS, InstanceService, pacing_message, proxy_message, regional_message
from gateway.services.proxies import ProxyTester

# How often a quiet live stream wakes: to look for new events, and to notice a viewer who left.
HEARTBEAT_SECONDS = 2.0
EVENTS_SHOWN = 50
TASKS_SHOWN = 200
LOG_DOWNLOAD_LINES = 20_000


def provide_instances(state: State) -> InstanceService:
    return state.fleet.instances


def provide_history(state: State) -> TaskHistoryService:
    return state.fleet.history


def provide_proxies(state: State) -> ProxyTester:
    tester = state.fleet.proxies
    assert tester is not None, "Fleet.open sets it"
    return tester


def provide_usage(state: State) -> UsageReader:
    return state.fleet.usage


def provide_watcher(state: State) -> PoolWatcher:
    return state.pool_watcher


def provide_auth(state: State) -> AdminAuth:
    return state.panel_auth


DEPENDENCIES = {
    "instances": Provide(provide_instances, sync_to_thread=False),
    "history": Provide(provide_history, sync_to_thread=False),
    "watcher": Provide(provide_watcher, sync_to_thread=False),
    "auth": Provide(provide_auth, sync_to_thread=False),
    "proxies": Provide(provide_proxies, sync_to_thread=False),
    "usage": Provide(provide_usage, sync_to_thread=False),
}


def context(request: Request[Any, Any, Any], **values: Any) -> dict[str, Any]:
    """What every template gets: the reader's language, whether sign-in is on, the time now."""
    return {
        "lang": request_language(request),
        "auth_required": request.app.state.panel_auth.required,
        "now": utcnow(),
        "path": request.url.path,
        **values,
    }


def pool_context(snapshot: PoolSnapshot) -> dict[str, Any]:
    return {"instances": snapshot.instances, "stats": snapshot.stats, "running_tasks": snapshot.running_tasks}


def page(request: HTMXRequest, template: str, values: dict[str, Any], *, block: str | None = None, status: int = 200) -> Template:
    """The whole page, or only `block` of it when htmx asks (the same template either way)."""
    # A history restore (back button) needs the whole page, though htmx asks for it.
    fragment = bool(request.htmx) and not request.htmx.history_restore_request
    return HTMXBlockTemplate(
        template_name=template, context=context(request, **values), block_name=block if fragment else None,
        status_code=status,
    )


def flash(request: Request[Any, Any, Any], message: str, *, ok: bool = True, status: int = 200, headers: dict[str, str] | None = None) -> Template:
    """A message in the page's message area (base.html's `flash` block)."""
    return HTMXBlockTemplate(
        template_name="base.html", block_name="flash", status_code=status, headers=headers or {},
        context=context(request, flash={"ok": ok, "message": message}),
    )


def said(request: Request[Any, Any, Any], key: str, **params: Any) -> str:
    return translate(key, request_language(request), **params)


# Pages -------------------------------------------------------------------------------------------


class PagesController(Controller):
    dependencies = DEPENDENCIES
    include_in_schema = False

    @get("/", name="panel:overview")
    async def overview(self, request: HTMXRequest, watcher: NamedDependency[PoolWatcher], proxies: NamedDependency[ProxyTester]) -> Template:
        snapshot = await watcher.current()
        # A default proxy on this machine's loopback that this engine's instances cannot reach: say so and what to do.
        problem = proxies.default_problem(request_language(request))
        return page(request, "overview.html", {**pool_context(snapshot), "default_proxy_problem": problem}, block="pool")

    @get("/instances/{instance_id:str}", name="panel:instance")
    async def instance(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        view = await instances.get(instance_id)
        snapshot = await watcher.current()
        values = {
            "inst": view,
            "task": snapshot.running_tasks.get(view.instance_id),
            "events": await instances.events(instance_id, limit=EVENTS_SHOWN),
            "others": [v for v in snapshot.instances if v.instance_id != view.instance_id and v.status == "running"],
        }
        return page(request, "instance.html", values, block="summary")

    @get("/tasks", name="panel:tasks")
    async def tasks(
        self, request: HTMXRequest, history: NamedDependency[TaskHistoryService], watcher: NamedDependency[PoolWatcher],
        outcome: FromQuery[str | None] = None, instance_id: FromQuery[str | None] = None,
    ) -> Template:
        outcome, instance_id = outcome or None, instance_id or None
        tasks = await history.recent(limit=TASKS_SHOWN, outcome=outcome, instance_id=instance_id)
        query = urlencode({k: v for k, v in (("outcome", outcome), ("instance_id", instance_id)) if v})
        values = {
            "tasks": tasks, "outcome": outcome, "instance_id": instance_id, "outcomes": OUTCOMES,
            "instances": (await watcher.current()).instances, "self_url": "/tasks" + (f"?{query}" if query else ""),
        }
        return page(request, "tasks.html", values, block="tasks")

    @get("/accounts", name="panel:accounts")
    async def accounts(self, request: HTMXRequest, usage: NamedDependency[UsageReader]) -> Template:
        return page(request, "accounts.html", {"report": await usage.report()}, block="usage")

    @get("/instances/{instance_id:str}/logs.txt", name="panel:logs-download")
    async def logs_download(self, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Response[str]:
        view = await instances.get(instance_id)
        lines = await instances.logs(instance_id, tail=LOG_DOWNLOAD_LINES)
        filename = quote(f"{view.name}-{utcnow():%Y%m%d-%H%M%S}.log")
        headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{filename}", "Cache-Control": "no-store"}
        return Response("\n".join(lines) + "\n", media_type="text/plain; charset=utf-8", headers=headers)


# Actions -----------------------------------------------------------------------------------------


class ActionsController(Controller):
    """Each action answers with a message; the live stream shows the state that follows."""

    dependencies = DEPENDENCIES
    include_in_schema = False

    @post("/instances", name="panel:create")
    async def create(self, request: HTMXRequest, instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        view = await instances.create(str(form.get("name") or ""), str(form.get("proxy") or "") or None)
        watcher.poke()
        return flash(request, said(request, "instance_created", name=view.name))

    @post("/instances/{instance_id:str}/start", name="panel:start")
    async def start(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        view, changed = await instances.start(instance_id)
        watcher.poke()
        return flash(request, said(request, "instance_start_requested" if changed else "instance_already_running", name=view.name))

    @post("/instances/{instance_id:str}/stop", name="panel:stop")
    async def stop(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        view, changed = await instances.stop(instance_id)
        watcher.poke()
        return flash(request, said(request, "instance_stop_requested" if changed else "instance_already_stopped", name=view.name))

    @delete("/instances/{instance_id:str}", name="panel:delete", status_code=200)
    async def delete(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        view = await instances.delete(instance_id)
        watcher.poke()
        # Deleted from its own page: nothing is left to show there.
        on_its_page = urlsplit(request.htmx.current_url or "").path.startswith(f"/instances/{view.instance_id}")
        return flash(request, said(request, "instance_deleted", name=view.name), headers={"HX-Redirect": "/"} if on_its_page else None)

    @post("/instances/{instance_id:str}/proxy", name="panel:proxy")
    async def set_proxy(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        # The "clear" button sends an empty proxy: back to the fleet default.
        view, _changed = await instances.set_proxy(instance_id, str(form.get("proxy") or ""))
        watcher.poke()
        key, params = proxy_message(view)
        return flash(request, said(request, key, **params))

    @post("/instances/{instance_id:str}/regional", name="panel:regional")
    async def set_regional(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        # Both fields are sent (prefilled with its own values): an emptied one goes back to the fleet default.
        changes = {name: str(form.get(name) or "").strip() or None for name in ("timezone", "locale")}
        view, _changed = await instances.set_regional(instance_id, changes)
        watcher.poke()
        key, params = regional_message(view)
        return flash(request, said(request, key, **params))

    @post("/instances/{instance_id:str}/pacing", name="panel:pacing")
    async def set_pacing(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        # Both fields are sent (prefilled with its own values): an emptied one goes back to the fleet's.
        changes = {name: str(form.get(name) or "") for name in PACING_FIELDS}
        view, _changed = await instances.set_pacing(instance_id, changes)
        watcher.poke()
        return flash(request, pacing_message(view, request_language(request)))

    @post("/proxies/test", name="panel:proxy-test")
    async def test_proxy(self, request: HTMXRequest, proxies: NamedDependency[ProxyTester]) -> Template:
        form = await request.form()
        # A URL typed in the field is tested before it is saved; an empty field tests what is in use.
        typed = str(form.get("proxy") or "").strip() or None
        instance_id = None if typed else (str(form.get("instance_id") or "") or None)
        result = await proxies.test(request_language(request), proxy=typed, instance_id=instance_id)
        return flash(request, result.message, ok=result.success)

    @post("/instances/{instance_id:str}/navigate", name="panel:navigate")
    async def navigate(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService]) -> Template:
        form = await request.form()
        await instances.navigate(instance_id, target=str(form.get("target") or ""))
        view = await instances.get(instance_id)
        return flash(request, said(request, "instance_navigated", name=view.name))

    @post("/instances/{instance_id:str}/session", name="panel:session-import")
    async def import_session(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        upload = form.get("file")
        body = await upload.read() if isinstance(upload, UploadFile) else b""
        if not body:
            raise Invalid("session_file_missing")
        result = await instances.import_session(instance_id, body, origin="through the panel")
        view = await instances.get(instance_id)
        watcher.poke()
        key = "session_stored" if result.get("pending") else "session_imported"  # a stopped instance gets it at its start
        message = said(request, key, name=view.name, cookies=result.get("cookies", "?"), login_state=result.get("login_state", "unknown"))
        return flash(request, message)

    @post("/instances/{instance_id:str}/session/restore", name="panel:session-restore")
    async def restore_session(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        result = await instances.restore_session(instance_id)
        view = await instances.get(instance_id)
        watcher.poke()
        return flash(request, said(request, "session_restored", name=view.name, login_state=result["login_state"]))

    @post("/instances/{instance_id:str}/session/copy", name="panel:session-copy")
    async def copy_session(self, request: HTMXRequest, instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        form = await request.form()
        source_id = str(form.get("source") or "")
        result = await instances.copy_session(source_id, instance_id)
        source, target = await instances.get(source_id), await instances.get(instance_id)
        watcher.poke()
        message = said(
            request, "session_copied", source=source.name, name=target.name,
            cookies=result.get("cookies", "?"), login_state=result.get("login_state", "unknown"),
        )
        return flash(request, message)


# Live updates ------------------------------------------------------------------------------------


class LiveController(Controller):
    """Server-sent events carrying re-rendered blocks of the open page; htmx swaps them in."""

    path = "/live"
    dependencies = DEPENDENCIES
    include_in_schema = False

    @get("/pool", name="panel:live-pool")
    async def pool(self, request: Request[Any, Any, Any], watcher: NamedDependency[PoolWatcher]) -> ServerSentEvent:
        return ServerSentEvent(_pool_stream(request, watcher), headers={"Cache-Control": "no-store"})

    @get("/instances/{instance_id:str}", name="panel:live-instance")
    async def instance(self, request: Request[Any, Any, Any], instance_id: FromPath[str], instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> ServerSentEvent:
        view = await instances.get(instance_id)  # an unknown id is a 404 now, not a stream that ends at once
        return ServerSentEvent(_instance_stream(request, view.instance_id, instances, watcher), headers={"Cache-Control": "no-store"})


async def _pool_stream(request: Request[Any, Any, Any], watcher: PoolWatcher) -> AsyncIterator[ServerSentEventMessage]:
    engine = request.app.template_engine
    async for snapshot in watcher.watch(HEARTBEAT_SECONDS):
        if snapshot is None:
            yield ServerSentEventMessage(comment="idle")
            continue
        html = render_fragment(engine, "overview.html", "pool", context(request, **pool_context(snapshot)))
        yield ServerSentEventMessage(data=html, event="pool")


async def _instance_stream(
    request: Request[Any, Any, Any], instance_id: str, instances: InstanceService, watcher: PoolWatcher
) -> AsyncIterator[ServerSentEventMessage]:
    engine = request.app.template_engine
    shown_view: Any = None
    shown_event: int | None = None
    async for snapshot in watcher.watch(HEARTBEAT_SECONDS):
        if snapshot is not None:
            view = snapshot.instance(instance_id)
            if view is None:
                yield ServerSentEventMessage(data=str(escape(said(request, "instance_not_found", instance_id=instance_id))), event="gone")
                return
            if view != shown_view:
                shown_view = view
                values = context(request, inst=view, task=snapshot.running_tasks.get(instance_id))
                yield ServerSentEventMessage(data=render_fragment(engine, "instance.html", "summary", values), event="summary")
        events = await _events_or_none(instances, instance_id)
        newest = events[0].id if events else None
        if events is not None and newest != shown_event:
            shown_event = newest
            values = context(request, events=events)
            yield ServerSentEventMessage(data=render_fragment(engine, "instance.html", "events", values), event="events")
        elif snapshot is None:
            yield ServerSentEventMessage(comment="idle")


async def _events_or_none(instances: InstanceService, instance_id: str) -> list[Any] | None:
    try:
        return await instances.events(instance_id, limit=EVENTS_SHOWN)
    except FleetError:
        return None


# Signing in and preferences ----------------------------------------------------------------------


class SessionController(Controller):
    dependencies = {"auth": Provide(provide_auth, sync_to_thread=False)}
    include_in_schema = False

    @get("/login", name="panel:login")
    async def login_form(self, request: HTMXRequest, auth: NamedDependency[AdminAuth], next: FromQuery[str] = "/") -> Template | Redirect:
        if not auth.required:
            return Redirect(safe_next(next))
        return page(request, "login.html", {"next": safe_next(next), "failed": False})

    @post("/login", name="panel:login-submit")
    async def login(self, request: HTMXRequest, auth: NamedDependency[AdminAuth]) -> Template | Redirect:
        form = await request.form()
        target = safe_next(form.get("next"))
        if not auth.required:
            return Redirect(target)
        if not auth.token_matches(str(form.get("token") or "")):
            await asyncio.sleep(0.5)  # slows down guessing
            return page(request, "login.html", {"next": target, "failed": True}, status=401)
        response = Redirect(target)
        response.cookies.append(await auth.new_session(secure=request.url.scheme == "https"))
        return response

    @post("/logout", name="panel:logout")
    async def logout(self, request: Request[Any, Any, Any], auth: NamedDependency[AdminAuth]) -> Redirect:
        await auth.end_session(request.cookies.get(SESSION_COOKIE))
        response = Redirect("/login")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @post("/lang", name="panel:language")
    async def language(self, request: Request[Any, Any, Any]) -> Redirect:
        form = await request.form()
        choice = str(form.get("lang") or "")
        response = Redirect(safe_next(form.get("next")))
        if choice in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, choice, max_age=365 * 86400, samesite="strict", path="/")
        return response


# Errors ------------------------------------------------------------------------------------------


def panel_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Errors on panel paths: sign-in for a missing session, else the message, in the page or as one."""
    htmx = request.headers.get("hx-request") == "true"
    if isinstance(exc, LoginRequired):
        target = "/login?" + urlencode({"next": request.url.path})
        if htmx:
            return Response(b"", status_code=401, headers={"HX-Redirect": target})
        return Redirect(target)
    answer = describe_error(request, exc)
    message = answer.message(request_language(request))
    if htmx:
        headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML", **answer.headers}
        return flash(request, message, ok=False, status=answer.status_code, headers=headers)
    return HTMXBlockTemplate(
        template_name="error.html", context=context(request, message=message, status=answer.status_code),
        status_code=answer.status_code, headers=answer.headers,
    )


# Every class the app maps to JSON, so that on panel paths the nearest handler is this one.
PANEL_EXCEPTION_HANDLERS = {FleetError: panel_error, ValidationException: panel_error, HTTPException: panel_error, Exception: panel_error}
PANEL_CONTROLLERS = [PagesController, ActionsController, LiveController, SessionController]

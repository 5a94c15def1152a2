"""The management API on the admin listener (:8813): thin handlers over the instance service and the account
ledger's reads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from gateway.accounts.usage import UsageReader
from gateway.api.errors import request_language
from gateway.api.schemas import (
    AccountsUsageOut,
    CreateInstanceIn,
    CreateInstanceOut,
    DeleteInstanceOut,
    EventsOut,
    InstanceActionOut,
    InstanceListOut,
    InstanceOut,
    InstanceUsageOut,
    LogsOut,
    ProxyTestIn,
    SessionImportOut,
    StatsOut,
    UpdateInstanceIn,
)
from gateway.db.models import Status
from gateway.errors import BadRequest, FleetError, TooLarge
from gateway.i18n import translate
from gateway.services.instances import (
    InstanceService,
    pacing_message,
    proxy_message,
    regional_message,
    valid_pacing,
    valid_regional,
)
from gateway.services.proxies import ProxyTester, ProxyTestView


def provide_instances(state: State) -> InstanceService:
    return state.fleet.instances


def provide_language(request: Request[Any, Any, Any]) -> str:
    return request_language(request)


def provide_usage(state: State) -> UsageReader:
    return state.fleet.usage


def provide_max_session_bytes(state: State) -> int:
    return state.settings.sessions.max_session_bytes


Instances = NamedDependency[InstanceService]
Language = NamedDependency[str]
Usage = NamedDependency[UsageReader]
InstanceId = FromPath[str]

DEPENDENCIES = {
    "instances": Provide(provide_instances, sync_to_thread=False),
    "language": Provide(provide_language, sync_to_thread=False),
    "usage": Provide(provide_usage, sync_to_thread=False),
}


class InstanceController(Controller):
    path = "/api/instances"
    tags = ["instances"]
    dependencies = DEPENDENCIES

    @get("/", operation_id="listInstances", summary="All instances, oldest first")
    async def list_instances(self, instances: Instances) -> InstanceListOut:
        views = await instances.list()
        running = sum(1 for v in views if v.status == Status.RUNNING)
        return InstanceListOut(instances=views, concurrency_count=running, total_count=len(views))

    @post("/", operation_id="createInstance", status_code=200, summary="Create a stopped instance")
    async def create_instance(self, data: JSONBody[CreateInstanceIn], instances: Instances, language: Language) -> CreateInstanceOut:
        session = msgspec.json.encode(data.session) if data.session is not None else None
        view = await instances.create(data.name, data.proxy, legacy_id=data.legacy_id, session=session,
                                      timezone=data.timezone, locale=data.locale)
        message = translate("instance_created", language, name=view.name)
        return CreateInstanceOut(instance_id=view.instance_id, message=message, instance=view)

    @get("/{instance_id:str}", operation_id="getInstance")
    async def get_instance(self, instance_id: InstanceId, instances: Instances) -> InstanceOut:
        return InstanceOut(instance=await instances.get(instance_id))

    @patch("/{instance_id:str}", operation_id="updateInstance",
           summary="Change its egress proxy, time zone or locale (from its next start), or its pacing (from its next task)")
    async def update_instance(
        self, instance_id: InstanceId, data: JSONBody[UpdateInstanceIn], instances: Instances, language: Language
    ) -> InstanceActionOut:
        regional, pacing = data.regional(), data.pacing()
        if data.proxy is msgspec.UNSET and not regional and not pacing:
            raise BadRequest("instance_update_empty")
        # A bad field refuses all of them: nothing is stored.
        valid_regional(regional.get("timezone"), regional.get("locale"))
        valid_pacing(pacing)
        messages, changed = [], False
        if data.proxy is not msgspec.UNSET:
            view, changed = await instances.set_proxy(instance_id, data.proxy)
            key, params = proxy_message(view)
            messages.append(translate(key, language, **params))
        if regional:
            view, regional_changed = await instances.set_regional(instance_id, regional)
            changed = changed or regional_changed
            key, params = regional_message(view)
            messages.append(translate(key, language, **params))
        if pacing:
            view, pacing_changed = await instances.set_pacing(instance_id, pacing)
            changed = changed or pacing_changed
            messages.append(pacing_message(view, language))
        return InstanceActionOut(message=" ".join(messages), changed=changed, instance=view)

    @get("/{instance_id:str}/usage", operation_id="getInstanceUsage",
         summary="Its account's day per model: made, learned capacity, left, blocked until and why")
    async def get_usage(self, instance_id: InstanceId, usage: Usage, model: FromQuery[str | None] = None) -> InstanceUsageOut:
        report = await usage.report(instance_id=instance_id, model=model or None)
        (account,) = report.accounts
        return InstanceUsageOut(
            now=report.now, day=report.day, next_reset=report.next_reset, usage_days=report.usage_days,
            instance_id=account.instance_id, name=account.name, pace_seconds=account.pace_seconds,
            daily_cap=account.daily_cap, models=account.models,
        )

    @delete("/{instance_id:str}", operation_id="deleteInstance", status_code=200, summary="Delete a stopped instance")
    async def delete_instance(self, instance_id: InstanceId, instances: Instances, language: Language) -> DeleteInstanceOut:
        view = await instances.delete(instance_id)
        message = translate("instance_deleted", language, name=view.name)
        return DeleteInstanceOut(instance_id=view.instance_id, message=message)

    @post("/{instance_id:str}/start", operation_id="startInstance", status_code=200, summary="Ask for running; idempotent")
    async def start_instance(self, instance_id: InstanceId, instances: Instances, language: Language) -> InstanceActionOut:
        view, changed = await instances.start(instance_id)
        key = "instance_start_requested" if changed else "instance_already_running"
        return InstanceActionOut(message=translate(key, language, name=view.name), changed=changed, instance=view)

    @post("/{instance_id:str}/stop", operation_id="stopInstance", status_code=200, summary="Ask for stopped; idempotent")
    async def stop_instance(self, instance_id: InstanceId, instances: Instances, language: Language) -> InstanceActionOut:
        view, changed = await instances.stop(instance_id)
        key = "instance_stop_requested" if changed else "instance_already_stopped"
        return InstanceActionOut(message=translate(key, language, name=view.name), changed=changed, instance=view)

    @get("/{instance_id:str}/events", operation_id="listInstanceEvents", summary="What happened to it, newest first")
    async def list_events(
        self, instance_id: InstanceId, instances: Instances, limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100
    ) -> EventsOut:
        return EventsOut(instance_id=instance_id, events=await instances.events(instance_id, limit=limit))

    @get("/{instance_id:str}/logs", operation_id="getInstanceLogs", summary="Container logs; follow=1 streams them as SSE")
    async def get_logs(
        self,
        instance_id: InstanceId,
        instances: Instances,
        language: Language,
        tail: Annotated[int, QueryParameter(ge=0, le=100_000)] = 200,
        follow: FromQuery[bool] = False,
    ) -> Response[Any]:
        if not follow:
            return Response(LogsOut(instance_id=instance_id, lines=await instances.logs(instance_id, tail=tail)))
        lines = await instances.follow_logs(instance_id, tail=tail)
        return ServerSentEvent(_log_events(lines, language))

    @get("/{instance_id:str}/session", operation_id="exportInstanceSession", summary="The instance's storage state")
    async def export_session(self, instance_id: InstanceId, instances: Instances) -> Response[bytes]:
        body = await instances.export_session(instance_id)
        return Response(body, media_type=MediaType.JSON, headers={"Cache-Control": "no-store"})

    @put(
        "/{instance_id:str}/session",
        operation_id="importInstanceSession",
        summary="Storage state, a cookie list or an extension export, passed to the instance",
        dependencies={"max_bytes": Provide(provide_max_session_bytes, sync_to_thread=False)},
    )
    async def import_session(
        self, instance_id: InstanceId, request: Request[Any, Any, Any], instances: Instances, language: Language, max_bytes: NamedDependency[int]
    ) -> SessionImportOut:
        body = await _read_limited(request, max_bytes)
        result = await instances.import_session(instance_id, body)
        view = await instances.get(instance_id)
        cookies = result.get("cookies") if isinstance(result.get("cookies"), int) else None
        login_state = str(result.get("login_state", "unknown"))
        pending = result.get("pending") is True
        key = "session_stored" if pending else "session_imported"
        message = translate(key, language, name=view.name, cookies=cookies, login_state=login_state)
        return SessionImportOut(message=message, cookies=cookies, login_state=login_state, pending=pending)


class AccountsController(Controller):
    path = "/api/accounts"
    tags = ["accounts"]
    dependencies = DEPENDENCIES

    @get("/usage", operation_id="getAccountsUsage",
         summary="Every account's day per model (made, learned capacity, left, blocked until and why) and the pool's totals")
    async def get_usage(self, usage: Usage, model: FromQuery[str | None] = None) -> AccountsUsageOut:
        report = await usage.report(model=model or None)
        return AccountsUsageOut(
            now=report.now, day=report.day, next_reset=report.next_reset, usage_days=report.usage_days,
            models=report.models, accounts=report.accounts, pool=report.pool,
        )


class StatsController(Controller):
    path = "/api/stats"
    tags = ["instances"]
    dependencies = DEPENDENCIES

    @get("/", operation_id="getStats", summary="Counts of the pool: total, running, available, busy, ...")
    async def get_stats(self, instances: Instances) -> StatsOut:
        return StatsOut(stats=await instances.stats())


async def _read_limited(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` (not after reading all of it)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge("session_too_large", size=int(declared), limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge("session_too_large", size=f">{limit}", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _log_events(lines: AsyncIterator[str], language: str) -> AsyncIterator[ServerSentEventMessage]:
    try:
        async for line in lines:
            yield ServerSentEventMessage(data=line, event="log")
    except FleetError as exc:
        yield ServerSentEventMessage(data=translate(exc.key, language, **exc.params), event="error")
        return
    except Exception as exc:  # the engine failed mid-stream; the stream ends with a readable reason
        yield ServerSentEventMessage(data=f"{type(exc).__name__}: {exc}", event="error")
        return
    yield ServerSentEventMessage(data="", event="end")


def provide_proxy_tester(state: State) -> ProxyTester:
    tester = state.fleet.proxies
    assert tester is not None, "Fleet.open sets it"
    return tester


class ProxyController(Controller):
    path = "/api/proxies"
    tags = ["instances"]
    dependencies = {**DEPENDENCIES, "proxies": Provide(provide_proxy_tester, sync_to_thread=False)}

    @post(
        "/test", operation_id="testProxy", status_code=200,
        summary="Connect through a proxy as the instances would; success, latency, exit address or the error",
    )
    async def test_proxy(
        self, data: JSONBody[ProxyTestIn], proxies: NamedDependency[ProxyTester], language: Language
    ) -> ProxyTestView:
        return await proxies.test(language, proxy=data.proxy, instance_id=data.instance_id)


MANAGEMENT_CONTROLLERS = [InstanceController, AccountsController, StatsController, ProxyController]

"""One place wires the gateway: the Fleet (settings, database, runtime, services, reconciler, dispatcher) and
its two apps."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.plugins import PluginProtocol
from litestar.plugins.htmx import HTMXPlugin
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.accounts.usage import UsageReader
from gateway.api.bodies import BodyGuardPlugin
from gateway.api.console import CONSOLE_CONTROLLERS
from gateway.api.docs import docs_assets, openapi_config
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.anthropic_messages import anthropic_router
from gateway.api.gemini import gemini_router
from gateway.api.generation import generation_router
from gateway.api.health import HealthController
from gateway.api.probes import ProbesController
from gateway.api.hosts import AllowedHostsPlugin
from gateway.api.history import HISTORY_CONTROLLERS
from gateway.api.management import MANAGEMENT_CONTROLLERS
from gateway.api.metrics import MetricsController
from gateway.api.openai_face import openai_router
from gateway.api.page_headers import PageHeadersPlugin
from gateway.api.catalogue import CATALOGUE_CONTROLLERS
from gateway.api.selectors import SELECTORS_CONTROLLERS
from gateway.api.canary import CANARY_CONTROLLERS
from gateway.canary import Canary
from gateway.api.snapshots import SNAPSHOT_CONTROLLERS
from gateway.db.engine import create_db_engine, create_sessionmaker
from gateway.db.migrate import prepare_schema
from gateway.db.sealed_rows import check_key
from gateway.db.sealing import attach, box_for
from gateway.db.types import utcnow
from gateway.dispatcher import Dispatcher
from gateway.dispatcher.ledger import Clock
from gateway.panel.plugin import PanelPlugin
from gateway.reconciler import Reconciler
from gateway.reconciler.leader import LeaderLock
from gateway.runtime import Runtime, RuntimeUnavailable, build_runtime
from gateway.runtime.health import EngineHealth
from gateway.services.history import TaskHistoryService
from gateway.instance_client import InstanceClient
from gateway.services.instances import InstanceService
from gateway.services.proxies import ProxyTester
from gateway.retention import Retention
from gateway.services.catalogue import CatalogueService
from gateway.services.selectors import SelectorsService
from gateway.settings import Settings
from gateway.signing import shared_secret

log = logging.getLogger(__name__)

GATEWAY_APPLICATION = "aistudio-fleet-gateway:"  # its database connections' name, then the process's origin


@dataclass
class Fleet:
    """Everything the gateway's faces share; opened once per process and closed once."""

    settings: Settings
    db: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    runtime: Runtime
    engine_health: EngineHealth
    client: InstanceClient
    instances: InstanceService
    reconciler: Reconciler
    history: TaskHistoryService
    dispatcher: Dispatcher
    selectors: SelectorsService
    retention: Retention
    canary: Canary
    proxies: ProxyTester | None = None  # the "test proxy" action; set by open()
    secret: str = ""  # the signing key (panel cookies, image URLs); set by open(), shared on Postgres
    clock: Clock = utcnow  # the accounts' time: the ledger's reads follow the same clock as its writes

    @property
    def catalogue(self) -> CatalogueService:
        """The operator's catalogue edit (kept in fleet_settings) and the listing of what the fleet serves."""
        return CatalogueService(self.sessions)

    @property
    def usage(self) -> UsageReader:
        """The account ledger's reads, on this fleet's database, settings and clock."""
        return UsageReader(self.sessions, self.settings.accounts, self.clock)

    @classmethod
    async def open(
        cls, settings: Settings, *, runtime: Runtime | None = None, reconcile: bool = True, clock: Clock = utcnow
    ) -> Fleet:
        """`clock`: the accounts' Pacific days and blocks follow it (tests move it past midnight)."""
        origin = secrets.token_hex(6)  # this process, among gateways sharing one database
        box = await asyncio.to_thread(box_for, settings.sealing)  # SecretKeyProblem: the reason, before anything runs
        db = create_db_engine(settings.database_url, application_name=f"{GATEWAY_APPLICATION}{origin}")
        attach(db, box)
        try:
            revision = await prepare_schema(db, upgrade=settings.migrate_on_start, secret_box=box)
            await check_key(db, box)
            log.info("database %s at schema revision %s", db.url.render_as_string(hide_password=True), revision)
            runtime = runtime if runtime is not None else build_runtime(settings.engine)
            health = EngineHealth(runtime.name)
            try:
                await runtime.setup()
            except RuntimeUnavailable as exc:
                health.mark_down(exc.reason)  # keep serving reads; the reconciler retries every pass
            sessions = create_sessionmaker(db)
            # An engine whose instances are not on the network (the fake) hands over its own transport.
            client = InstanceClient(timeout=30.0, transport=getattr(runtime, "http_transport", None))
            selectors = SelectorsService(sessions, client)
            # Each part gets only its own settings (gateway/settings.py groups them by concern).
            reconciler = Reconciler(
                sessions, runtime, client, settings.reconcile, health, leader=LeaderLock(db), on_ready=selectors.deliver,
                instance=settings.instance, session=settings.sessions,
            )
            instances = InstanceService(
                sessions, runtime, client, settings.instance, health, on_target_changed=reconciler.wake, session=settings.sessions,
                proxy_exit=box.exit_of,
            )
            # A dispatcher that cannot reach an instance asks the reconciler (the only status writer) to probe it.
            dispatcher = Dispatcher.build(
                db, client, settings.dispatch, suspect=reconciler.suspect, origin=origin, listener_url=settings.database_url,
                clock=clock,
            )
            await dispatcher.results.check()  # a bucket that is missing or refuses us: no start (StoreUnusable)
            await dispatcher.recover(GATEWAY_APPLICATION)  # what a killed gateway left unfinished
            retention = Retention(sessions, settings.retention, dispatcher.results)
            canary = Canary(sessions, db, client, settings.canary,
                            lambda request, meta: dispatcher.generate(request, meta=meta))
            instance = settings.instance
            proxies = ProxyTester(
                sessions, runtime, instance.default_proxy_url, instance.proxy_test_target, instance.proxy_test_timeout
            )
            secret = await shared_secret(settings.listeners, db, box)
            if (problem := proxies.default_problem("en")) is not None:
                # The setting is read at start: the operator learns it here and in the panel, not from instances.
                log.warning("GATEWAY_DEFAULT_PROXY: %s", problem)
        except BaseException:
            await db.dispose()
            raise
        fleet = cls(
            settings, db, sessions, runtime, health, client, instances, reconciler, TaskHistoryService(sessions), dispatcher,
            selectors, retention, canary, proxies, clock=clock, secret=secret,
        )
        await fleet.catalogue.load()  # the operator's stored catalogue edit, for the model check
        dispatcher.start()
        retention.start()
        canary.start()
        if reconcile:
            reconciler.start()
        return fleet

    async def close(self) -> None:
        """Stops the gateway's own work; instances keep running and are adopted on the next start."""
        try:
            for name, part in (("canary", self.canary), ("retention", self.retention), ("dispatcher", self.dispatcher),
                               ("reconciler", self.reconciler), ("instance client", self.client),
                               ("runtime", self.runtime)):
                await _close_within(name, part.close(), CLOSE_PART_TIMEOUT)
        finally:
            await _close_within("database", self.db.dispose(), CLOSE_PART_TIMEOUT)


CLOSE_PART_TIMEOUT = 15.0  # a shutdown that hangs on one part would outlive the stop timeout and be killed


async def _close_within(name: str, closing: Any, timeout: float) -> None:
    """Close one part, but stop waiting after `timeout` (logged): the rest of the gateway still closes."""
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.error("closing the %s took more than %.0f s; going on without it", name, timeout)
        return
    task.result()


@asynccontextmanager
async def open_fleet(settings: Settings, *, runtime: Runtime | None = None, reconcile: bool = True) -> AsyncIterator[Fleet]:
    fleet = await Fleet.open(settings, runtime=runtime, reconcile=reconcile)
    try:
        yield fleet
    finally:
        await fleet.close()


def create_admin_app(settings: Settings, *, fleet: Fleet | None = None, runtime: Runtime | None = None) -> Litestar:
    """The admin listener (:8813): the management API under /api, the admin panel at /."""
    handlers = [
        *MANAGEMENT_CONTROLLERS, *CONSOLE_CONTROLLERS, *HISTORY_CONTROLLERS, *SELECTORS_CONTROLLERS, *CATALOGUE_CONTROLLERS,
        *SNAPSHOT_CONTROLLERS, *CANARY_CONTROLLERS,
    ]
    plugins = [HTMXPlugin(), PanelPlugin(settings.listeners, secret=fleet.secret if fleet is not None else None)]
    return _create_app(
        settings, fleet, runtime, handlers, title="AI Studio Fleet management API", plugins=plugins,
        forms_allowed=lambda path: not path.startswith("/api/"),  # the panel's htmx forms, behind its CSRF check
        untyped_is_json=True,  # every route wants the admin token or a panel session
    )


def create_api_app(settings: Settings, *, fleet: Fleet | None = None, runtime: Runtime | None = None) -> Litestar:
    """The generation listener (:8812): the old clients' /generate, /generate-with-file, /tasks and /health,
    OpenAI's /v1/..., Gemini's /v1beta/..., Anthropic's /v1/messages, and /metrics."""
    handlers = [HealthController, ProbesController, generation_router(settings.inputs), openai_router(settings.inputs), gemini_router(settings.inputs),
                anthropic_router(settings.inputs), MetricsController]
    return _create_app(settings, fleet, runtime, handlers, title="AI Studio Fleet generation API")


def _create_app(
    settings: Settings,
    fleet: Fleet | None,
    runtime: Runtime | None,
    handlers: Sequence[Any],
    *,
    title: str,
    plugins: Sequence[PluginProtocol] = (),
    forms_allowed: Callable[[str], bool] = lambda _path: False,
    untyped_is_json: bool = False,
) -> Litestar:
    """With a `fleet`, the app borrows it (its owner closes it); without, the app's lifespan owns one."""
    lifespan = []
    if fleet is None:

        @asynccontextmanager
        async def own_fleet(app: Litestar) -> AsyncIterator[None]:
            async with open_fleet(settings, runtime=runtime) as opened:
                app.state.fleet = opened
                yield

        lifespan.append(own_fleet)
    state = State({"settings": settings, **({"fleet": fleet} if fleet is not None else {})})
    return Litestar(
        route_handlers=[*handlers, docs_assets()],
        state=state,
        lifespan=lifespan,
        exception_handlers=EXCEPTION_HANDLERS,
        plugins=[*plugins, PageHeadersPlugin(), BodyGuardPlugin(_largest_body(settings), forms_allowed, untyped_is_json=untyped_is_json), AllowedHostsPlugin(settings.listeners)],  # last: its check runs first
        openapi_config=openapi_config(title),  # its reading page served from the image
        request_max_body_size=max(10_000_000, settings.max_session_bytes * 2),
        logging_config=None,
        debug=False,
    )


def _largest_body(settings: Settings) -> int:
    """What a listener reads at most; each handler holds its own body to its own, smaller limit."""
    return max(10_000_000, settings.max_session_bytes * 2, settings.max_body_bytes)

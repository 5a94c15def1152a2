"""Puts the panel on the admin app: templates, static files, admin access, CSRF and the live-update poller."""

from __future__ import annotations

from importlib import resources
from typing import Any

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from gateway.panel.auth import API_PREFIXES, AdminAccessMiddleware, AdminAuth
from gateway.signing import load_secret
from gateway.panel.controllers import PANEL_CONTROLLERS, PANEL_EXCEPTION_HANDLERS
from gateway.panel.live import PoolWatcher
from gateway.panel.rendering import create_engine
from gateway.panel.sessions import PanelSessions
from gateway.panel.migration import MIGRATION_PANEL_CONTROLLERS
from gateway.panel.catalogue import CATALOGUE_PANEL_CONTROLLERS
from gateway.panel.canary import CANARY_PANEL_CONTROLLERS
from gateway.panel.playground import PLAYGROUND_PANEL_CONTROLLERS
from gateway.panel.selectors import SELECTORS_PANEL_CONTROLLERS
from gateway.panel.snapshots import SNAPSHOTS_PANEL_CONTROLLERS
from gateway.services.history import TaskView
from gateway.services.views import InstanceView, StatsView
from gateway.settings import ListenerSettings

STATIC = resources.files("gateway.panel").joinpath("static")
CSRF_COOKIE = "fleet_csrf"


class PanelPlugin(InitPluginProtocol):
    """The admin panel at `/` of the admin listener; the management API keeps `/api`."""

    def __init__(self, settings: ListenerSettings, *, secret: str | None = None, live_interval: float = 0.5) -> None:
        self.settings = settings
        self.secret = secret  # the fleet's key (shared by the gateways of one Postgres); None: the data folder's
        self.live_interval = live_interval

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        secret = self.secret or load_secret(self.settings)
        state: State = app_config.state
        sessions = PanelSessions(lambda: state.fleet.sessions, self.settings.admin_session_hours * 3600)
        auth = AdminAuth.from_settings(self.settings, secret, sessions)
        app_config.template_config = TemplateConfig(instance=create_engine())
        # The API authenticates with a bearer token, which a browser never sends by itself: no CSRF token there.
        app_config.csrf_config = CSRFConfig(
            secret=secret, cookie_name=CSRF_COOKIE, cookie_httponly=True, cookie_samesite="strict",
            exclude=[f"^{prefix.rstrip('/')}(/|$)" for prefix in API_PREFIXES],
        )
        app_config.middleware.insert(0, DefineMiddleware(AdminAccessMiddleware, auth=auth))
        app_config.route_handlers.extend([
            Router(
                path="/", route_handlers=[
                    *PANEL_CONTROLLERS, *SELECTORS_PANEL_CONTROLLERS, *CATALOGUE_PANEL_CONTROLLERS, *SNAPSHOTS_PANEL_CONTROLLERS,
                    *MIGRATION_PANEL_CONTROLLERS, *CANARY_PANEL_CONTROLLERS, *PLAYGROUND_PANEL_CONTROLLERS,
                ],
                exception_handlers=PANEL_EXCEPTION_HANDLERS,
            ),
            create_static_files_router(
                path="/static", directories=[str(STATIC)], name="panel:static", include_in_schema=False,
                exception_handlers=PANEL_EXCEPTION_HANDLERS,
            ),
        ])
        state.panel_auth = auth
        state.pool_watcher = PoolWatcher(_pool_loader(state), interval=self.live_interval)
        app_config.on_shutdown.append(_stop_watcher)
        return app_config


def _pool_loader(state: State) -> Any:
    async def load() -> tuple[list[InstanceView], StatsView, dict[str, TaskView]]:
        fleet = state.fleet  # set by the app's lifespan (or given), so looked up on each read
        return await fleet.instances.list(), await fleet.instances.stats(), await fleet.history.running_by_instance()

    return load


async def _stop_watcher(app: Litestar) -> None:
    await app.state.pool_watcher.close()

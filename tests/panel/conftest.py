"""Panel fixtures: the admin app in process (fake runtime), and for browser tests a real gateway with real
instances (local runtime), the AI Studio simulator and Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from gateway.app import create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.instance.harness import require_chromium
from tests.panel.harness import Gateway, launch_browser, start_gateway
from tests.polling import await_until
from tests.simulator.fixtures import free_port, simulator_server, simulator_url  # noqa: F401

TOKEN = "in-process-admin-token"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "panel"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def csrf_token(html: str) -> str:
    """The token the page hands to htmx (and to its forms)."""
    found = re.search(r'"X-CSRFToken": "([0-9a-f]+)"', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


@pytest.fixture
def admin_app(sqlite_url: str, tmp_path: Path) -> Litestar:
    """The admin app (panel and API) without a token: open, as on loopback."""
    return create_admin_app(make_settings(sqlite_url, tmp_path), runtime=FakeRuntime())


@pytest.fixture
async def panel(admin_app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(admin_app) as client:
        yield client


@pytest.fixture
def guarded_app(sqlite_url: str, tmp_path: Path) -> Litestar:
    """The admin app with GATEWAY_ADMIN_TOKEN set."""
    return create_admin_app(make_settings(sqlite_url, tmp_path, admin_token=TOKEN), runtime=FakeRuntime())


@pytest.fixture
async def guarded(guarded_app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(guarded_app) as client:
        yield client


@contextlib.asynccontextmanager
async def served(app: Litestar) -> AsyncIterator[str]:
    """The app behind a real uvicorn on a free port (WebSockets and streams as a browser meets them)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        assert not task.done(), "uvicorn did not start"
        return server.started

    await await_until(started, timeout=10, what="uvicorn to listen", pause=0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


# Browser tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(simulator_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:  # noqa: F811
    """One real gateway for a module of browser tests: local runtime (real instance processes), the simulator."""
    require_chromium()
    with start_gateway(tmp_path_factory.mktemp("panel-gateway"), simulator_server) as running:
        yield running


@pytest.fixture(scope="module")
def browser(gateway: Gateway) -> Iterator[Any]:
    """Module-scoped: Playwright's sync driver runs an event loop in this thread while it lives, which the
    async tests of other modules must not meet."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = launch_browser(playwright)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) with a desktop viewport; a screenshot is kept when the test fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        save_screenshot(opened, f"failed-{request.node.name}")
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def save_screenshot(target: Any, name: str, *, for_readme: bool = False) -> Path:
    """A page (whole) or one element of it, kept under tests/artifacts/panel (ignored by git); the README's
    ones also go to docs/screenshots when AISTUDIO_UPDATE_SCREENSHOTS=1 (so test runs leave the tree clean)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if hasattr(target, "goto"):
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    if for_readme and os.environ.get("AISTUDIO_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")
    return path

"""The gateway's fixtures (fake runtime, in-process management API and panel, each database) for these tests."""

from tests.gateway.conftest import admin, fake, fleet  # noqa: F401
from tests.panel.conftest import admin_app, panel  # noqa: F401
from tests.simulator.fixtures import simulator_server, simulator_url  # noqa: F401

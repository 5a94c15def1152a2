"""create_app(): the simulator as a Litestar app (pages, sign-in, GenerateContent, control API)."""

from __future__ import annotations

from litestar import Litestar
from litestar.datastructures import State
from litestar.static_files import create_static_files_router

from . import api, control, pages
from .state import SimState

MAX_BODY_BYTES = 200 * 1024 * 1024  # reference images arrive base64-encoded in one JSON body


def create_app() -> Litestar:
    static = create_static_files_router(path="/static", directories=[pages.STATIC_DIR], name="static")
    return Litestar(
        route_handlers=[*pages.ROUTES, *api.ROUTES, *control.ROUTES, static],
        state=State({"sim": SimState()}),
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
    )

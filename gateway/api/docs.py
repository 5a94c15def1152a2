"""The OpenAPI document and its reading page at /schema, served from the image: no CDN, no web font.

The page is Redoc's standalone bundle (npm `redoc`, MIT, vendored in `static/` with its licence), served by
the gateway under /schema/assets; the document itself is at /schema/openapi.json and /schema/openapi.yaml.
Litestar's other pages (Swagger UI, RapiDoc, Elements) load their scripts from CDNs, so they are not offered.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, RedocRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

from gateway import __version__

STATIC_DIR = Path(__file__).resolve().parent / "static"
SCHEMA_PATH = "/schema"
ASSETS_PATH = f"{SCHEMA_PATH}/assets"
REDOC_BUNDLE = "redoc.standalone.js"


def openapi_config(title: str) -> OpenAPIConfig:
    # No favicon: Litestar's default is on a CDN (the page loads nothing from elsewhere).
    redoc = RedocRenderPlugin(js_url=f"{ASSETS_PATH}/{REDOC_BUNDLE}", google_fonts=False, path=["/", "/redoc"], favicon="")
    return OpenAPIConfig(
        title=title, version=__version__, path=SCHEMA_PATH,
        render_plugins=[redoc, JsonRenderPlugin(), YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"])],
    )


def docs_assets() -> Router:
    """The reading page's script, from the package (the gateway image copies it with the code)."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[STATIC_DIR], include_in_schema=False, cache_control=None, name="docs-assets"
    )

"""The panel's Jinja environment: autoescaped templates, the `t()` label function and small display filters."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, FileSystemLoader, pass_context
from jinja2_fragments import render_block
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.base import csrf_token
from markupsafe import Markup

from gateway.accounts.calendar import PACIFIC
from gateway.panel.i18n import panel_catalog, panel_text

TEMPLATES = resources.files("gateway.panel").joinpath("templates")


def create_environment() -> Environment:
    # Autoescape everywhere: names, prompts, errors and log lines are all someone else's text.
    environment = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.globals.update(t=_t, csrf_field=_csrf_field, uptime=uptime, time_left=time_left, event_label=_event_label)
    environment.filters.update(clock=clock, pacific=pacific, ms=milliseconds, short=short_id, size=byte_size)
    return environment


def create_engine() -> JinjaTemplateEngine:
    return JinjaTemplateEngine.from_environment(create_environment())


def render_fragment(engine: JinjaTemplateEngine, template: str, block: str, context: dict[str, Any]) -> str:
    """One block of a page, for a live update: the same template the page itself was rendered from."""
    return render_block(engine.engine, template, block, context)


@pass_context
def _t(context: Any, key: str, **params: Any) -> str:
    return panel_text(key, context.get("lang", "zh"), **params)


@pass_context
def _event_label(context: Any, kind: str) -> str:
    language = context.get("lang", "zh")
    return panel_catalog(language).get(f"event_{kind}", kind)


@pass_context
def _csrf_field(context: Any) -> Markup:
    return Markup('<input type="hidden" name="_csrf_token" value="{}">').format(csrf_token(context))


def uptime(since: datetime | None, now: datetime | None = None) -> str:
    if since is None:
        return "—"
    seconds = int(((now or datetime.now(UTC)) - since).total_seconds())
    return duration(max(0, seconds))


def time_left(until: datetime, now: datetime) -> str:
    """How long until a moment (a reset, a block's end), as an uptime reads."""
    return duration(max(0, int((until - now).total_seconds())))


def duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def clock(moment: datetime | None) -> str:
    """UTC, to the second; the page's script rewrites it in the viewer's time zone."""
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pacific(moment: datetime | None) -> str:
    """Pacific time, to the minute, with its zone's name (PST or PDT): the allowances' own clock."""
    if moment is None:
        return "—"
    return moment.astimezone(PACIFIC).strftime("%Y-%m-%d %H:%M %Z")


def milliseconds(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value} ms" if value < 1000 else f"{value / 1000:.1f} s"


def short_id(value: str | None) -> str:
    return (value or "")[:8]


def byte_size(value: int | None) -> str:
    """A file's size for a person: bytes, KB or MB (1024-based)."""
    if value is None:
        return "—"
    if value < 1024:
        return f"{value} B"
    return f"{value / 1024:.0f} KB" if value < 1024 * 1024 else f"{value / 1024 / 1024:.1f} MB"


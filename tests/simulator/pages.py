"""The pages a browser sees: the new-chat app page and the sign-in page."""

from __future__ import annotations

import asyncio

import json
from pathlib import Path
from typing import Any

from litestar import Request, get, post
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response.base import ASGIResponse

from .models import DEFAULT_MODEL, TEXT_MODEL, picker_entries
from .session import (
    ROTATING_COOKIE, current_account, redirect, rotating_cookie, safe_continue, session_cookies, signin_url,
)
from .state import ANONYMOUS, SimState

STATIC_DIR = Path(__file__).parent / "static"
CONFIG_PLACEHOLDER = "__SIM_CONFIG__"
SIGNIN_PLACEHOLDER = "__SIGNIN_URL__"
NO_STORE = {"cache-control": "no-store"}
REGIONS_PATH = "/gemini-api/docs/available-regions"
# Knobs the page's JavaScript reads as they are.
PAGE_KNOBS = (
    "upload_delay_ms", "markup", "missing_roles", "dialogs", "dialog_delay_ms", "copyright_dialog", "image_stagger_ms", "event_dialogs",
    "copyright_delay_ms", "select_apply", "select_apply_delay_ms", "upload_signal", "run_button", "harmless_toast",
    "stale_callout", "failure_display", "model_picker", "unavailable_models", "temporary_chat",
)


def _html(name: str, replacements: dict[str, str] | None = None, set_cookies: list[str] | None = None) -> ASGIResponse:
    # ASGIResponse everywhere on pages, since a page handler may also answer with a redirect
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    for placeholder, value in (replacements or {}).items():
        text = text.replace(placeholder, value)
    headers = [*NO_STORE.items(), *(("set-cookie", cookie) for cookie in set_cookies or [])]
    return ASGIResponse(body=text.encode("utf-8"), media_type="text/html; charset=utf-8", headers=headers)


def _script_json(data: dict[str, Any]) -> str:
    # safe inside <script>: no "</script>" or "<!--" can appear
    return json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page_model(config: dict[str, Any], requested: str | None) -> tuple[str, str | None]:
    """The model the page opens on, and the one it refused (not available to the account), if any."""
    if not config["model_from_url"]:
        return TEXT_MODEL, None
    if requested in config["unavailable_models"]:
        return DEFAULT_MODEL, requested
    return requested or DEFAULT_MODEL, None


def _page_config(sim: SimState, account: str, model: str | None) -> dict[str, Any]:
    config = sim.effective_config(account)
    page_model, refused = _page_model(config, model)
    return {
        "account": account,
        "model": page_model,
        "refused_model": refused,
        "models": picker_entries(config["extra_models"]),
        **{knob: config[knob] for knob in PAGE_KNOBS},
        # region block shows on load; peeking does not count against mode_times
        "region_blocked": config["mode"] == "region",
    }


async def _render_app(request: Request, sim: SimState) -> ASGIResponse:
    account = current_account(request, sim)
    if account is None:
        if sim.effective_config(None)["signed_out_page"] == "link":
            return _html("signed_out.html", {SIGNIN_PLACEHOLDER: signin_url(str(request.url))})
        return redirect(signin_url(str(request.url)))
    config = sim.effective_config(account)
    if config["region_redirect"]:
        return redirect(REGIONS_PATH)
    if config["app_path"] and not request.url.path.startswith("/app/"):
        query = f"?{request.url.query}" if request.url.query else ""
        return redirect(f"/app{request.url.path}{query}")
    sim.count_page_load(account)
    if config["page_delay_ms"]:
        await asyncio.sleep(config["page_delay_ms"] / 1000)
    page_config = _page_config(sim, account, request.query_params.get("model"))
    return _html("new_chat.html", {CONFIG_PLACEHOLDER: _script_json(page_config)}, _renewed(request, sim, account, config))


def _renewed(request: Request, sim: SimState, account: str, config: dict[str, Any]) -> list[str]:
    """A page load renews the rotating cookie, as Google renews __Secure-1PSIDTS (a login without it gets one)."""
    if account == ANONYMOUS or (config["rotate_cookie"] == "off" and request.cookies.get(ROTATING_COOKIE)):
        return []
    return [rotating_cookie(account, sim.renew(account))]


@get(["/", "/prompts/new_chat", "/prompts/new_image", "/app/prompts/new_chat", "/app/prompts/new_image"],
     include_in_schema=False)
async def app_page(request: Request, state: State) -> ASGIResponse:
    return await _render_app(request, state.sim)


@get("/u/{user_index:int}/prompts/{page:str}", include_in_schema=False)
async def account_scoped_app_page(request: Request, state: State, page: FromPath[str]) -> ASGIResponse:
    if page not in ("new_chat", "new_image"):
        raise NotFoundException()
    return await _render_app(request, state.sim)


@get(REGIONS_PATH, include_in_schema=False)
async def available_regions() -> ASGIResponse:
    # where Google sends an account or address outside the served regions
    return _html("available_regions.html")


@get("/ServiceLogin", include_in_schema=False)
async def signin_page(state: State) -> ASGIResponse:
    refused = state.sim.effective_config(None)["signin_refused"]
    return _html("signin.html", {'data-refuse="false"': f'data-refuse="{str(refused).lower()}"'})


@get("/v3/signin/rejected", include_in_schema=False)
async def signin_rejected() -> ASGIResponse:
    # where Google sends a browser it takes for automation, after the e-mail step
    return _html("signin_rejected.html")


@post("/_signin", include_in_schema=False)
async def signin_submit(request: Request, state: State) -> ASGIResponse:
    form = await request.form()
    account = (form.get("identifier") or "").strip()
    continue_url = safe_continue(form.get("continue"))
    if not account or not form.get("Passwd"):
        return redirect(signin_url(continue_url) + "&error=1", status_code=303)
    state.sim.sign_in(account)
    renewed = rotating_cookie(account, state.sim.renew(account))
    return redirect(continue_url, status_code=303, set_cookies=[*session_cookies(account), renewed])


@get("/Logout", include_in_schema=False)
async def logout(request: Request) -> ASGIResponse:
    # handy when trying the simulator by hand; expires the cookies
    return redirect(signin_url(safe_continue(request.query_params.get("continue"))), set_cookies=session_cookies("", 0))


ROUTES = [app_page, account_scoped_app_page, available_regions, signin_page, signin_rejected, signin_submit, logout]

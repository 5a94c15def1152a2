"""The control API tests use (no auth): configure failures and read back what happened."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import SerializationException, ValidationException
from litestar.params import FromPath

from .clock import parse_instant, parse_seconds
from .config import ConfigError


async def _apply(request: Request, state: State, account: str | None) -> dict[str, Any]:
    try:
        state.sim.update_config(await request.json(), account)
    except (ConfigError, ValueError) as exc:
        raise ValidationException(detail=str(exc)) from exc
    return state.sim.config_snapshot()


@post("/_sim/config", status_code=200)
async def set_config(request: Request, state: State) -> dict[str, Any]:
    return await _apply(request, state, None)


@get("/_sim/config")
async def get_config(state: State) -> dict[str, Any]:
    return state.sim.config_snapshot()


@post("/_sim/accounts/{account:str}/config", status_code=200)
async def set_account_config(request: Request, state: State, account: FromPath[str]) -> dict[str, Any]:
    return await _apply(request, state, account)


@post("/_sim/accounts/{account:str}/revoke", status_code=200)
async def revoke_account(state: State, account: FromPath[str]) -> dict[str, Any]:
    state.sim.revoke(account)
    return {"ok": True, "revoked": account}


@post("/_sim/reset", status_code=200)
async def reset(state: State) -> dict[str, Any]:
    state.sim.reset()
    return {"ok": True}


def _move_clock(body: Any, state: State) -> None:
    """Apply {"advance_s": seconds} or {"now": ISO instant with zone}; exactly one of them."""
    if not isinstance(body, dict) or len(body.keys() & {"advance_s", "now"}) != 1 or len(body) != 1:
        raise ValueError('clock body must be {"advance_s": seconds} or {"now": "<ISO 8601 with zone>"}')
    if "advance_s" in body:
        state.sim.advance_clock(parse_seconds(body["advance_s"]))
    else:
        state.sim.set_clock(parse_instant(body["now"]))


@post("/_sim/clock", status_code=200)
async def set_clock(request: Request, state: State) -> dict[str, str]:
    try:
        _move_clock(await request.json(), state)
    except (SerializationException, TypeError, ValueError) as exc:
        raise ValidationException(detail=str(exc)) from exc
    return state.sim.clock_snapshot()


@get("/_sim/clock")
async def get_clock(state: State) -> Response[dict[str, str]]:
    return Response(state.sim.clock_snapshot(), headers={"cache-control": "no-store"})


@get("/_sim/record")
async def record(state: State) -> Response[dict[str, Any]]:
    return Response(state.sim.record(), headers={"cache-control": "no-store"})


ROUTES = [set_config, get_config, set_account_config, revoke_account, reset, set_clock, get_clock, record]

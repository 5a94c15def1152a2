"""Egress proxies as the instances reach them: the loopback check on set, and the "test proxy" action.

A proxy on this machine's loopback (a desktop client on 127.0.0.1:7890) reaches the instances through the
runtime (the docker engine relays it; local processes share the loopback); where it cannot (Kubernetes, a
remote Docker engine), setting one is refused with what to do instead. A test connects through the proxy from
where the instances would: a loopback proxy by the same relay.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fleet_contract.proxy import ProxyURLError, parse_proxy
from gateway.db.models import Instance
from gateway.errors import Invalid, NotFound
from gateway.i18n import translate
from gateway.proxy_probe import ProbeResult, parse_target, probe
from gateway.runtime.base import (
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
    loopback_proxy_problem,
    prune_relays,
    route_proxy,
)

log = logging.getLogger(__name__)


class ProxyTestView(msgspec.Struct, kw_only=True):
    success: bool  # the proxy opened a tunnel to the target
    latency_ms: float | None  # connect, log in and open the tunnel
    exit_address: str | None  # as the proxy reported it (SOCKS5's bound address); None when it does not say
    error: str | None  # what went wrong, in the reader's words
    error_code: str | None  # refused, dns, timeout, unreachable, auth_required, auth_failed, tls, protocol, target, closed, loopback_unsupported, relay
    message: str  # one sentence for a person
    proxy: str  # masked: never the password
    source: str  # given, instance or default
    target: str
    via: str  # direct, or relay (a proxy on this machine's loopback, through the docker relay)
    connect_ms: float | None = None


def check_reachable(runtime: Runtime, proxy_url: str | None) -> None:
    """Refuse (422) a loopback proxy the instances of this runtime could never reach, saying what to do."""
    if not proxy_url:
        return
    try:
        on_loopback = parse_proxy(proxy_url).on_loopback
    except ProxyURLError:
        return
    problem = loopback_proxy_problem(runtime) if on_loopback else None
    if problem:
        raise Invalid(f"proxy_loopback_{problem}", port=parse_proxy(proxy_url).port)


class ProxyTester:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        runtime: Runtime,
        default_proxy: str | None,
        target: str,
        timeout: float,
    ) -> None:
        self._sessions = sessions
        self._runtime = runtime
        self._default = default_proxy
        self._target = parse_target(target)
        self._timeout = timeout

    def default_problem(self, language: str) -> str | None:
        """Why the fleet default proxy cannot reach the instances, in words, or None."""
        try:
            check_reachable(self._runtime, self._default)
        except Invalid as exc:
            return translate(exc.key, language, **exc.params)
        return None

    async def test(self, language: str, proxy: str | None = None, instance_id: str | None = None) -> ProxyTestView:
        """Test a URL before it is saved, an instance's own proxy (or the default it uses), or the default."""
        if proxy is not None and instance_id is not None:
            raise Invalid("proxy_test_both")
        if proxy is not None:
            url, source = proxy, "given"
        elif instance_id is not None:
            url, source = await self._instance_proxy(instance_id), "instance"
        else:
            url, source = self._default, "default"
        if not url or not url.strip():
            raise Invalid("proxy_test_nothing" if source != "given" else "proxy_invalid_empty")
        try:
            parsed = parse_proxy(url)
        except ProxyURLError as exc:
            raise Invalid(f"proxy_invalid_{exc.reason}") from None
        shown_target = f"{self._target[0]}:{self._target[1]}"
        view: dict[str, Any] = dict(proxy=parsed.masked, source=source, target=shown_target, via="direct")
        if parsed.on_loopback and (problem := loopback_proxy_problem(self._runtime)):
            return self._failed(view, language, "loopback_unsupported", {"key": f"proxy_loopback_{problem}", "port": parsed.port})
        routed = parsed
        if parsed.on_loopback:
            try:
                reached = await route_proxy(self._runtime, url)
            except (RuntimeError_, RuntimeUnavailable) as exc:
                return self._failed(view, language, "relay", {"reason": str(exc)})
            if reached != url:
                routed, view["via"] = parse_proxy(reached), "relay"
        result = await probe(routed, self._target, self._timeout)
        if view["via"] == "relay":
            # A relay started for this test alone goes again; one an instance uses stays.
            try:
                await prune_relays(self._runtime)
            except (RuntimeError_, RuntimeUnavailable) as exc:
                log.warning("cannot prune loopback proxy relays: %s", exc)
        if view["via"] == "relay" and result.error == "closed":
            # The relay took the connection but found nothing on the host's loopback port.
            result.error = "refused_loopback"
        result.params.update(address=parsed.address, port=parsed.port)
        log.info("proxy test of %s (%s, %s): %s in %s ms", parsed.masked, source, view["via"],
                 "ok" if result.success else result.error, result.latency_ms)
        return self._view(view, language, result)

    async def _instance_proxy(self, instance_id: str) -> str | None:
        try:
            uid = uuid.UUID(instance_id)
        except (ValueError, TypeError, AttributeError):
            raise NotFound("instance_not_found", instance_id=str(instance_id)[:80]) from None
        async with self._sessions() as session:
            row = (await session.execute(select(Instance.proxy_url).where(Instance.id == uid))).first()
        if row is None:
            raise NotFound("instance_not_found", instance_id=instance_id)
        return row.proxy_url or self._default

    def _failed(self, view: dict[str, Any], language: str, code: str, params: dict[str, Any]) -> ProxyTestView:
        return self._view(view, language, ProbeResult(success=False, error=code, params=params))

    def _view(self, view: dict[str, Any], language: str, result: ProbeResult) -> ProxyTestView:
        error = None
        if result.error is not None:
            params = {**view, **result.params}
            key = params.pop("key", None) or f"proxy_error_{result.error}"
            error = translate(key, language, **params)
            message = translate("proxy_test_failed", language, proxy=view["proxy"], error=error)
        else:
            exit_words = (translate("proxy_test_exit", language, exit_address=result.exit_address) if result.exit_address
                          else translate(f"proxy_test_exit_unknown_{'http' if view['proxy'].startswith('http') else 'socks'}", language))
            message = translate("proxy_test_ok", language, proxy=view["proxy"], target=view["target"],
                                latency_ms=f"{result.latency_ms:.0f}", exit=exit_words)
        return ProxyTestView(
            success=result.success, latency_ms=result.latency_ms, exit_address=result.exit_address, error=error,
            error_code=result.error, message=message, connect_ms=result.connect_ms, **view,
        )

"""Webhooks: an asynchronous task's result POSTed to its `callback_url`, signed, retried, every attempt recorded.

The body is JSON; `X-Fleet-Signature: sha256=<hex>` is the HMAC-SHA256 of `<X-Fleet-Timestamp>.<body>` with
GATEWAY_WEBHOOK_SECRET, so a receiver can check both who sent it and when (and refuse a replay). A 2xx answer
ends the delivery; anything else is tried again after 2, 4, 8, ... seconds (GATEWAY_WEBHOOK_BACKOFF), up to
GATEWAY_WEBHOOK_ATTEMPTS times. Each attempt (time, status or error) is written to the task's row. The
address is checked at every attempt like any URL a client gives (public addresses only). A receiver cannot
hold or fill the gateway: an attempt runs under one deadline (GATEWAY_WEBHOOK_TIMEOUT, for the whole exchange),
asks for no compression, and reads only the reply's status, never its body (`gateway.bounded_http`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.addresses import AddressRefused, checked_address, netloc
from gateway.bounded_http import IDENTITY
from gateway.db.types import utcnow
from gateway.settings import WebhookSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fleet-Signature"
TIMESTAMP_HEADER = "X-Fleet-Timestamp"
_PORTS = {"http": 80, "https": 443}
DEFAULT_DEADLINE = 10.0  # seconds, when neither the caller nor the client names one


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, settings: WebhookSettings, record: Callable[[uuid.UUID, list[dict[str, Any]]], Awaitable[None]]) -> None:
        self._settings = settings
        self._record = record
        self._deliveries: set[asyncio.Task[None]] = set()

    def send(self, task_id: uuid.UUID, url: str, payload: dict[str, Any]) -> None:
        """Delivers in the background; the task's answer does not wait for the receiver."""
        delivery = asyncio.create_task(self._deliver(task_id, url, payload), name=f"webhook-{task_id}")
        self._deliveries.add(delivery)
        delivery.add_done_callback(self._deliveries.discard)

    async def settled(self) -> None:
        """Returns once every delivery under way has ended (tests, shutdown)."""
        if self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    async def close(self) -> None:
        for delivery in list(self._deliveries):
            delivery.cancel()
        await self.settled()

    async def _deliver(self, task_id: uuid.UUID, url: str, payload: dict[str, Any]) -> None:
        secret = self._settings.secret_value
        body = json.dumps(payload, ensure_ascii=False).encode()
        attempts: list[dict[str, Any]] = []
        pause = self._settings.backoff
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self._settings.timeout) as client:
            for number in range(1, self._settings.attempts + 1):
                outcome = await self._post(client, url, body, secret, str(task_id))
                attempts.append({"attempt": number, "at": utcnow().isoformat(timespec="seconds"), **outcome})
                try:
                    await self._record(task_id, list(attempts))
                except Exception as exc:  # noqa: BLE001 - the delivery goes on; the record is for people
                    log.warning("cannot record webhook attempt %d of task %s: %s", number, task_id, exc)
                if outcome.get("ok"):
                    return
                if number < self._settings.attempts:
                    await asyncio.sleep(pause)
                    pause *= 2
        log.warning("webhook of task %s not delivered after %d attempts", task_id, len(attempts))

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, secret: str, task_id: str) -> dict[str, Any]:
        return await post_signed(client, url, body, secret, allow_private=self._settings.fetch_private_addresses,
                                 headers={"X-Fleet-Task-Id": task_id})


async def post_signed(
    client: httpx.AsyncClient, url: str, body: bytes, secret: str, *, allow_private: bool, headers: dict[str, str],
    user_agent: str = "aistudio-fleet-webhook", deadline: float | None = None,
) -> dict[str, Any]:
    """One signed POST to a public address (checked now, connected to by that address): {"ok", "status"|"error"}.
    Task webhooks and the canary's alerts (gateway/canary.py) both send through it. The whole attempt (name lookup
    included) ends within `deadline` seconds, by default the client's read timeout; the reply's body is never read."""
    seconds = deadline if deadline is not None else (client.timeout.read or DEFAULT_DEADLINE)
    try:
        async with asyncio.timeout(seconds):
            return await _post_once(client, url, body, secret, allow_private, {**headers, "User-Agent": user_agent})
    except TimeoutError:
        return {"ok": False, "error": f"timeout ({seconds:g} s in all)"}


async def _post_once(
    client: httpx.AsyncClient, url: str, body: bytes, secret: str, allow_private: bool, headers: dict[str, str]
) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port or _PORTS[parts.scheme]
        address = await checked_address(parts.hostname or "", port, allow_private=allow_private)
    except AddressRefused as refused:
        return {"ok": False, "error": f"address {refused.reason}"}
    except (KeyError, ValueError):
        return {"ok": False, "error": "not an http(s) URL"}
    timestamp = str(int(time.time()))
    sent = {
        "Content-Type": "application/json",
        "Host": parts.netloc.rsplit("@", 1)[-1],
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
        **headers,
        **IDENTITY,
    }
    target = parts._replace(netloc=netloc(address, port)).geturl()
    try:
        # Streamed and closed unread: the status is the whole answer, so no body can be endless or a bomb.
        async with client.stream("POST", target, content=body, headers=sent, extensions={"sni_hostname": parts.hostname}) as response:
            return {"ok": response.is_success, "status": response.status_code}
    except httpx.HTTPError as exc:
        return {"ok": False, "error": type(exc).__name__}

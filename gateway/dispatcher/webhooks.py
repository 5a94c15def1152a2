"""Webhooks: an asynchronous task's result POSTed to its `callback_url`, signed, retried, every attempt recorded.

The body is JSON; `X-Fleet-Signature: sha256=<hex>` is the HMAC-SHA256 of `<X-Fleet-Timestamp>.<body>` with
GATEWAY_WEBHOOK_SECRET, so a receiver can check both who sent it and when (and refuse a replay). A 2xx answer
ends the delivery; anything else is tried again after 2, 4, 8, ... seconds (GATEWAY_WEBHOOK_BACKOFF), up to
GATEWAY_WEBHOOK_ATTEMPTS times. Each attempt (time, status or error) is written to the task's row. The
address is checked at every attempt like any URL a client gives (public addresses only). A receiver cannot
hold or fill the gateway: an attempt runs under one deadline (GATEWAY_WEBHOOK_TIMEOUT, for the whole exchange),
asks for no compression, and reads only the reply's status, never its body (`gateway.bounded_http`).

A delivery is a `webhook_outbox` row (its task, URL, payload, attempts so far, next attempt time and owner
gateway), written in the same transaction as the task's end (gateway/dispatcher/ledger.py; so is the webhook of a
task a takeover ends as abandoned), until it is delivered or out of attempts: the owner delivers its own rows, a
restarted gateway or another replica those a dead one left (gateway/dispatcher/takeover.py). A delivery cut
by a stop is sent again: a receiver may see one twice (X-Fleet-Task-Id tells).
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
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.addresses import AddressRefused, checked_address, netloc
from gateway.bounded_http import IDENTITY
from gateway.db.models import WebhookDelivery
from gateway.db.outage import database_unreachable
from gateway.db.types import utcnow
from gateway.settings import WebhookSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Fleet-Signature"
TIMESTAMP_HEADER = "X-Fleet-Timestamp"
_PORTS = {"http": 80, "https": 443}
DEFAULT_DEADLINE = 10.0  # seconds, when neither the caller nor the client names one
OUTBOX = WebhookDelivery.__table__
W = OUTBOX.c
IDLE_LOOK = 5.0  # with nothing due, the outbox is looked at this often (rows taken over from a dead gateway)

Transaction = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Webhooks:
    """This gateway's deliveries: rows of the outbox it owns, each attempt when it is due."""

    def __init__(
        self, settings: WebhookSettings, record: Callable[[uuid.UUID, list[dict[str, Any]]], Awaitable[None]],
        transaction: Transaction, origin: str,
    ) -> None:
        self._settings = settings
        self._record = record
        self._transaction = transaction
        self._origin = origin
        self._deliveries: dict[uuid.UUID, asyncio.Task[None]] = {}  # attempts under way, by outbox row
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="webhooks")

    def wake(self) -> None:
        """Look at the outbox now (a delivery was added, or rows were taken over)."""
        self._wake.set()

    async def settled(self) -> None:
        """Returns once every attempt under way has ended (tests, shutdown)."""
        if self._deliveries:
            await asyncio.gather(*list(self._deliveries.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stops delivering; rows not yet delivered stay in the outbox for the next owner."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
            self._loop = None
        for delivery in list(self._deliveries.values()):
            delivery.cancel()
        await self.settled()

    async def _run(self) -> None:
        while True:
            pause = IDLE_LOOK
            try:
                pause = await self._deliver_due()
            except Exception as exc:
                if database_unreachable(exc):
                    log.warning("webhook deliveries wait for the database: %s", str(exc).splitlines()[0][:200])
                else:
                    log.exception("reading the webhook outbox failed")
            try:
                await asyncio.wait_for(self._wake.wait(), pause)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _deliver_due(self) -> float:
        """Starts an attempt for each own row that is due; returns how long until the next one is."""
        now = utcnow()
        mine = W.owner == self._origin
        async with self._transaction() as connection:
            due = (await connection.execute(select(OUTBOX).where(mine, W.next_at <= now).order_by(W.next_at))).all()
            later = await connection.scalar(select(func.min(W.next_at)).where(mine, W.next_at > now))
        for row in due:
            if row.id not in self._deliveries:
                attempt = asyncio.create_task(self._attempt(row.id), name=f"webhook-{row.task_id}")
                self._deliveries[row.id] = attempt
                attempt.add_done_callback(lambda _t, key=row.id: self._deliveries.pop(key, None))
        return _seconds_until(later, now)

    async def _attempt(self, delivery_id: uuid.UUID) -> None:
        """One attempt at a delivery; then the row goes (delivered, or out of attempts) or waits its next turn."""
        # Read again: what the outbox was read for may be an attempt that has just ended.
        current = select(OUTBOX).where(W.id == delivery_id, W.owner == self._origin, W.next_at <= utcnow())
        async with self._transaction() as connection:
            row = (await connection.execute(current)).first()
        if row is None:
            return
        number = len(row.attempts or []) + 1
        body = json.dumps(row.payload, ensure_ascii=False).encode()
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=self._settings.timeout) as client:
            outcome = await self._post(client, row.url, body, self._settings.secret_value, str(row.task_id))
        attempts = [*(row.attempts or []), {"attempt": number, "at": utcnow().isoformat(timespec="seconds"), **outcome}]
        try:
            await self._record(row.task_id, list(attempts))
        except Exception as exc:  # noqa: BLE001 - the delivery goes on; the record is for people
            log.warning("cannot record webhook attempt %d of task %s: %s", number, row.task_id, exc)
        finished = bool(outcome.get("ok")) or number >= self._settings.attempts
        if finished and not outcome.get("ok"):
            log.warning("webhook of task %s not delivered after %d attempts", row.task_id, number)
        async with self._transaction() as connection:
            if finished:
                await connection.execute(delete(OUTBOX).where(W.id == row.id))
            else:
                pause = self._settings.backoff * 2 ** (number - 1)
                next_at = utcnow() + timedelta(seconds=pause)
                await connection.execute(update(OUTBOX).where(W.id == row.id).values(attempts=attempts, next_at=next_at))
        self.wake()

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, secret: str, task_id: str) -> dict[str, Any]:
        return await post_signed(client, url, body, secret, allow_private=self._settings.fetch_private_addresses,
                                 headers={"X-Fleet-Task-Id": task_id})


def _seconds_until(moment: datetime | None, now: datetime) -> float:
    if moment is None:
        return IDLE_LOOK
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo)
    return min(IDLE_LOOK, max(0.01, (moment - now).total_seconds()))


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

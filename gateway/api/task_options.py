"""What a request asks of its task beyond the generation, read the same way on every face: the
`Idempotency-Key` header and, for asynchronous tasks, a `callback_url` (checked before anything is stored)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from litestar import Request

from gateway.addresses import AddressRefused, checked_address
from gateway.dispatcher.durable import TaskMeta
from gateway.errors import Invalid
from gateway.settings import WebhookSettings

IDEMPOTENCY_HEADER = "idempotency-key"
MAX_KEY_LENGTH = 100  # a task of n gets ":<i>" after it, within the column's 128
MAX_CALLBACK_LENGTH = 2000
_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, as HTTP header values are safely


async def task_meta(request: Request[Any, Any, Any], api: str, *, callback_url: Any = None) -> TaskMeta:
    settings: WebhookSettings = request.app.state.settings.webhooks
    return TaskMeta(api=api, idempotency_key=idempotency_key(request), callback_url=await checked_callback(callback_url, settings))


def idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    key = value.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise Invalid("idempotency_key_invalid", limit=MAX_KEY_LENGTH)
    return key


async def checked_callback(value: Any, settings: WebhookSettings) -> str | None:
    """An http(s) URL on a public address (as for any URL a client gives), with a secret to sign for it."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid("field_type", field="callback_url", expected="string")
    if not settings.secret_value:
        raise Invalid("callback_url_not_configured")
    parts = urlsplit(value.strip())
    try:
        port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    except (KeyError, ValueError):
        raise Invalid("callback_url_invalid") from None
    if len(value) > MAX_CALLBACK_LENGTH or not parts.hostname:
        raise Invalid("callback_url_invalid")
    try:
        await checked_address(parts.hostname, port, allow_private=settings.fetch_private_addresses)
    except AddressRefused as refused:
        raise Invalid("callback_url_refused", host=parts.hostname[:100], reason=refused.reason) from None
    return value.strip()

"""Images a chat message names by an http(s) URL, fetched by the gateway under limits.

Only public addresses are fetched (`gateway.addresses`), and the connection goes to the address that was
checked. Redirects are followed by hand, each checked the
same way; the whole download has one time limit and a size limit (the reference image limit) counted on the
bytes as they arrive, uncompressed: a compressed answer is refused (`gateway.bounded_http`).
"""

from __future__ import annotations

import asyncio
from urllib.parse import SplitResult, urlsplit

import httpx

from gateway.addresses import AddressRefused, checked_address, netloc
from gateway.bounded_http import IDENTITY, ReplyRefused, read_bounded
from gateway.errors import BadRequest, Invalid, TooLarge

MAX_REDIRECTS = 3
_PORTS = {"http": 80, "https": 443}


async def fetch_image(url: str, *, max_bytes: int, timeout: float, allow_private: bool = False) -> bytes:
    """The bytes at `url`; 4xx errors for a refused address, a slow or large download, or a failed one."""
    try:
        async with asyncio.timeout(timeout):
            return await _follow(url, max_bytes, allow_private)
    except TimeoutError:
        raise BadRequest("image_url_slow", seconds=f"{timeout:g}") from None


async def _follow(url: str, max_bytes: int, allow_private: bool) -> bytes:
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts, address = await _checked_target(url, allow_private)
            target = parts._replace(netloc=netloc(address, parts.port or _PORTS[parts.scheme])).geturl()
            headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*", **IDENTITY}
            try:
                async with client.stream("GET", target, headers=headers, extensions={"sni_hostname": parts.hostname}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = str(httpx.URL(url).join(response.headers["location"]))
                        continue
                    if response.status_code != 200:
                        raise BadRequest("image_url_failed", status=response.status_code)
                    return await _body(response, max_bytes)
            except httpx.HTTPError as exc:
                raise BadRequest("image_url_unreachable", reason=type(exc).__name__) from None
        raise BadRequest("image_url_redirects", limit=MAX_REDIRECTS)


async def _checked_target(url: str, allow_private: bool) -> tuple[SplitResult, str]:
    parts = urlsplit(url)
    if parts.scheme not in _PORTS or not parts.hostname:
        raise Invalid("image_url_scheme")
    try:
        port = parts.port or _PORTS[parts.scheme]
    except ValueError:
        raise Invalid("image_url_scheme") from None
    try:
        return parts, await checked_address(parts.hostname, port, allow_private=allow_private)
    except AddressRefused as refused:
        if refused.reason == "private":
            raise Invalid("image_url_private", host=parts.hostname[:100]) from None
        raise BadRequest("image_url_unresolved", host=parts.hostname[:100]) from None


async def _body(response: httpx.Response, max_bytes: int) -> bytes:
    try:
        return await read_bounded(response, max_bytes)
    except ReplyRefused as refused:
        if refused.encoding:
            raise BadRequest("image_url_compressed", encoding=refused.encoding) from None
        raise TooLarge("image_url_too_large", limit=max_bytes) from None

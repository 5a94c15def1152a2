"""Replies from servers the gateway does not trust (a webhook receiver, a chat image's URL), read under bounds.

A reply is streamed, never read whole; it is asked for without compression (`Accept-Encoding: identity`) and
refused when it comes compressed anyway, so the bytes counted against the cap are the bytes kept (a gzip bomb
never unpacks); and the caller puts the whole exchange under one deadline (`asyncio.timeout`), since httpx's
timeouts count per read and a server that trickles a byte at a time never meets them.
"""

from __future__ import annotations

import httpx

# Asked of every untrusted server: the reply's bytes on the wire are the bytes the gateway keeps.
IDENTITY = {"Accept-Encoding": "identity"}
_PLAIN = {"", "identity"}


class ReplyRefused(Exception):
    """The reply is compressed (`encoding`) or longer than the cap (`limit`)."""

    def __init__(self, *, encoding: str | None = None, limit: int | None = None) -> None:
        super().__init__(f"compressed ({encoding})" if encoding else f"longer than {limit} bytes")
        self.encoding = encoding
        self.limit = limit


def refuse_compressed(response: httpx.Response) -> None:
    """ReplyRefused when the reply names a content encoding other than identity."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in _PLAIN:
        raise ReplyRefused(encoding=encoding[:40])


async def read_bounded(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed reply, as it came (no decoding), stopped as soon as it passes `max_bytes`."""
    refuse_compressed(response)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ReplyRefused(limit=max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():  # raw: httpx unpacks nothing, whatever the headers say
        size += len(chunk)
        if size > max_bytes:
            raise ReplyRefused(limit=max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)

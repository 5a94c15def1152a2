"""The browser's egress proxy (INSTANCE_PROXY): Playwright's launch option, and a relay for SOCKS5 with a login.

Chromium speaks HTTP and HTTPS proxies with credentials (Playwright answers their 407), and SOCKS5 without any.
For SOCKS5 with a user name and password, the browser is pointed at a relay on 127.0.0.1 that takes its
SOCKS5 requests without a login and passes each one upstream with the login (RFC 1928 and 1929). Only the
browser uses any of it: the instance's own HTTP server and its callers never see the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass
from typing import Any

from fleet_contract import proxy as proxy_grammar

log = logging.getLogger(__name__)

RELAY_CONNECT_TIMEOUT_S = 30.0
# Pages on this host (the instance's own, e.g. a bot check on localhost) go direct; naming them here also
# stops Playwright from adding `<-loopback>`, which would send them to the proxy.
LOOPBACK_BYPASS = "localhost,127.0.0.1,[::1]"


class ProxyConfigError(ValueError):
    """INSTANCE_PROXY cannot be used; the message never holds its credentials."""


@dataclass(frozen=True)
class ProxyConfig:
    scheme: str
    host: str
    port: int
    username: str
    password: str

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def masked(self) -> str:
        return f"{self.scheme}://{'***@' if self.username else ''}{self.address}"


def parse_proxy(url: str) -> ProxyConfig:
    """INSTANCE_PROXY by the contract's grammar (the gateway checked it with the same rules)."""
    try:
        parsed = proxy_grammar.parse_proxy(url)
    except proxy_grammar.ProxyURLError:
        raise ProxyConfigError(
            f"INSTANCE_PROXY must be {'|'.join(proxy_grammar.SCHEMES)}://[user:password@]host:port"
        ) from None
    username, password = parsed.credentials
    return ProxyConfig(parsed.browser_scheme, parsed.host, parsed.port, username, password)


class BrowserProxy:
    """What `chromium.launch(proxy=...)` gets, plus the relay it may need; started once, closed at shutdown."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._relay: asyncio.Server | None = None

    @property
    def needs_relay(self) -> bool:
        return self.config.scheme == "socks5" and bool(self.config.username)

    async def start(self) -> None:
        if self.needs_relay:
            self._relay = await asyncio.start_server(self._relay_one, "127.0.0.1", 0)
            log.info("browser proxy %s through a local SOCKS5 relay", self.config.masked)
        else:
            log.info("browser proxy %s", self.config.masked)

    async def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            with contextlib.suppress(Exception):
                await self._relay.wait_closed()

    def launch_option(self) -> dict[str, Any]:
        """Playwright's `proxy`: the upstream (or the relay), its login, and the loopback left direct."""
        c = self.config
        if self._relay is not None:
            port = self._relay.sockets[0].getsockname()[1]
            return {"server": f"socks5://127.0.0.1:{port}", "bypass": LOOPBACK_BYPASS}
        option: dict[str, Any] = {"server": f"{c.scheme}://{c.address}", "bypass": LOOPBACK_BYPASS}
        if c.username:
            option.update(username=c.username, password=c.password)
        return option

    # ---- the relay -------------------------------------------------------------------------------

    async def _relay_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            request = await _accept_browser(reader, writer)
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.config.host, self.config.port), RELAY_CONNECT_TIMEOUT_S
            )
            reply = await asyncio.wait_for(self._handshake(up_reader, upstream, request), RELAY_CONNECT_TIMEOUT_S)
            writer.write(reply)
            await writer.drain()
            if reply[1] != 0:
                return
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except ProxyConfigError as exc:
            log.warning("SOCKS5 relay: %s", exc)
            with contextlib.suppress(Exception):
                writer.write(b"\x05\x01\x00\x01" + bytes(6))
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.debug("relay connection ended: %s", exc)
            # "general failure" before any tunnel: the browser shows its network error, as with a dead proxy.
            with contextlib.suppress(Exception):
                writer.write(b"\x05\x01\x00\x01" + bytes(6))
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
        """Greet upstream with the login, send the browser's CONNECT request as it was, return the reply."""
        user, password = self.config.username.encode(), self.config.password.encode()
        writer.write(b"\x05\x01\x02")
        await writer.drain()
        if await reader.readexactly(2) != b"\x05\x02":
            raise ProxyConfigError("the upstream SOCKS5 proxy does not take a user name and password")
        writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        await writer.drain()
        if (await reader.readexactly(2))[1] != 0:
            raise ProxyConfigError("the upstream SOCKS5 proxy refused the user name or password")
        writer.write(request)
        await writer.drain()
        return await _read_reply(reader)


async def _accept_browser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """The browser's greeting (answered: no login) and its CONNECT request, returned as raw bytes."""
    version, count = await reader.readexactly(2)
    await reader.readexactly(count)
    if version != 5:
        raise ProxyConfigError("not a SOCKS5 client")
    writer.write(b"\x05\x00")
    await writer.drain()
    head = await reader.readexactly(4)
    return head + await _read_address(reader, head[3])


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    return head + await _read_address(reader, head[3])


async def _read_address(reader: asyncio.StreamReader, kind: int) -> bytes:
    """An address and port in SOCKS5's encoding (IPv4, domain name or IPv6), as raw bytes."""
    if kind == 1:
        return await reader.readexactly(4 + 2)
    if kind == 3:
        length = await reader.readexactly(1)
        return length + await reader.readexactly(struct.unpack("B", length)[0] + 2)
    if kind == 4:
        return await reader.readexactly(16 + 2)
    raise ProxyConfigError(f"unknown SOCKS5 address type {kind}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def browser_proxy(url: str | None) -> BrowserProxy | None:
    """The browser's proxy from INSTANCE_PROXY, or None to go direct."""
    return BrowserProxy(parse_proxy(url)) if url and url.strip() else None

"""The browser's egress proxy (INSTANCE_PROXY): Playwright's launch option, and a relay for SOCKS5 with a login.

Chromium speaks HTTP and HTTPS proxies with credentials (Playwright answers their 407), and SOCKS5 without any.
For SOCKS5 with a user name and password, the browser is pointed at a relay on 127.0.0.1 that it speaks HTTP to
(CONNECT, and absolute-URI requests for plain http), and that passes each one upstream as a SOCKS5 CONNECT with the
login (RFC 1928 and 1929). The relay wants a login of its own, made afresh by each instance process and handed to
Chromium through Playwright only: under the `local` runtime 127.0.0.1 is the host's loopback, which every process
and user of the host can reach. Only the browser uses any of it: the instance's own HTTP server and its callers
never see the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import logging
import secrets
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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
        # The relay's own login: random per process, known only to this process and, through Playwright, Chromium.
        self._relay_user = f"relay-{secrets.token_hex(4)}"
        self._relay_password = secrets.token_urlsafe(24)
        self._relay_authorization = "Basic " + base64.b64encode(f"{self._relay_user}:{self._relay_password}".encode()).decode()

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
            return {"server": f"http://127.0.0.1:{port}", "username": self._relay_user, "password": self._relay_password,
                    "bypass": LOOPBACK_BYPASS}
        option: dict[str, Any] = {"server": f"{c.scheme}://{c.address}", "bypass": LOOPBACK_BYPASS}
        if c.username:
            option.update(username=c.username, password=c.password)
        return option

    # ---- the relay -------------------------------------------------------------------------------

    async def _relay_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            request = await asyncio.wait_for(_read_request(reader), RELAY_CONNECT_TIMEOUT_S)
            if not hmac.compare_digest(request.authorization.encode(), self._relay_authorization.encode()):
                writer.write(PROXY_LOGIN_WANTED)  # Chromium asks Playwright for the login, then comes again
                await writer.drain()
                return
            up_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.config.host, self.config.port), RELAY_CONNECT_TIMEOUT_S
            )
            reply = await asyncio.wait_for(
                self._handshake(up_reader, upstream, _socks_connect(request.host, request.port)), RELAY_CONNECT_TIMEOUT_S
            )
            if reply[1] != 0:
                writer.write(BAD_GATEWAY)
                await writer.drain()
                return
            if request.method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(request.origin_form())  # one request, then both sides close
            await writer.drain()
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except ProxyConfigError as exc:
            log.warning("SOCKS5 relay: %s", exc)
            with contextlib.suppress(Exception):
                writer.write(BAD_GATEWAY)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            log.debug("relay connection ended: %s", exc)
            # Before any tunnel: the browser shows its network error, as with a dead proxy.
            with contextlib.suppress(Exception):
                writer.write(BAD_GATEWAY)
        finally:
            for w in (writer, upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
        """Greet upstream with the login, send the CONNECT request, return the reply."""
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


PROXY_LOGIN_WANTED = (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                      b'Proxy-Authenticate: Basic realm="instance relay"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_HOP_BY_HOP = ("proxy-", "connection:", "keep-alive:")


@dataclass(frozen=True)
class RelayRequest:
    """The browser's request to the relay: CONNECT host:port, or a plain-http request in absolute form."""

    method: str
    host: str
    port: int
    path: str  # the origin-form target of a plain-http request ("/" for CONNECT)
    version: str
    headers: list[str]
    authorization: str  # Proxy-Authorization as sent, "" when absent

    def origin_form(self) -> bytes:
        """The plain-http request as the origin server takes it: its path, without the proxy's headers."""
        kept = [h for h in self.headers if not h.lower().startswith(_HOP_BY_HOP)]
        return "\r\n".join([f"{self.method} {self.path} {self.version}", *kept, "Connection: close", "", ""]).encode("latin-1")


async def _read_request(reader: asyncio.StreamReader) -> RelayRequest:
    """The request line and headers (the body, if any, follows on the stream); ValueError when it is not HTTP."""
    first = await reader.readexactly(1)
    if not first.isalpha():  # a SOCKS greeting or other binary: refused at once, not after the timeout
        raise ValueError("not an HTTP proxy request")
    head = first + await reader.readuntil(b"\r\n\r\n")  # at most the reader's limit (64 KiB)
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = [line for line in lines[1:] if line]
    authorization = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")), "")
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return RelayRequest(method, host.strip("[]"), int(port), "/", version, headers, authorization)
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError("not a proxy request")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return RelayRequest(method, url.hostname, url.port or 80, path, version, headers, authorization)


def _socks_connect(host: str, port: int) -> bytes:
    """A SOCKS5 CONNECT request for host:port (an address as such, a name for the proxy to resolve)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) < 256:
            raise ValueError("host name too long") from None
        return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port)
    kind = b"\x01" if address.version == 4 else b"\x04"
    return b"\x05\x01\x00" + kind + address.packed + struct.pack(">H", port)


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

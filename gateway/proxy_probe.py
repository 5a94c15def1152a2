"""One trial connection through an egress proxy: does it answer, log us in, and open a tunnel to a target?

HTTP and HTTPS proxies get a `CONNECT target`; SOCKS5 proxies a CONNECT by name (RFC 1928, login RFC 1929),
whose reply names the address the proxy bound for it (its exit, as the proxy reports it). Nothing is sent
through the tunnel. The result holds a code and parameters for the reader's words, never the password.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from fleet_contract.proxy import ProxyURL

SOCKS_REPLIES = {
    1: "general failure",
    2: "not allowed by the proxy's rules",
    3: "network unreachable",
    4: "host unreachable (or its name cannot be resolved)",
    5: "connection refused by the target",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
MAX_HEADER_BYTES = 16_384


@dataclass
class ProbeResult:
    success: bool
    latency_ms: float | None = None  # from the first byte sent to the tunnel opened
    connect_ms: float | None = None  # to the proxy's own port (TCP, and TLS for https)
    exit_address: str | None = None  # as the proxy reported it; None when it does not say
    error: str | None = None  # refused, dns, timeout, unreachable, auth_required, auth_failed, tls, protocol, target, closed
    params: dict[str, Any] = field(default_factory=dict)  # for the error's words


class _Failed(Exception):
    def __init__(self, error: str, **params: Any) -> None:
        super().__init__(error)
        self.error = error
        self.params = params


def parse_target(value: str) -> tuple[str, int]:
    """host:port (IPv6 in brackets); ValueError when it is not one."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return host, int(port)


async def probe(proxy: ProxyURL, target: tuple[str, int], timeout: float) -> ProbeResult:
    """Connect through `proxy` to `target`, within `timeout` seconds in all."""
    began = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    result = ProbeResult(success=False)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await _connect(proxy)
            result.connect_ms = _ms(began)
            if proxy.scheme in ("http", "https"):
                await _http_connect(reader, writer, proxy, target)
            else:
                result.exit_address = await _socks5_connect(reader, writer, proxy, target)
            result.latency_ms = _ms(began)
            result.success = True
    except _Failed as exc:
        result.error, result.params = exc.error, exc.params
    except TimeoutError:
        result.error, result.params = "timeout", {"seconds": f"{timeout:g}"}
    except asyncio.IncompleteReadError:
        # The far end hung up mid-handshake: not this kind of proxy, or a relay with nothing behind it.
        result.error = "closed"
    except ConnectionResetError:
        result.error = "closed"
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
    result.params.setdefault("address", proxy.address)
    result.params.setdefault("scheme", proxy.scheme)
    result.params.setdefault("target", _show(target))
    return result


async def _connect(proxy: ProxyURL) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    tls = ssl.create_default_context() if proxy.scheme == "https" else None
    try:
        return await asyncio.open_connection(proxy.host, proxy.port, ssl=tls, server_hostname=proxy.host if tls else None)
    except socket.gaierror as exc:
        raise _Failed("dns", host=proxy.host, reason=exc.strerror or str(exc)) from None
    except ConnectionRefusedError:
        raise _Failed("refused") from None
    except ssl.SSLError as exc:
        raise _Failed("tls", reason=exc.reason or str(exc)) from None
    except OSError as exc:
        raise _Failed("unreachable", reason=exc.strerror or str(exc)) from None


async def _http_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxyURL, target: tuple[str, int]
) -> None:
    where = _show(target)
    lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}"]
    if proxy.username is not None:
        user, password = proxy.credentials
        lines.append("Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
    await writer.drain()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Failed("protocol") from None
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _Failed("protocol")
    status = int(parts[1])
    if status == 407:
        raise _Failed("auth_failed" if proxy.username is not None else "auth_required")
    if not 200 <= status < 300:
        raise _Failed("target", reason=f"HTTP {status} {parts[2] if len(parts) > 2 else ''}".strip())


async def _socks5_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proxy: ProxyURL, target: tuple[str, int]
) -> str | None:
    login = proxy.username is not None
    writer.write(b"\x05\x02\x00\x02" if login else b"\x05\x01\x00")
    await writer.drain()
    version, method = await reader.readexactly(2)
    if version != 5:
        raise _Failed("protocol")
    if method == 0xFF:
        raise _Failed("auth_required" if not login else "auth_failed")
    if method == 2:
        if not login:
            raise _Failed("auth_required")
        user, password = (part.encode("utf-8")[:255] for part in proxy.credentials)
        writer.write(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        await writer.drain()
        _sub, status = await reader.readexactly(2)
        if status != 0:
            raise _Failed("auth_failed")
    elif method != 0:
        raise _Failed("protocol")
    host, port = target
    try:
        ip = ipaddress.ip_address(host)
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        name = host.encode("idna")[:255]
        address = b"\x03" + bytes([len(name)]) + name
    writer.write(b"\x05\x01\x00" + address + struct.pack("!H", port))
    await writer.drain()
    _v, reply, _rsv, kind = await reader.readexactly(4)
    if kind == 1:
        bound: str = str(ipaddress.ip_address(await reader.readexactly(4)))
    elif kind == 4:
        bound = str(ipaddress.ip_address(await reader.readexactly(16)))
    elif kind == 3:
        bound = (await reader.readexactly((await reader.readexactly(1))[0])).decode("idna", "replace")
    else:
        raise _Failed("protocol")
    bound_port = struct.unpack("!H", await reader.readexactly(2))[0]
    if reply != 0:
        raise _Failed("target", reason=SOCKS_REPLIES.get(reply, f"SOCKS5 reply {reply}"))
    if bound in ("0.0.0.0", "::"):
        return None  # the proxy chose not to say
    return f"[{bound}]:{bound_port}" if ":" in bound else f"{bound}:{bound_port}"


def _show(target: tuple[str, int]) -> str:
    host, port = target
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)

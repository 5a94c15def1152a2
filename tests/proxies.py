"""Small recording proxies for the tests: HTTP (CONNECT and absolute-URI forwarding) and SOCKS5, each with an
optional login, each remembering the hosts it carried.

Standalone (no project imports), so the end-to-end tests can run it in a container from the simulator image:
    python proxies.py --kind http --port 8888       # prints "CARRIED host:port" for each connection
In-process: `ProxyThread(...)` runs one in a thread of its own (the instance tests).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import threading
from collections.abc import Callable


class RecordingProxy:
    def __init__(self, kind: str = "http", *, username: str | None = None, password: str | None = None,
                 hosts: dict[str, str] | None = None, on_carry: Callable[[str], None] | None = None) -> None:
        assert kind in ("http", "socks5")
        self.kind, self.username, self.password = kind, username, password
        self.hosts = hosts or {}  # name -> address: names only this proxy can resolve
        self.carried: list[str] = []  # "host:port" of every connection made for a client
        self.refused_logins = 0
        self._on_carry = on_carry
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        handler = self._http if self.kind == "http" else self._socks5
        self._server = await asyncio.start_server(handler, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # Open tunnels end too: a dead proxy must look dead to the browser.
            for client in list(self._clients):
                client.close()
            await self._server.wait_closed()

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.carried.append(f"{host}:{port}")
        if self._on_carry:
            self._on_carry(f"{host}:{port}")
        return await asyncio.open_connection(self.hosts.get(host, host), port)

    # ---- HTTP ----

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = [line for line in lines[1:] if line]
            if self.username is not None and not self._http_login_ok(headers):
                self.refused_logins += 1
                writer.write(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n'
                             b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                up_reader, up_writer = await self._open(host.strip("[]"), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # GET http://host:port/path: one request per connection, then both sides close
                rest = target.split("://", 1)[1]
                authority, _, path = rest.partition("/")
                host, _, port = authority.partition(":")
                up_reader, up_writer = await self._open(host, int(port or 80))
                kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))]
                request = "\r\n".join([f"{method} /{path} {version}", *kept, "Connection: close", "", ""])
                up_writer.write(request.encode("latin-1"))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            with contextlib.suppress(Exception):
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _http_login_ok(self, headers: list[str]) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return any(h.lower().startswith("proxy-authorization:") and h.split(":", 1)[1].strip() == f"Basic {expected}"
                   for h in headers)

    # ---- SOCKS5 (RFC 1928, login RFC 1929) ----

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            _version, count = await reader.readexactly(2)
            methods = await reader.readexactly(count)
            wanted = 2 if self.username is not None else 0
            if wanted not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(bytes([5, wanted]))
            if wanted == 2:
                await reader.readexactly(1)
                user = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
                password = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
                if (user, password) != (self.username, self.password):
                    self.refused_logins += 1
                    writer.write(b"\x01\x01")
                    return
                writer.write(b"\x01\x00")
            _v, _cmd, _rsv, kind = await reader.readexactly(4)
            if kind == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                host = str(ipaddress.ip_address(await reader.readexactly(4 if kind == 1 else 16)))
            port = int.from_bytes(await reader.readexactly(2), "big")
            try:
                up_reader, up_writer = await self._open(host, port)
            except OSError:
                writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
                return
            # BND.ADDR/BND.PORT: the address this proxy connected from, as real SOCKS5 servers report it.
            bound = ipaddress.ip_address(up_writer.get_extra_info("sockname")[0])
            port_bytes = up_writer.get_extra_info("sockname")[1].to_bytes(2, "big")
            writer.write(bytes([5, 0, 0, 1 if bound.version == 4 else 4]) + bound.packed + port_bytes)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


class ProxyThread:
    """A RecordingProxy on its own event loop in a thread; stop() kills it, start() brings it back on its port."""

    def __init__(self, kind: str = "http", **options: object) -> None:
        self.proxy = RecordingProxy(kind, **options)  # type: ignore[arg-type]
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    @property
    def carried(self) -> list[str]:
        return list(self.proxy.carried)

    def url(self, scheme: str | None = None, *, login: bool = True) -> str:
        p = self.proxy
        auth = f"{p.username}:{p.password}@" if login and p.username is not None else ""
        return f"{scheme or p.kind}://{auth}127.0.0.1:{self.port}"

    def start(self) -> ProxyThread:
        self.port = asyncio.run_coroutine_threadsafe(self.proxy.start(port=self.port), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(10)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("http", "socks5"), default="http")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()

    async def serve() -> None:
        proxy = RecordingProxy(args.kind, username=args.username, password=args.password,
                               on_carry=lambda where: print(f"CARRIED {where}", flush=True))
        port = await proxy.start(args.host, args.port)
        print(f"LISTENING {args.kind} {port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()

"""A TCP relay from the fleet network's gateway address on the host to a proxy on the host's loopback.

Desktop proxy clients (Clash and the like) listen on 127.0.0.1 only; inside a container that address is the
container itself. The docker runtime runs this file (standard library only, passed to `python -c`) in a small
container with the host's network: it listens on the fleet network's gateway address, takes connections from
that network's subnets (and this host's own addresses) only, and passes each one, byte for byte, to the same
port on the host's loopback. It sees nothing the proxy itself would not (the instance still logs in to it).

    python loopback_relay.py --listen 172.18.0.1 --target-port 7890 --allow 172.18.0.0/16
prints `RELAY LISTENING 172.18.0.1:<port>` once it listens (the target's port when free, else any).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys

CONNECT_TIMEOUT_S = 10.0
LOOPBACK_HOSTS = ("127.0.0.1", "::1")  # a desktop client may listen on either


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    # Half-close: the other direction may still carry the end of an answer.
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()


async def _open_loopback(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    last: OSError = OSError(f"nothing listens on the host's loopback port {port}")
    for host in LOOPBACK_HOSTS:
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            last = exc if isinstance(exc, OSError) else OSError(f"timeout connecting to {host}:{port}")
    raise last


def _own_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """One of this host's own addresses (a process here, e.g. the gateway testing the proxy): it could reach the
    loopback itself anyway. Binding to an address succeeds only where it is local."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
        return True
    except OSError:
        return False


def handler(target_port: int, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]):  # noqa: ANN201
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("",)
        try:
            source = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
            admitted = any(source in network for network in allowed) or _own_address(source)
        except ValueError:
            admitted = False
        upstream: asyncio.StreamWriter | None = None
        try:
            if not admitted:
                print(f"RELAY REFUSED {peer[0]} (not on the fleet network)", flush=True)
                return
            try:
                up_reader, upstream = await _open_loopback(target_port)
            except OSError as exc:
                print(f"RELAY UPSTREAM FAILED {exc}", flush=True)
                return
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        finally:
            for each in (writer, upstream):
                if each is not None:
                    with contextlib.suppress(Exception):
                        each.close()

    return one


async def serve(listen: str, target_port: int, allow: list[str], port: int | None = None) -> None:
    allowed = [ipaddress.ip_network(a, strict=False) for a in allow]
    one = handler(target_port, allowed)
    try:
        server = await asyncio.start_server(one, listen, target_port if port is None else port)
    except OSError:
        # The target's port is taken on this address: any free one will do, the gateway reads which.
        server = await asyncio.start_server(one, listen, 0)
    bound = server.sockets[0].getsockname()[1]
    print(f"RELAY LISTENING {listen}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="relay the fleet network to a proxy on the host's loopback")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--allow", action="append", required=True, help="a subnet whose clients are served")
    parser.add_argument("--port", type=int, default=None, help="where to listen (default: the target's port)")
    options = parser.parse_args(argv)
    asyncio.run(serve(options.listen, options.target_port, options.allow, options.port))


if __name__ == "__main__":
    main(sys.argv[1:])

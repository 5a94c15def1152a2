"""Free loopback ports for servers the tests start in other processes.

A port from `bind(0)` comes from the kernel's ephemeral range, the same range outgoing connections take their local
ports from: between the probe and the server's own bind, a connection (to Postgres, say) can take it, and the server
fails with "address already in use". So ports come from below that range, where nothing is handed out on its own.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

_LOW = 15000
_handed_out: set[int] = set()
_lock = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that binds now, outside the ephemeral range, never the same twice in this process."""
    high = max(_LOW + 1000, _ephemeral_start())
    with _lock:
        for _ in range(1000):
            port = random.randrange(_LOW, high)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free loopback port in {_LOW}-{high}")


def free_ports(count: int) -> list[int]:
    return [free_port() for _ in range(count)]


@contextlib.contextmanager
def serving(server: socketserver.BaseServer) -> Iterator[int]:
    """Serves a loopback test server on a thread while in the block; yields its port."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])  # type: ignore[index]
    finally:
        server.shutdown()
        server.server_close()

"""A hostile HTTP server on loopback, for webhook receivers and image URLs: it reads the request, then answers in
one of the ways that hurt a careless client. Every request's headers are recorded, with how many body bytes the
server managed to send before the client went away.

Modes:
- `endless`: `status` with no length, then a body that never ends (`chunk` bytes at a time, `pause` apart);
- `bomb`: `status` with `Content-Encoding: gzip`, a small body that unpacks to `bomb_bytes` of zeros;
- `drip`: the status line, then one header byte every `pause` seconds, for ever (every read gets a byte in time);
- `image`: 200 `image/png` with the bytes given (a control: a well-behaved server).
"""

from __future__ import annotations

import contextlib
import socketserver
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.ports import serving


def gzip_bomb(unpacked: int) -> bytes:
    """`unpacked` zeros, gzipped (about a thousandth of the size), packed a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    block = b"\0" * (1 << 20)
    parts = [packer.compress(block[: min(len(block), unpacked - done)]) for done in range(0, unpacked, len(block))]
    return b"".join(parts) + packer.flush()


@dataclass
class Hostile:
    mode: str
    pause: float = 0.05
    chunk: int = 1024
    status: int = 200
    bomb_bytes: int = 64 * 1024 * 1024
    content: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)  # {"headers", "sent", "ended"}
    _packed: bytes = b""

    def handle(self, stream: socketserver.StreamRequestHandler) -> None:
        headers = _read_request(stream)
        record: dict[str, Any] = {"headers": headers, "sent": 0, "ended": False}
        self.requests.append(record)
        with contextlib.suppress(OSError):
            getattr(self, f"_{self.mode}")(stream, record)
        record["ended"] = True

    def _endless(self, stream: socketserver.StreamRequestHandler, record: dict[str, Any]) -> None:
        stream.wfile.write(f"HTTP/1.1 {self.status} X\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".encode())
        block = b"x" * self.chunk
        while True:
            stream.wfile.write(block)
            stream.wfile.flush()
            record["sent"] += len(block)
            if self.pause:
                time.sleep(self.pause)

    def packed_bomb(self) -> bytes:
        """The bomb as sent (packed once; call before measuring, so the packing is not counted)."""
        if not self._packed:
            self._packed = gzip_bomb(self.bomb_bytes)
        return self._packed

    def _bomb(self, stream: socketserver.StreamRequestHandler, record: dict[str, Any]) -> None:
        body = self.packed_bomb()
        stream.wfile.write(f"HTTP/1.1 {self.status} X\r\nContent-Type: image/png\r\nContent-Encoding: gzip\r\n".encode()
                           + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        stream.wfile.write(body)
        stream.wfile.flush()
        record["sent"] += len(body)
        time.sleep(1.0)  # the connection stays open while the client reads (or not)

    def _drip(self, stream: socketserver.StreamRequestHandler, record: dict[str, Any]) -> None:
        stream.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
        while True:
            stream.wfile.write(b"a")
            stream.wfile.flush()
            record["sent"] += 1
            time.sleep(self.pause)

    def _image(self, stream: socketserver.StreamRequestHandler, record: dict[str, Any]) -> None:
        stream.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                           + f"Content-Length: {len(self.content)}\r\nConnection: close\r\n\r\n".encode() + self.content)
        record["sent"] += len(self.content)


def _read_request(stream: socketserver.StreamRequestHandler) -> dict[str, str]:
    stream.rfile.readline()
    headers: dict[str, str] = {}
    while (line := stream.rfile.readline().decode("latin-1").strip()):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    stream.rfile.read(int(headers.get("content-length", "0") or 0))
    return headers


@contextlib.contextmanager
def hostile_server(mode: str, **options: Any) -> Iterator[tuple[str, Hostile]]:
    """(base URL on 127.0.0.1, the server's record) for as long as the block runs."""
    hostile = Hostile(mode, **options)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            hostile.handle(self)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    with serving(server) as port:
        yield f"http://127.0.0.1:{port}", hostile


"""A tiny stdlib HTTP server for the bot-check page: serves it, keeps what it reports with the request headers.
It also answers STUN binding requests on the same port number (UDP), so that the page's WebRTC probe sees what a
STUN server would learn of the browser's address.

Each report is also printed to stdout as one JSON line `{"botcheck": {...}}`, so that a sidecar container's
`docker logs` carries it.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.botcheck.signals import evaluate

HERE = Path(__file__).parent
PAGE = ("page.html", "text/html; charset=utf-8")
# The page also at AI Studio's new-chat path: an instance whose INSTANCE_AISTUDIO_URL is this server opens it first.
FILES = {"/": PAGE, "/prompts/new_chat": PAGE, "/botcheck.js": ("botcheck.js", "text/javascript")}
STUN_COOKIE = 0x2112A442
# Ask for the high-entropy client hints, so that the report request carries them as Google's pages get them.
ACCEPT_CH = ("Sec-CH-UA-Full-Version-List, Sec-CH-UA-Platform-Version, Sec-CH-UA-Arch, Sec-CH-UA-Bitness, "
             "Sec-CH-UA-Model, Sec-CH-UA-WoW64")


class BotcheckServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], echo: bool = True) -> None:
        super().__init__(address, _Handler)
        self.echo = echo
        self._stun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stun.bind((self.server_address[0], self.server_port))
        threading.Thread(target=self._answer_stun, daemon=True).start()
        self.document_headers: dict[str, str] = {}
        self.reports: list[dict[str, Any]] = []
        self.reported = threading.Condition()

    def record(self, report: dict[str, Any], report_headers: dict[str, str]) -> dict[str, Any]:
        report["headers"] = {"document": self.document_headers, "report": report_headers}
        report["signals"] = evaluate(report)
        with self.reported:
            self.reports.append(report)
            self.reported.notify_all()
        if self.echo:
            print(json.dumps({"botcheck": report}), flush=True)
        return report

    def _answer_stun(self) -> None:
        """Binding requests get a XOR-MAPPED-ADDRESS of their sender (RFC 5389): the browser's srflx candidate."""
        while True:
            try:
                data, (host, port) = self._stun.recvfrom(2048)
            except OSError:
                return  # closed
            if len(data) < 20 or struct.unpack("!HHI", data[:8])[0::2] != (0x0001, STUN_COOKIE):
                continue
            address = int(ipaddress.IPv4Address(host)) ^ STUN_COOKIE
            attribute = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, port ^ (STUN_COOKIE >> 16), address)
            self._stun.sendto(struct.pack("!HHI", 0x0101, len(attribute), STUN_COOKIE) + data[8:20] + attribute,
                              (host, port))

    def server_close(self) -> None:
        super().server_close()
        self._stun.close()

    def wait_report(self, timeout: float) -> dict[str, Any]:
        with self.reported:
            if not self.reported.wait_for(lambda: self.reports, timeout):
                raise TimeoutError("the bot-check page reported nothing")
            return self.reports[-1]


class _Handler(BaseHTTPRequestHandler):
    server: BotcheckServer

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/report":
            body = json.dumps(self.server.reports[-1] if self.server.reports else None).encode()
            return self._send(200, body, "application/json")
        name, media = FILES.get(self.path.split("?")[0], (None, None))
        if name is None:
            return self._send(404, b"not found", "text/plain")
        if name == PAGE[0]:
            self.server.document_headers = self._headers()
        self._send(200, (HERE / name).read_bytes(), media, {"Accept-CH": ACCEPT_CH})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/report":
            return self._send(404, b"not found", "text/plain")
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            report = json.loads(raw)
        except json.JSONDecodeError:
            return self._send(400, b"report is not JSON", "text/plain")
        self.server.record(report if isinstance(report, dict) else {"error": "not an object"}, self._headers())
        self._send(204, b"", "text/plain")

    def _send(self, status: int, body: bytes, media: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": media, "Cache-Control": "no-store", **(extra or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: stdout carries reports only
        print(format % args, file=sys.stderr)

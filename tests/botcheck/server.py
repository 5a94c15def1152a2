"""A tiny stdlib HTTP server for the bot-check page: serves it, keeps what it reports with the request headers.

Each report is also printed to stdout as one JSON line `{"botcheck": {...}}`, so that a sidecar container's
`docker logs` carries it.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.botcheck.signals import evaluate

HERE = Path(__file__).parent
FILES = {"/": ("page.html", "text/html; charset=utf-8"), "/botcheck.js": ("botcheck.js", "text/javascript")}
# Ask for the high-entropy client hints, so that the report request carries them as Google's pages get them.
ACCEPT_CH = ("Sec-CH-UA-Full-Version-List, Sec-CH-UA-Platform-Version, Sec-CH-UA-Arch, Sec-CH-UA-Bitness, "
             "Sec-CH-UA-Model, Sec-CH-UA-WoW64")


class BotcheckServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], echo: bool = True) -> None:
        super().__init__(address, _Handler)
        self.echo = echo
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
        if self.path.split("?")[0] == "/":
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

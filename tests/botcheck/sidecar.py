"""The bot-check server as a sidecar container in an instance container's network namespace (Docker SDK), so
that the page is on the instance browser's own `localhost`, a secure context. Used by the container test and
the browser-mode benchmark; the image is the simulator's, which carries this package."""

from __future__ import annotations

import json
from typing import Any

# This module runs on the host only: the image, which has no tests/polling.py, runs server.py.
from tests.polling import wait_until

PORT = 8765
PAGE_URL = f"http://localhost:{PORT}/"


def run_sidecar(engine: Any, image: str, instance_container: Any, name: str, labels: dict[str, str],
                timeout: float = 30) -> Any:
    """Start the sidecar and return it once its server listens (it says so on stderr)."""
    container = engine.containers.run(
        image, ["python", "-m", "tests.botcheck", "--host", "127.0.0.1", "--port", str(PORT)],
        detach=True, name=name, labels=labels, network_mode=f"container:{instance_container.id}",
        security_opt=["no-new-privileges"], cap_drop=["ALL"],
    )
    wait_until(lambda: b"botcheck listening" in container.logs(stdout=False, stderr=True), timeout=timeout,
               what=lambda: f"{name} to listen; its log: {_log(container)}", pause=0.1)
    return container


def read_report(sidecar: Any, timeout: float = 30) -> dict[str, Any]:
    """The report line the sidecar prints (`{"botcheck": {...}}`) once the page has posted it."""

    def report_line() -> str | None:
        lines = sidecar.logs(stdout=True, stderr=False).decode(errors="replace").splitlines()
        return next((line for line in lines if line.startswith('{"botcheck"')), None)

    line = wait_until(report_line, timeout=timeout, what=lambda: f"a bot-check report; sidecar log:\n{_log(sidecar)}",
                      pause=0.2)
    return json.loads(line)["botcheck"]


def _log(container: Any) -> str:
    return container.logs().decode(errors="replace")[-2000:]

"""The bot-check server as a sidecar container in an instance container's network namespace (Docker SDK), so
that the page is on the instance browser's own `localhost`, a secure context. Used by the container test and
the browser-mode benchmark; the image is the simulator's, which carries this package."""

from __future__ import annotations

import json
import time
from typing import Any

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
    deadline = time.monotonic() + timeout
    while b"botcheck listening" not in container.logs(stdout=False, stderr=True):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not listen: {container.logs().decode(errors='replace')[-2000:]}")
        time.sleep(0.1)
    return container


def read_report(sidecar: Any, timeout: float = 30) -> dict[str, Any]:
    """The report line the sidecar prints (`{"botcheck": {...}}`) once the page has posted it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in sidecar.logs(stdout=True, stderr=False).decode(errors="replace").splitlines():
            if line.startswith('{"botcheck"'):
                return json.loads(line)["botcheck"]
        time.sleep(0.2)
    raise TimeoutError(f"no bot-check report; sidecar logs:\n{sidecar.logs().decode(errors='replace')[-2000:]}")

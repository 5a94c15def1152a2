"""A bounded fuzz run (schemathesis) over the OpenAPI documents of both listeners: whatever the generated
requests hold, no answer is a 5xx. The gateway runs as `python -m gateway` on the fake runtime with two
signed-in fake instances (so generation requests can run), SQLite, an API key and an admin token; each
operation gets at most FUZZ_EXAMPLES generated cases (AISTUDIO_FUZZ_EXAMPLES overrides)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.polling import wait_until
from tests.simulator.fixtures import free_port

REPO = Path(__file__).resolve().parents[2]
FUZZ_EXAMPLES = int(os.environ.get("AISTUDIO_FUZZ_EXAMPLES", "8"))
API_KEY = "fuzz-api-key"
ADMIN_TOKEN = "fuzz-admin-token-0123456789"


class Gateway:
    def __init__(self, data_dir: Path) -> None:
        self.api_port, self.admin_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
        env.update({
            "GATEWAY_RUNTIME": "fake", "GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_API_PORT": str(self.api_port),
            "GATEWAY_ADMIN_PORT": str(self.admin_port), "GATEWAY_API_KEYS": API_KEY, "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEWAY_RECONCILE_INTERVAL": "0.2", "GATEWAY_FETCH_TIMEOUT": "2", "GATEWAY_QUEUE_WAIT_TIMEOUT": "20",
            "PYTHONPATH": str(REPO),
        })
        self.log = (data_dir / "gateway.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "gateway"], cwd=REPO, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def wait_up(self) -> None:
        def health() -> httpx.Response:
            assert self.process.poll() is None, "the gateway exited"
            return httpx.get(f"{self.api}/health", timeout=2)

        wait_until(health, until=lambda r: r.status_code == 200, timeout=60, what="the gateway to listen",
                   ignore=(httpx.HTTPError,), pause=0.1)

    def start_instances(self, count: int) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=self.admin, headers=headers, timeout=30) as admin:
            ids = [admin.post("/api/instances", json={"name": f"fuzz-{n}"}).json()["instance_id"] for n in range(count)]
            for instance_id in ids:
                admin.post(f"/api/instances/{instance_id}/start")

            def states() -> list[tuple[str, str]]:
                views = [admin.get(f"/api/instances/{i}").json()["instance"] for i in ids]
                return [(v["status"], v["login_state"]) for v in views]

            wait_until(states, until=lambda seen: seen == [("running", "logged_in")] * count, timeout=30,
                       what="the fake instances running and logged in", pause=0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="aistudio-fuzz-") as folder:
        running = Gateway(Path(folder))
        try:
            running.wait_up()
            running.start_instances(2)
            yield running
        finally:
            running.stop()


def fuzz(base_url: str, document: dict[str, Any], headers: dict[str, str]) -> int:
    """Every operation of the document, FUZZ_EXAMPLES generated cases each; returns how many cases ran."""
    schema = schemathesis.openapi.from_dict(document)
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @FUZZ
        def call(case: Any) -> None:
            nonlocal ran
            ran += 1
            response = case.call(base_url=base_url, headers=headers, timeout=60)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )

        call()
    return ran


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)


def test_generation_listener_never_answers_5xx(gateway: Gateway) -> None:
    document = httpx.get(f"{gateway.api}/schema/openapi.json", timeout=30).json()
    ran = fuzz(gateway.api, document, {"Authorization": f"Bearer {API_KEY}"})
    print(f"{ran} cases over {len(document['paths'])} paths")
    assert ran > len(document["paths"])


def test_admin_listener_never_answers_5xx(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    document = httpx.get(f"{gateway.admin}/schema/openapi.json", headers=headers, timeout=30).json()
    assert fuzz(gateway.admin, document, headers) > len(document["paths"])

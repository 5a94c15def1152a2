"""Run the simulator as a real HTTP server for browser tests.

Use `start_simulator()` directly, or the pytest fixtures below from a conftest:
`from tests.simulator.fixtures import simulator_server, simulator_url  # noqa: F401`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a server saves its state and exits), then SIGKILL after `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def control(base_url: str, path: str, body: Any = None) -> Any:
    """Call the control API: POST with a JSON body when one is given, GET otherwise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method="GET" if body is None else "POST")
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_until_up(base_url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            control(base_url, "/_sim/record")
            return
        time.sleep(0.1)
    raise RuntimeError(f"simulator did not answer within {timeout} s:\n{log_path.read_text()}")


@contextlib.contextmanager
def start_simulator(host: str = "127.0.0.1", port: int | None = None, timeout: float = 20) -> Iterator[str]:
    """Run `python -m tests.simulator` in a subprocess; yields its base URL, kills it on exit."""
    port = port or free_port()
    base_url = f"http://{host}:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "simulator.log"
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "tests.simulator", "--host", host, "--port", str(port)]
            process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_until_up(base_url, process, log_path, timeout)
                yield base_url
            finally:
                stop_process(process, timeout=5)


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[str]:
    """One simulator for the whole test session."""
    with start_simulator() as base_url:
        yield base_url


@pytest.fixture
def simulator_url(simulator_server: str) -> str:
    """The session's simulator, reset to its defaults for this test."""
    control(simulator_server, "/_sim/reset", {})
    return simulator_server


def signin_field_centres(browser: Any, base_url: str, width: int = 1440, height: int = 900) -> dict[str, tuple[float, float]]:
    """Where the sign-in page's fields are at a viewport, measured in a page of `browser` (sync Playwright):
    what a live-view test clicks in an instance's browser, which it cannot inspect itself."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(base_url + "/ServiceLogin?continue=%2F")
        steps = (
            (("email", "input[type=email]"), ("next1", "#identifierNext button")),
            (("password", "input[type=password]"), ("next2", "#passwordNext button")),
        )
        centres: dict[str, tuple[float, float]] = {}
        for step, fields in enumerate(steps):
            if step:
                page.fill("input[type=email]", "someone")
                page.click("#identifierNext button")
            for name, selector in fields:
                page.locator(selector).wait_for()
                box = page.locator(selector).bounding_box()
                centres[name] = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        return centres
    finally:
        context.close()

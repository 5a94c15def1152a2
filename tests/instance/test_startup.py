"""Calls that reach the instance while its browser is still starting: each waits for the browser up to the
page-load timeout, then answers 503 (retry-safe), never a 500. Real Chromium, started late on purpose by a
wrapper that sleeps before it execs Debian's Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.instance.harness import REPO_ROOT, TOKEN, require_chromium
from tests.polling import wait_until
from tests.simulator.fixtures import control, free_port, stop_process

START_DELAY_S = 6  # longer than the page-load timeout below: the first calls give up before the browser is up
CALLS = [
    ("PUT", "/session", {"json": {"cookies": [], "origins": []}}),
    ("GET", "/session", {}),
    ("GET", "/screenshot", {}),
    ("POST", "/navigate", {"json": {"target": "home"}}),
    ("PUT", "/selectors?dry_run=true", {"json": {"roles": {"run_button": ["button.run"]}}}),
]


@pytest.fixture
def slow_browser(tmp_path: Path) -> Path:
    require_chromium()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    wrapper = tmp_path / "chromium-after-a-while"
    wrapper.write_text(f'#!/bin/sh\nsleep {START_DELAY_S}\nexec {chromium} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def starting_instance(slow_browser: Path, tmp_path: Path, simulator_url: str) -> Iterator[httpx.Client]:
    control(simulator_url, "/_sim/config", {"signin_required": False})  # the empty session below then signs in
    port = free_port()
    env = {
        **os.environ, "INSTANCE_HOST": "127.0.0.1", "INSTANCE_PORT": str(port), "INSTANCE_API_TOKEN": TOKEN,
        "INSTANCE_DATA_DIR": str(tmp_path / "data"), "INSTANCE_AISTUDIO_URL": simulator_url,
        "INSTANCE_CHROMIUM_PATH": str(slow_browser), "INSTANCE_BROWSER_MODE": "headless",
        "INSTANCE_PAGE_LOAD_TIMEOUT_S": "2",
    }
    with (tmp_path / "instance.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "instance"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        wait_until(lambda: client.get("/healthz").status_code == 200, timeout=20, what="the API", ignore=(httpx.TransportError,))
        yield client
    finally:
        client.close()
        stop_process(process)


def test_calls_while_the_browser_starts_are_503_then_served(starting_instance: httpx.Client) -> None:
    client = starting_instance
    # All at once: each waits up to the page-load timeout (2 s), well before the browser starts (6 s).
    with ThreadPoolExecutor(len(CALLS)) as pool:
        answers = list(pool.map(lambda call: client.request(call[0], call[1], **call[2]), CALLS))
    for (_, path, _), answer in zip(CALLS, answers, strict=True):
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert answer.json()["retry_safe"] is True and "browser" in answer.json()["detail"], (path, answer.text)
    wait_until(lambda: client.get("/status").json()["browser"] == "up", timeout=30, what="the browser")
    for method, path, kw in CALLS:
        answer = client.request(method, path, **kw)
        assert answer.is_success, (path, answer.status_code, answer.text[:300])


@pytest.fixture
def crashing_once_browser(tmp_path: Path) -> Path:
    """A Chromium that dies at its first launch (as one did under load in a container), then starts."""
    require_chromium()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    marker = tmp_path / "launched-once"
    wrapper = tmp_path / "chromium-crashing-once"
    wrapper.write_text(f'#!/bin/sh\nif [ ! -e {marker} ]; then touch {marker}; exit 1; fi\nexec {chromium} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_a_browser_that_dies_at_its_first_launch_is_launched_again(
    crashing_once_browser: Path, tmp_path: Path, simulator_url: str
) -> None:
    control(simulator_url, "/_sim/config", {"signin_required": False})
    port = free_port()
    env = {
        **os.environ, "INSTANCE_HOST": "127.0.0.1", "INSTANCE_PORT": str(port), "INSTANCE_API_TOKEN": TOKEN,
        "INSTANCE_DATA_DIR": str(tmp_path / "data"), "INSTANCE_AISTUDIO_URL": simulator_url,
        "INSTANCE_CHROMIUM_PATH": str(crashing_once_browser), "INSTANCE_BROWSER_MODE": "headless",
    }
    with (tmp_path / "instance.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "instance"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        status = wait_until(lambda: client.get("/status").json(), until=lambda s: s["ready"], timeout=60,
                            what="the instance ready after a failed first launch", ignore=(httpx.TransportError,))
        assert status["browser"] == "up" and status["counters"]["browser_restarts"] == 1, status
        assert (tmp_path / "launched-once").exists()
        assert b"browser launch failed" in (tmp_path / "instance.log").read_bytes()
    finally:
        client.close()
        stop_process(process)

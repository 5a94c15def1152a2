"""A real gateway (`python -m gateway`) for browser tests and the panel benchmark, and a real Chromium to drive it.

The gateway runs as a subprocess with its own data folder and ports. With the `local` runtime its instances
are real `python -m instance` processes on this host; they outlive a gateway by design, so `start_gateway`
stops every instance through the API before it stops the gateway, and kills what is left of them (by the
process groups the local runtime recorded) as a last resort.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.polling import wait_until
from tests.simulator.fixtures import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "panel-test-token-0123456789"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]


def chromium_executable() -> str:
    """The same Chromium the instances use: Debian's headless shell when installed, else Debian's chromium."""
    from instance.settings import InstanceSettings

    return InstanceSettings().chromium_executable


def launch_browser(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS)


@dataclass
class Gateway:
    admin_url: str
    api_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    token: str | None
    api: httpx.Client  # the management API, with the bearer token

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self.api.get(f"/api/instances/{instance_id}").json()["instance"]

    def wait_instance(self, instance_id: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60, what: str = "") -> dict[str, Any]:
        try:
            return wait_until(lambda: self.instance(instance_id), until=predicate, timeout=timeout, what=what or "instance",
                              pause=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def create_running(self, name: str, *, timeout: float = 90) -> str:
        """An instance created and started through the API, once it runs."""
        instance_id = self.api.post("/api/instances", json={"name": name}).json()["instance_id"]
        self.api.post(f"/api/instances/{instance_id}/start")
        self.wait_instance(instance_id, lambda v: v["status"] == "running", timeout=timeout, what=f"{name} running")
        return instance_id

    def instance_token(self, instance_id: str) -> tuple[str, str]:
        """The instance's endpoint and bearer token, from the gateway's database (what the gateway itself uses)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.data_dir / "gateway.db")) as db:
            endpoint, token = db.execute(
                "SELECT endpoint, token FROM instances WHERE id = ?", (instance_id.replace("-", ""),)
            ).fetchone()
        return endpoint, token

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def start_gateway(
    data_dir: Path, aistudio_url: str, *, runtime: str = "local", token: str | None = ADMIN_TOKEN, **env: str
) -> Iterator[Gateway]:
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_port, api_port = free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "GATEWAY_RUNTIME": runtime,
        "GATEWAY_DATA_DIR": str(data_dir),
        "GATEWAY_ADMIN_PORT": str(admin_port),
        "GATEWAY_API_PORT": str(api_port),
        "GATEWAY_AISTUDIO_URL": aistudio_url,
        "GATEWAY_SIGNIN_URL": aistudio_url.rstrip("/") + "/ServiceLogin?continue={continue}",
        "GATEWAY_RECONCILE_INTERVAL": "0.5",
        # "Test proxy" asks for a tunnel to the simulator, which answers here, not to Google.
        "GATEWAY_PROXY_TEST_TARGET": aistudio_url.split("://", 1)[-1].split("/", 1)[0],
        "GATEWAY_LOCAL_PORT_RANGE_START": str(20000 + (os.getpid() * 7) % 20000),
        **({"GATEWAY_ADMIN_TOKEN": token} if token else {}),
        **env,
    }
    log_path = data_dir / "gateway.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    admin_url, api_url = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{api_port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = httpx.Client(base_url=admin_url, headers=headers, timeout=30, trust_env=False)
    gateway = Gateway(admin_url, api_url, data_dir, log_path, process, token, api)
    try:
        _wait_until_up(gateway)
        yield gateway
    finally:
        try:
            _stop_instances(gateway)
        finally:
            api.close()
            stop_process(process)
            _kill_local_leftovers(data_dir / "local")


def _wait_until_up(gateway: Gateway, timeout: float = 30) -> None:
    def stats() -> httpx.Response:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {gateway.process.returncode}:\n{gateway.log_tail()}")
        return gateway.api.get("/api/stats")

    try:
        wait_until(stats, until=lambda response: response.status_code == 200, timeout=timeout, what="the gateway to answer",
                   ignore=(httpx.HTTPError,), pause=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{gateway.log_tail()}") from None


def _stop_instances(gateway: Gateway) -> None:
    if gateway.process.poll() is not None:
        return
    # Best effort: whatever has not stopped in time is killed by _kill_local_leftovers.
    with contextlib.suppress(httpx.HTTPError, AssertionError):
        instances = gateway.api.get("/api/instances").json()["instances"]
        for view in instances:
            gateway.api.post(f"/api/instances/{view['instance_id']}/stop")
        wait_until(lambda: [v["status"] for v in gateway.api.get("/api/instances").json()["instances"]],
                   until=lambda statuses: all(s in ("stopped", "error") for s in statuses), timeout=30,
                   what="every instance stopped", pause=0.2)


def _kill_local_leftovers(base_dir: Path) -> None:
    """Instance processes this test's gateway started and did not stop: their recorded process groups."""
    for state_file in base_dir.glob("*/runtime.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(state_file.read_text())
            pgid = record.get("pgid") if record.get("pid") else None
            # Only while the group leader is still the process recorded (same start time), never a reused pid.
            if pgid and _start_time(int(pgid)) == record.get("proc_start"):
                os.killpg(int(pgid), signal.SIGKILL)


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def sign_in_through_the_live_view(page: Any, admin_url: str, centres: dict[str, tuple[float, float]], name: str) -> None:
    """On an instance's page in the panel: open the sign-in page, then sign in to the simulator as `acct-live`
    by clicks and keys on the live view's canvas (typed, pasted, and sent through the text box), as a person
    would. `centres` are the sign-in fields' positions in the instance's 1440x900 viewport."""
    from playwright.sync_api import expect

    page.click("[data-action=open-signin]")  # GATEWAY_SIGNIN_URL points the instance at the simulator
    expect(page.locator("#flash")).to_contain_text(name)
    canvas = page.locator("[data-lv=canvas]")
    frames = lambda: int(canvas.get_attribute("data-frames") or 0)  # noqa: E731

    def repainted(since: int) -> None:
        page.wait_for_function(f"() => Number(document.querySelector('[data-lv=canvas]').dataset.frames) > {since}")

    def click_at(point: tuple[float, float]) -> None:
        canvas.scroll_into_view_if_needed()  # as a person would: a click off screen reaches nothing
        box = canvas.bounding_box()
        x, y = box["x"] + point[0] * box["width"] / 1440, box["y"] + point[1] * box["height"] / 900
        assert 0 <= x < page.viewport_size["width"] and 0 <= y < page.viewport_size["height"]
        page.mouse.click(x, y)

    repainted(frames() + 1)  # the freshly loaded sign-in page is on the canvas
    assert canvas.get_attribute("data-page-width") == "1440"
    page.wait_for_timeout(500)  # and its script has set up the form, as a person would wait to see it
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=admin_url)
    page.evaluate("navigator.clipboard.writeText('live')")
    click_at(centres["email"])
    page.keyboard.type("acct-")  # keys on the focused canvas travel as text
    page.keyboard.press("Control+V")  # and a paste as the clipboard's text
    before = frames()
    click_at(centres["next1"])
    repainted(before)
    page.wait_for_timeout(500)  # the second step slides in
    click_at(centres["password"])
    page.fill("[data-lv=text-form] input", "密码-secret")  # the paste box, as on a phone
    page.click("[data-lv=text-form] button[type=submit]")
    page.click("[data-lv-key=Tab]")
    click_at(centres["next2"])


def login(page: Any, admin_url: str, token: str | None) -> None:
    """Signs the browser page in through the panel's form."""
    page.goto(admin_url + "/login")
    page.fill("[data-login-token]", token or "")
    page.click("[data-action=login]")
    page.wait_for_url(admin_url + "/")

"""Run the real instance service (`python -m instance`) in a subprocess against the simulator."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import skip_or_fail
from tests.polling import wait_until
from tests.simulator.fixtures import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-0123456789"


def require_chromium() -> None:
    """Tests that drive the browser need Debian's Chromium; in CI a missing one is a failure."""
    if not (shutil.which("chromium") or Path("/usr/bin/chromium-headless-shell").exists()):
        skip_or_fail("Chromium is not installed")


def signed_in_state(sim_url: str, account: str) -> dict:
    """A storage state the simulator accepts as signed in to `account`."""
    host = httpx.URL(sim_url).host
    cookies = [
        {"name": n, "value": account, "domain": host, "path": "/", "expires": time.time() + 86400 * 30,
         "httpOnly": True, "secure": False, "sameSite": "Lax"}
        for n in ("SID", "HSID", "SSID", "APISID", "SAPISID")
    ]
    return {"cookies": cookies, "origins": []}


def saved_cookie(data_dir: Path, name: str = "SIDTS") -> str | None:
    """The value of one cookie in the login the instance last wrote to its volume."""
    try:
        state = json.loads((data_dir / "storage_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return next((c["value"] for c in state.get("cookies", []) if c.get("name") == name), None)


def wait_saved_renewal(data_dir: Path, sim_url: str, account: str, timeout: float = 15) -> str:
    """Until the volume holds the simulator's newest value of the account's renewed cookie; that value."""
    from tests.simulator.fixtures import control

    def saved() -> str | None:
        current = control(sim_url, "/_sim/record")["current_cookie_by_account"].get(account)
        return current if current and saved_cookie(data_dir) == current else None

    return wait_until(saved, timeout=timeout, what=f"the renewed cookie of {account} on the volume")


def png_bytes(width: int = 64, height: int = 48, color: tuple = (200, 30, 30), pad_to: int = 0) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    data = out.getvalue()
    if pad_to > len(data):
        # Extra bytes after IEND keep it a valid PNG of the wanted size (for the 1 MB benchmark image).
        data += b"\0" * (pad_to - len(data))
    return data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class RunningInstance:
    base_url: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    client: httpx.Client

    def status(self) -> dict:
        return self.client.get("/status").json()

    def generate(self, prompt: str = "a red square", **body) -> httpx.Response:
        return self.client.post("/generate", json={"prompt": prompt, **body})

    def generate_between_checks(self, prompt: str, timeout: float = 20.0) -> httpx.Response:
        """Generate, waiting out the instance's own reachability check (which holds the task slot, as a task would)."""
        return wait_until(lambda: self.generate(prompt), until=lambda response: not _held_by_check(response),
                          timeout=timeout, what="the reachability check to free the task slot")

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition") -> dict:
        try:
            return wait_until(self.status, until=predicate, timeout=timeout, what=what, ignore=(httpx.HTTPError,), pause=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _held_by_check(response: httpx.Response) -> bool:
    return response.status_code == 409 and response.json().get("current_task") == "reachability-check"


@contextlib.contextmanager
def start_instance(sim_url: str, data_dir: Path, *, session: dict | None = None, **env: str) -> Iterator[RunningInstance]:
    data_dir.mkdir(parents=True, exist_ok=True)
    if session is not None:
        (data_dir / "storage_state.json").write_text(json.dumps(session))
    port = free_port()
    full_env = {
        **os.environ,
        "INSTANCE_HOST": "127.0.0.1",
        "INSTANCE_PORT": str(port),
        "INSTANCE_DATA_DIR": str(data_dir),
        "INSTANCE_API_TOKEN": TOKEN,
        "INSTANCE_AISTUDIO_URL": sim_url,
        "INSTANCE_SIGNIN_URL": sim_url + "/ServiceLogin?continue={continue}",
        "INSTANCE_PAGE_LOAD_TIMEOUT_S": "5",
        "INSTANCE_ELEMENT_TIMEOUT_S": "3",
        "INSTANCE_GENERATION_TIMEOUT_S": "8",
        "INSTANCE_BROWSER_RESTART_DELAY_S": "0.2",
        **env,
    }
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "instance"], cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    running = RunningInstance(base_url, data_dir, process, log_path, client)
    try:
        running.wait_for(lambda s: s.get("ready"), timeout=30, what="instance ready")
        yield running
    finally:
        client.close()
        stop_process(process)


def descendants(pid: int) -> list[int]:
    """All processes below `pid`, from /proc (the Chromium of an instance lives there)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def chromium_browser_pid(instance_pid: int) -> int:
    """The browser process: a Chromium below the instance that is not a --type= helper."""
    for pid in descendants(instance_pid):
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"chrom" in cmd[0] and not any(part.startswith(b"--type=") for part in cmd):
                return pid
    raise AssertionError("no Chromium browser process found under the instance")

"""The local runtime: real instance processes on this host.

Runs the real `instance` package (`python -m instance`, Debian's Chromium when installed). With
AISTUDIO_LOCAL_STANDIN=1, or while the instance package has no `__main__`, a small stand-in serves the
same /healthz and /status contract and starts a grandchild, so process-group handling is still tested.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.runtime.base import InstanceSpec, Runtime, RuntimeError_
from gateway.runtime.local import LocalRuntime
from tests.gateway.http_wait import wait_http
from tests.polling import await_until

REPO = Path(__file__).resolve().parents[2]
USE_STANDIN = (
    os.environ.get("AISTUDIO_LOCAL_STANDIN") == "1" or not (REPO / "instance" / "__main__.py").exists()
)
CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None

STANDIN = textwrap.dedent(
    '''
    """Stand-in for `python -m instance`: the /healthz and /status contract, one grandchild."""
    import json, os, signal, subprocess, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    token = os.environ.get("INSTANCE_API_TOKEN")
    child = subprocess.Popen(["sleep", "600"])  # stands for Chromium

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/healthz" and self.headers.get("Authorization") != f"Bearer {token}":
                return self.reply(401, {"detail": "missing or wrong token"})
            if self.path == "/healthz":
                return self.reply(200, {"ok": True})
            if self.path == "/status":
                return self.reply(200, {"ready": True, "browser": "up", "login_state": "unknown"})
            self.reply(404, {"detail": "not found"})

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((os.environ["INSTANCE_HOST"], int(os.environ["INSTANCE_PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # leaves the grandchild behind on purpose
    print(f"stand-in listening on {os.environ['INSTANCE_PORT']}, data in {os.environ['INSTANCE_DATA_DIR']}")
    server.serve_forever()
    '''
)


@pytest.fixture
def standin_path(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    if not USE_STANDIN:
        return None
    root = tmp_path_factory.mktemp("standin")
    (root / "instance").mkdir()
    (root / "instance" / "__init__.py").write_text("")
    (root / "instance" / "__main__.py").write_text(STANDIN)
    return str(root)


@pytest.fixture
async def base_dir(tmp_path: Path) -> AsyncIterator[Path]:
    base = tmp_path / "instances"
    yield base
    # Whatever a failed test left running: its process group goes.
    for record_path in base.glob("*/runtime.json"):
        record = json.loads(record_path.read_text())
        if record.get("pgid"):
            try:
                os.killpg(record["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
async def runtime(base_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[LocalRuntime]:
    rt = _runtime(base_dir)
    await rt.setup()
    failed_before = request.session.testsfailed
    yield rt
    if request.session.testsfailed > failed_before:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        for log_file in base_dir.glob("*/instance.log"):
            text = "\n".join(log_file.read_text(errors="replace").splitlines()[-80:])
            message = f"\n---- {log_file} after {request.node.name} ----\n{text}"
            reporter.write_line(message) if reporter else print(message)
    for iid in list(await rt.list_managed()):
        await rt.remove(iid, remove_volume=True)
    await rt.close()


PORT_BASE = random.randrange(30000, 50000, 100)


def _runtime(base_dir: Path, **kwargs) -> LocalRuntime:
    return LocalRuntime(
        base_dir, sys.executable, port_range_start=PORT_BASE, chromium_path=CHROMIUM, **kwargs
    )


def _spec(standin_path: str | None, **env: str) -> InstanceSpec:
    if standin_path:
        env["PYTHONPATH"] = standin_path
    return InstanceSpec(uuid.uuid4().hex[:12], "本地-1", uuid.uuid4().hex, env=env)


def _processes(data_dir: Path) -> list[int]:
    """Live processes of one instance: those started with its INSTANCE_DATA_DIR (the instance, the
    Playwright driver, Chromium, Chromium's crash handler) and the members of their process groups
    (Chromium's helpers, which overwrite their environment with their titles)."""
    marker = f"INSTANCE_DATA_DIR={data_dir}".encode()
    groups: dict[int, int] = {}
    marked: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):
                continue
            groups[int(proc.name)] = int(fields[2])
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                marked.add(int(proc.name))
        except OSError:
            continue
    marked_groups = {groups[p] for p in marked} - {os.getpgid(0)}
    return sorted(marked | {p for p, g in groups.items() if g in marked_groups})


async def test_start_serves_the_contract_with_its_token(
    runtime: LocalRuntime, base_dir: Path, standin_path: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(runtime, Runtime)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql+asyncpg://secret@db/fleet")
    spec = _spec(standin_path, INSTANCE_AISTUDIO_URL="http://127.0.0.1:9/")
    t0 = time.monotonic()
    state = await runtime.start(spec)
    assert state.phase == "running"
    assert state.endpoint.startswith("http://127.0.0.1:")
    await wait_http(f"{state.endpoint}/healthz")
    print(f"start to /healthz: {time.monotonic() - t0:.2f} s ({'stand-in' if standin_path else 'instance'})")

    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        assert (await http.get(f"{state.endpoint}/status")).status_code == 401
        ok = await http.get(f"{state.endpoint}/status", headers={"Authorization": f"Bearer {spec.token}"})
        assert ok.status_code == 200 and "ready" in ok.json()

    record = json.loads((base_dir / spec.instance_id / "runtime.json").read_text())
    assert str(record["pid"]) == state.handle
    assert state.endpoint.endswith(f":{record['port']}")
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{record['pid']}/environ").read_text().split("\0")
        if "=" in item
    )
    assert environ["INSTANCE_DATA_DIR"] == str(base_dir / spec.instance_id / "data")
    assert environ["INSTANCE_API_TOKEN"] == spec.token
    assert environ["INSTANCE_HOST"] == "127.0.0.1"
    assert environ["INSTANCE_AISTUDIO_URL"] == "http://127.0.0.1:9/"  # the spec's env
    assert not [k for k in environ if k.startswith("GATEWAY_")]  # the gateway's settings stay home
    assert (base_dir / spec.instance_id / "data").is_dir()
    # Starting a running instance changes nothing.
    assert (await runtime.start(spec)).handle == state.handle


async def test_two_instances_get_their_own_ports(runtime: LocalRuntime, standin_path: str | None) -> None:
    a, b = _spec(standin_path), _spec(standin_path)
    sa, sb = await asyncio.gather(runtime.start(a), runtime.start(b))
    assert sa.endpoint != sb.endpoint
    await asyncio.gather(wait_http(f"{sa.endpoint}/healthz"), wait_http(f"{sb.endpoint}/healthz"))
    assert set(await runtime.list_managed()) == {a.instance_id, b.instance_id}


async def test_a_new_runtime_adopts_live_processes(
    runtime: LocalRuntime, base_dir: Path, standin_path: str | None
) -> None:
    spec = _spec(standin_path)
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/healthz")

    restarted = _runtime(base_dir)  # as after a gateway restart
    await restarted.setup()
    seen = await restarted.inspect(spec.instance_id)
    assert (seen.phase, seen.handle, seen.endpoint) == ("running", state.handle, state.endpoint)
    assert (await restarted.start(spec)).handle == state.handle  # no second process
    assert (await restarted.list_managed())[spec.instance_id].phase == "running"

    # It can stop what it adopted (no child handle of its own), and the whole group goes.
    await restarted.stop(spec.instance_id, timeout=10)
    assert _processes(base_dir / spec.instance_id / "data") == []
    assert (await restarted.inspect(spec.instance_id)).phase == "exited"

    # A record whose pid now belongs to some other process is not adopted.
    record_path = base_dir / spec.instance_id / "runtime.json"
    record = json.loads(record_path.read_text())
    record.update(pid=os.getpid(), pgid=os.getpgid(0))
    record_path.write_text(json.dumps(record))
    assert (await _runtime(base_dir).inspect(spec.instance_id)).phase == "exited"
    record.update(pid=None, pgid=None)
    record_path.write_text(json.dumps(record))


async def test_stop_kills_the_process_group_and_is_idempotent(
    runtime: LocalRuntime, base_dir: Path, standin_path: str | None
) -> None:
    spec = _spec(standin_path)
    state = await runtime.start(spec)
    data_dir = base_dir / spec.instance_id / "data"
    await wait_http(f"{state.endpoint}/status", token=spec.token)
    if standin_path or CHROMIUM:
        # The stand-in's grandchild, or the real instance's driver and Chromium.
        await await_until(lambda: len(_processes(data_dir)) > (1 if standin_path else 3), timeout=60,
                          what="the instance's child processes")
    print("processes before stop:", len(_processes(data_dir)))

    t0 = time.monotonic()
    await runtime.stop(spec.instance_id, timeout=10)
    print(f"stop took {time.monotonic() - t0:.2f} s")
    assert _processes(data_dir) == []
    stopped = await runtime.inspect(spec.instance_id)
    assert stopped.phase == "exited" and stopped.endpoint is None
    await runtime.stop(spec.instance_id)  # stopped already: fine
    await runtime.stop("no-such-instance")  # missing: fine

    again = await runtime.start(spec)
    assert again.phase == "running" and again.handle != state.handle
    assert again.endpoint == state.endpoint  # its port again when free
    await wait_http(f"{again.endpoint}/healthz")


async def test_a_process_killed_from_outside_shows_exited(
    runtime: LocalRuntime, base_dir: Path, standin_path: str | None
) -> None:
    spec = _spec(standin_path)
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/status", token=spec.token)
    await await_until(lambda: len(_processes(base_dir / spec.instance_id / "data")) > 1, timeout=60,
                      what="the instance's child processes")
    os.kill(int(state.handle), signal.SIGKILL)
    seen = await await_until(lambda: runtime.inspect(spec.instance_id), until=lambda state: state.phase != "running",
                             timeout=10, what="the killed process to show")
    assert seen.phase == "exited"
    assert seen.exit_code == -signal.SIGKILL
    await runtime.stop(spec.instance_id)  # what the dead process left (Chromium) goes too
    assert _processes(base_dir / spec.instance_id / "data") == []
    again = await runtime.start(spec)  # the reconciler's restart is a plain start
    await wait_http(f"{again.endpoint}/healthz")


async def test_logs_tail_and_follow(runtime: LocalRuntime, base_dir: Path, standin_path: str | None) -> None:
    spec = _spec(standin_path)
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/healthz")
    log_path = base_dir / spec.instance_id / "instance.log"
    await await_until(lambda: log_path.read_text().count("\n") >= 2, timeout=15, what="two lines in the log")

    lines = [line async for line in runtime.logs(spec.instance_id, tail=200)]
    assert lines[0].startswith("[local runtime]")
    assert lines == log_path.read_text().splitlines()[-200:]
    assert [line async for line in runtime.logs(spec.instance_id, tail=1)] == lines[-1:]

    follower = runtime.logs(spec.instance_id, tail=1, follow=True)
    collected: list[str] = []

    async def drain() -> None:
        async for line in follower:
            collected.append(line)

    task = asyncio.create_task(drain())
    await await_until(lambda: collected, timeout=15, what="the follower to read up to the end")
    with open(log_path, "a") as f:  # what the process would print
        f.write("followed-line\n")
    await await_until(lambda: "followed-line" in collected, timeout=15, what="the followed line")
    await runtime.stop(spec.instance_id, timeout=10)
    await asyncio.wait_for(task, 10)  # ends by itself once the process is gone

    with pytest.raises(RuntimeError_):
        [line async for line in runtime.logs("no-such-instance")]


async def test_remove_with_and_without_data(
    runtime: LocalRuntime, base_dir: Path, standin_path: str | None
) -> None:
    spec = _spec(standin_path)
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/healthz")
    (base_dir / spec.instance_id / "data" / "marker").write_text("kept")

    await runtime.remove(spec.instance_id, remove_volume=False)  # stops it too
    assert _processes(base_dir / spec.instance_id / "data") == []
    assert (await runtime.inspect(spec.instance_id)).phase == "missing"
    assert (base_dir / spec.instance_id / "data" / "marker").read_text() == "kept"
    assert spec.instance_id not in await runtime.list_managed()

    await runtime.start(spec)
    await runtime.remove(spec.instance_id, remove_volume=True)
    assert not (base_dir / spec.instance_id).exists()
    await runtime.remove(spec.instance_id, remove_volume=True)  # gone already: fine

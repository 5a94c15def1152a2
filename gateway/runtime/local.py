"""The `local` engine: one instance process per instance on this host, for development and for
machines without Docker.

Each instance gets a folder `<base_dir>/<id>/` holding `data/` (its volume), `instance.log` (its stdout
and stderr) and `runtime.json` (pid, port, process start time), so a restarted gateway re-adopts the
processes that still run. A child runs in its own session and process group: stopping it signals the
whole group, Chromium included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fleet_contract import environment as instance_env
from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_INSTANCE_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    InstanceSpec,
    RuntimeError_,
    RuntimeState,
)

log = logging.getLogger(__name__)

STATE_FILE = "runtime.json"
LOG_FILE = "instance.log"
DATA_DIR = "data"
# Set in each child's environment; its descendants inherit it, whatever session they start.
_MARKER_ENV = "AISTUDIO_FLEET_LOCAL_INSTANCE"
_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
# The folder that holds the `instance` package when running from a source tree.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class LocalRuntime:
    """Runs each instance as `<python> -m instance` on this host; see the module docstring."""

    name = "local"

    def __init__(
        self,
        base_dir: Path,
        python: str,
        port_range_start: int = 18000,
        chromium_path: str | None = None,
        *,
        host: str = "127.0.0.1",
        port_range_size: int = 1000,
        module: str = "instance",
        base_env: Mapping[str, str] | None = None,
        log_rotate_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        """`base_env` is the environment children inherit (default: this process's, without
        `GATEWAY_*` and `INSTANCE_*` variables, so the gateway's secrets never reach an instance)."""
        self.base_dir = Path(base_dir)
        self.python = python
        self.port_range_start = port_range_start
        self.port_range_size = port_range_size
        self.chromium_path = chromium_path
        self.host = host
        self.module = module
        self._base_env = dict(base_env) if base_env is not None else None
        self.log_rotate_bytes = log_rotate_bytes
        # Children this object spawned: polling them reaps them and yields their exit codes.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._port_lock = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def setup(self) -> None:
        await asyncio.to_thread(self.base_dir.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        """Forget the children; they keep running and a later gateway adopts them."""
        self._children.clear()

    # ---- protocol --------------------------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        instance_dir = self._dir(spec.instance_id)
        async with self._lock(spec.instance_id):
            record = await asyncio.to_thread(self._read, spec.instance_id)
            if record and self._alive(spec.instance_id, record):
                return self._state(spec.instance_id, record)
            if record and record.get("pid"):
                await self._stop(spec.instance_id, timeout=0)  # what a crash left behind
            async with self._port_lock:
                port = await asyncio.to_thread(self._free_port, spec.instance_id, record)
                record = await asyncio.to_thread(self._spawn, spec, instance_dir, port)
            return self._state(spec.instance_id, record)

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        async with self._lock(instance_id):
            await self._stop(instance_id, timeout)

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        async with self._lock(instance_id):
            await self._stop(instance_id, timeout=5.0)
            self._children.pop(instance_id, None)
            instance_dir = self._dir(instance_id)
            if remove_volume:
                await asyncio.to_thread(shutil.rmtree, instance_dir, True)
            else:
                await asyncio.to_thread((instance_dir / STATE_FILE).unlink, True)

    async def inspect(self, instance_id: str) -> RuntimeState:
        record = await asyncio.to_thread(self._read, instance_id)
        if record is None:
            return RuntimeState(instance_id=instance_id, phase="missing")
        return self._state(instance_id, record)

    async def list_managed(self) -> dict[str, RuntimeState]:
        records = await asyncio.to_thread(self._read_all)
        return {iid: self._state(iid, record) for iid, record in records.items()}

    async def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        instance_dir = self._dir(instance_id)
        path = instance_dir / LOG_FILE
        if not await asyncio.to_thread(instance_dir.is_dir):
            raise RuntimeError_(f"no local instance {instance_id}")
        lines, position = await asyncio.to_thread(_tail_lines, path, tail)
        for line in lines:
            yield line
        if not follow:
            return
        partial = b""
        while True:
            chunk, position = await asyncio.to_thread(_read_from, path, position)
            if chunk:
                partial += chunk
                *complete, partial = partial.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace").rstrip("\r")
                continue
            record = await asyncio.to_thread(self._read, instance_id)
            if record is None or not self._alive(instance_id, record):
                chunk, position = await asyncio.to_thread(_read_from, path, position)
                partial += chunk
                for raw in partial.split(b"\n"):
                    if raw:
                        yield raw.decode("utf-8", "replace").rstrip("\r")
                return
            await asyncio.sleep(0.2)

    # ---- processes -------------------------------------------------------------------------------

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _dir(self, instance_id: str) -> Path:
        if not _ID_RE.match(instance_id) or len(instance_id) > 128:
            raise RuntimeError_(f"instance id {instance_id!r} cannot be a folder name")
        return self.base_dir / instance_id

    def _environment(self, spec: InstanceSpec, instance_dir: Path, port: int) -> dict[str, str]:
        inherited = self._base_env if self._base_env is not None else os.environ
        env = {k: v for k, v in inherited.items() if not k.startswith(("GATEWAY_", instance_env.PREFIX))}
        env["PYTHONUNBUFFERED"] = "1"
        if (_SOURCE_ROOT / self.module / "__init__.py").exists():
            env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(_SOURCE_ROOT)) if p)
        env[_MARKER_ENV] = str(instance_dir.resolve())  # inherited by everything the instance starts
        env.update(spec.environ(
            port=port, host=self.host, data_dir=str(instance_dir / DATA_DIR), chromium_path=self.chromium_path or None,
        ))
        return env

    def _spawn(self, spec: InstanceSpec, instance_dir: Path, port: int) -> dict[str, Any]:
        (instance_dir / DATA_DIR).mkdir(parents=True, exist_ok=True)
        log_path = instance_dir / LOG_FILE
        try:
            if log_path.stat().st_size > self.log_rotate_bytes:
                log_path.replace(instance_dir / (LOG_FILE + ".1"))
        except FileNotFoundError:
            pass
        command = [self.python, "-m", self.module]
        with open(log_path, "ab") as log_file:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log_file.write(f"[local runtime] {stamp} starting on port {port}\n".encode())
            log_file.flush()
            try:
                child = subprocess.Popen(
                    command,
                    env=self._environment(spec, instance_dir, port),
                    cwd=instance_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own session and process group
                    close_fds=True,
                )
            except OSError as e:
                raise RuntimeError_(f"cannot run {self.python}: {e}") from e
        self._children[spec.instance_id] = child
        record = {
            LABEL_MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_INSTANCE_ID: spec.instance_id,
            LABEL_INSTANCE_NAME: spec.name,
            "pid": child.pid,
            "pgid": child.pid,
            "port": port,
            "proc_start": _proc_start_time(child.pid),
            "command": command,
            "started_at": time.time(),
            "exit_code": None,
        }
        self._write(spec.instance_id, record)
        log.info("local instance %s started: pid %s, port %s", spec.instance_id, child.pid, port)
        return record

    async def _stop(self, instance_id: str, timeout: float) -> None:
        record = await asyncio.to_thread(self._read, instance_id)
        if record is None:
            return
        pid, pgid = record.get("pid"), record.get("pgid")
        if not pid:
            return
        if self._alive(instance_id, record):
            # SIGTERM to the instance's own group: it closes Chromium and saves the login state.
            _signal_group(pgid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._alive(instance_id, record) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if self._alive(instance_id, record):
                log.warning("local instance %s ignored SIGTERM for %ss; killing", instance_id, timeout)
        own_group = pgid if pgid and _group_is_ours(pgid, record.get("proc_start")) else None
        await self._kill_leftovers(instance_id, own_group)
        exit_code = self._exit_code(instance_id)
        record.update(pid=None, exit_code=exit_code, stopped_at=time.time())
        await asyncio.to_thread(self._write, instance_id, record)

    async def _kill_leftovers(self, instance_id: str, own_group: int | None) -> None:
        """SIGKILL whatever of the instance still runs: its group, and Chromium's processes, which
        Playwright starts in sessions of their own (found by the marker in their environment)."""
        marker = self._marker(instance_id)
        deadline = time.monotonic() + 5.0
        while True:
            pids = await asyncio.to_thread(_instance_processes, marker, own_group)
            child = self._children.get(instance_id)
            if child is not None:
                child.poll()  # reap, so that a dead leader is not counted
            if not pids or time.monotonic() > deadline:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            await asyncio.sleep(0.05)
        if pids:
            log.warning("local instance %s: processes %s survived SIGKILL", instance_id, sorted(pids))

    def _marker(self, instance_id: str) -> bytes:
        return f"{_MARKER_ENV}={self._dir(instance_id).resolve()}".encode()

    def _alive(self, instance_id: str, record: dict[str, Any]) -> bool:
        pid = record.get("pid")
        if not pid:
            return False
        child = self._children.get(instance_id)
        if child is not None and child.pid == pid:
            return child.poll() is None
        return _is_our_process(pid, record.get("proc_start"), self.module)

    def _exit_code(self, instance_id: str) -> int | None:
        child = self._children.get(instance_id)
        return child.poll() if child is not None else None

    def _state(self, instance_id: str, record: dict[str, Any]) -> RuntimeState:
        pid = record.get("pid")
        if pid and self._alive(instance_id, record):
            return RuntimeState(
                instance_id=instance_id,
                phase="running",
                handle=str(pid),
                endpoint=f"http://{_connect_host(self.host)}:{record['port']}",
                detail="running",
            )
        exit_code = record.get("exit_code")
        if pid:  # died on its own
            exit_code = self._exit_code(instance_id)
            detail = f"process exited with code {exit_code}" if exit_code is not None else "process gone"
        else:
            detail = "stopped"
        return RuntimeState(
            instance_id=instance_id,
            phase="exited",
            handle=str(pid) if pid else None,
            exit_code=exit_code,
            detail=detail,
        )

    def _free_port(self, instance_id: str, record: dict[str, Any] | None) -> int:
        """The instance's previous port when free, else the first free one in the range."""
        taken = {
            r.get("port") for iid, r in self._read_all().items() if iid != instance_id and self._alive(iid, r)
        }
        candidates = range(self.port_range_start, self.port_range_start + self.port_range_size)
        previous = record.get("port") if record else None
        for port in ([previous] if previous else []) + list(candidates):
            if port not in taken and _port_free(self.host, port):
                return port
        raise RuntimeError_(
            f"no free port in {self.port_range_start}..{self.port_range_start + self.port_range_size - 1}"
        )

    # ---- records ---------------------------------------------------------------------------------

    def _read(self, instance_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self._dir(instance_id) / STATE_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as e:
            log.warning("unreadable %s of %s: %s", STATE_FILE, instance_id, e)
            return None

    def _read_all(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        try:
            folders = list(self.base_dir.iterdir())
        except FileNotFoundError:
            return records
        for folder in folders:
            if not _ID_RE.match(folder.name):
                continue
            record = self._read(folder.name)
            if record and record.get(LABEL_MANAGED_BY) == MANAGED_BY_VALUE:
                records[folder.name] = record
        return records

    def _write(self, instance_id: str, record: dict[str, Any]) -> None:
        path = self._dir(instance_id) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)


# ---- helpers ---------------------------------------------------------------------------------------


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Like the server will: a port in TIME_WAIT is free to it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _group_is_ours(pgid: int, proc_start: str | None) -> bool:
    """Whether signalling process group `pgid` reaches only what our child left behind.

    The group's id is the leader's pid. While any member lives, Linux does not hand that number to a
    new process; so either the leader is our child (same start time) or no process has that pid."""
    try:
        stat = Path(f"/proc/{pgid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        return proc_start is None  # no /proc: trust the record
    return proc_start is not None and stat.rsplit(")", 1)[1].split()[19] == proc_start


def _is_our_process(pid: int, proc_start: str | None, module: str) -> bool:
    """True when `pid` runs and is the instance process recorded (not a reused pid)."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): signal 0 says whether it exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # zombie or dead
        return False
    if proc_start is not None and fields[19] != proc_start:
        return False
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    module_b = module.encode()
    return any(a == b"-m" and b == module_b for a, b in zip(argv, argv[1:], strict=False))


def _instance_processes(marker: bytes, own_group: int | None) -> set[int]:
    """Live processes of one instance: those whose environment holds `marker`, and every member
    of their process groups and of `own_group` (Chromium's helpers overwrite their environment
    with their titles, but stay in the group of Chromium's main process, which keeps it)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set()
    stats: dict[int, tuple[str, int]] = {}
    marked: set[int] = set()
    self_pid = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == self_pid:
            continue
        pid = int(entry.name)
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        stats[pid] = (fields[0], int(fields[2]))
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                marked.add(pid)
        except OSError:
            continue
    groups = {stats[p][1] for p in marked}
    if own_group:
        groups.add(own_group)
    own_pgid = os.getpgid(0)
    groups.discard(own_pgid)  # never the gateway's own group
    return marked | {p for p, (_, g) in stats.items() if g in groups}


def _signal_group(pgid: int | None, sig: signal.Signals) -> None:
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail_lines(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines of a file and the offset of its end."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if count <= 0:
                return [], end
            block, data, pos = 8192, b"", end
            while pos > 0 and data.count(b"\n") <= count:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except FileNotFoundError:
        return [], 0
    # Stop after the last complete line; a follower reads the rest once its newline arrives.
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].decode("utf-8", "replace").splitlines()
    return lines[-count:], end - (len(data) - complete)


def _read_from(path: Path, position: int) -> tuple[bytes, int]:
    """Bytes appended since `position` (from the start again when the file was replaced)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < position:
                position = 0
            f.seek(position)
            data = f.read(1024 * 1024)
    except FileNotFoundError:
        return b"", 0
    return data, position + len(data)

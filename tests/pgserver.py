"""A Postgres server of a test's own, which the test may stop, restart and kill (the shared one must never be).

Debian's PostgreSQL (initdb + pg_ctl, as .ci/run stage 5 does): run as the `postgres` user when the tests run as
root, data in a temporary folder, trust authentication on 127.0.0.1, a free port. Skips (or fails under
AISTUDIO_REQUIRE_ALL=1) where no PostgreSQL binaries are installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import skip_or_fail
from tests.simulator.fixtures import free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    return Path(found[-1]).parent if found else None


@dataclass
class PostgresServer:
    bin_dir: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its database `fleet`."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/fleet"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:  # Postgres refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        self.start()
        self.psql("CREATE DATABASE fleet")

    def psql(self, statement: str) -> str:
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-qAt", "-c", statement).stdout

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        log = self.folder / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: connections are cut, as in a restart; `immediate`: as in a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def log_tail(self, lines: int = 40) -> str:
        path = self.folder / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A fresh server with an empty database `fleet`, stopped and deleted afterwards."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        skip_or_fail("PostgreSQL binaries are not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="aistudio-test-pg-"))
    server = PostgresServer(bin_dir, folder, free_port())
    try:
        server.init()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)

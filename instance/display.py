"""A virtual X display (Xvfb) for the headed browser mode: a headed Chromium has none of headless's tells."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import subprocess
import tempfile
import time

log = logging.getLogger(__name__)

XVFB = "Xvfb"


class DisplayError(RuntimeError):
    """Xvfb is missing or did not come up."""


class VirtualDisplay:
    """One Xvfb server on a free display number, started before Chromium and stopped after it."""

    def __init__(self, width: int, height: int, start_timeout_s: float = 10.0, timezone: str | None = None) -> None:
        self.width, self.height = width, height
        self.timezone = timezone  # the instance's clock zone, so that nothing on the display disagrees
        self.start_timeout_s = start_timeout_s
        self.name: str | None = None
        self._process: subprocess.Popen | None = None
        # a file, not a pipe: Xvfb would block on a full pipe nobody reads
        self._errors = tempfile.TemporaryFile()

    async def start(self) -> str:
        """Start Xvfb and return its display name (":N")."""
        if self._process is not None and self._process.poll() is None:
            return self.name
        binary = shutil.which(XVFB)
        if binary is None:
            raise DisplayError("headed mode needs Xvfb (Debian package xvfb), or set INSTANCE_BROWSER_MODE=headless")
        self.name = await asyncio.to_thread(self._spawn, binary)
        log.info("Xvfb up on display %s (%dx%d)", self.name, self.width, self.height)
        return self.name

    def _spawn(self, binary: str) -> str:
        # -displayfd: Xvfb picks a free display itself and writes its number once it accepts clients,
        # so several instances on one host (the local runtime) never race for a number.
        read_fd, write_fd = os.pipe()
        try:
            self._process = subprocess.Popen(
                [binary, "-displayfd", str(write_fd), "-screen", "0", f"{self.width}x{self.height}x24",
                 "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._errors,
                env={**os.environ, "TZ": self.timezone} if self.timezone else None,
            )
            os.close(write_fd)
            write_fd = -1
            number = self._read_line(read_fd).strip()
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not number.isdigit():
            error = self._stop_process()
            raise DisplayError(f"Xvfb did not start: {error or 'no display number within the timeout'}")
        return f":{number}"

    def _read_line(self, fd: int) -> str:
        # Xvfb writes the number and the newline in two writes, and dies if the pipe is closed in between.
        deadline = time.monotonic() + self.start_timeout_s
        data = b""
        while not data.endswith(b"\n") and (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], remaining)
            chunk = os.read(fd, 16) if ready else b""
            if not chunk:
                break
            data += chunk
        return data.decode()

    def _stop_process(self) -> str:
        process, self._process = self._process, None
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._errors.seek(0)
        return self._errors.read()[-500:].decode(errors="replace").strip()

    async def stop(self) -> None:
        await asyncio.to_thread(self._stop_process)

"""Page snapshots: a copy of the page when something breaks, so an operator can write a selectors override from
what the page really showed.

A snapshot is a directory `<data_dir>/snapshots/<id>/` with `page.html`, `screenshot.png`, `pagecheck.json` and
`meta.json`. One is taken when a generation fails with `ui_changed` (at most one per `snapshot_interval`
seconds) and on request (`POST /snapshots`, e.g. the canary); the newest `snapshots_kept` stay.

What is kept of the page: its DOM as serialized by the browser, with every `<script>` element emptied (inline
scripts carry the page's bootstrap data: account e-mail, tokens) and capped at `HTML_MAX_BYTES`; cookies are
never part of the HTML. The visible text (the account chip may show an e-mail address) stays: it is what the
operator needs to see. The screenshot is the viewport only, so its size is bounded by the window.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from fleet_contract.messages import SNAPSHOT_ID_PATTERN, SNAPSHOT_REASON_PATTERN
from instance.browser import BrowserHost
from instance.pagecheck import diagnose

log = logging.getLogger(__name__)

HTML_MAX_BYTES = 4 * 1024 * 1024
FILES = ("page.html", "screenshot.png", "pagecheck.json", "meta.json")
# `20261128-070000-123-ui_changed`: UTC date, time, milliseconds, reason; the only shape a path may take.
ID_PATTERN = re.compile(SNAPSHOT_ID_PATTERN)
REASON_PATTERN = re.compile(SNAPSHOT_REASON_PATTERN)
_SCRIPT = re.compile(r"(<script\b[^>]*>).*?(</script\s*>)", re.IGNORECASE | re.DOTALL)
_TRUNCATED = b"\n<!-- snapshot: the page's HTML was cut here at %d bytes -->\n"


class SnapshotNotFound(LookupError):
    """No snapshot with that id on this instance."""


@dataclass(frozen=True)
class Occasion:
    """Why a snapshot is taken: its reason, and the task and error that led to it (none when asked for)."""

    reason: str
    task_id: str | None = None
    error: str | None = None
    role: str | None = None


def is_snapshot_id(value: str) -> bool:
    return bool(ID_PATTERN.fullmatch(value))


def scrub_html(html: str) -> bytes:
    """The page's HTML with every script's content removed, encoded and capped at HTML_MAX_BYTES."""
    data = _SCRIPT.sub(r"\1\2", html).encode("utf-8", errors="replace")
    if len(data) <= HTML_MAX_BYTES:
        return data
    return data[:HTML_MAX_BYTES] + _TRUNCATED % HTML_MAX_BYTES


class SnapshotKeeper:
    """Takes, lists, zips and prunes the snapshots of one instance."""

    def __init__(self, host: BrowserHost, root: Path, *, interval_s: float, kept: int, timeout_s: float) -> None:
        self.host = host
        self.root = root
        self.interval_s = interval_s
        self.kept = max(1, kept)
        self.timeout_s = timeout_s
        self._last_taken: float | None = None  # monotonic; shared by automatic and requested snapshots
        self._lock = asyncio.Lock()

    def due(self) -> bool:
        return self._last_taken is None or time.monotonic() - self._last_taken >= self.interval_s

    async def after_failure(self, occasion: Occasion) -> str | None:
        """An automatic snapshot when one is due; never raises, so a task's answer stays what it was."""
        if not self.due():
            log.info("task %s: %s, no snapshot (one was taken less than %gs ago)", occasion.task_id, occasion.reason, self.interval_s)
            return None
        try:
            return (await self.take(occasion))["id"]
        except Exception as exc:  # a snapshot is a help, never a reason for a task or the service to fail
            log.warning("task %s: page snapshot failed: %s", occasion.task_id, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None

    async def take(self, occasion: Occasion) -> dict[str, Any]:
        """Copies the page now (HTML, screenshot, page check) to a new snapshot directory; its listing entry."""
        async with self._lock:
            self._last_taken = time.monotonic()
            taken_at = datetime.now(UTC)
            async with asyncio.timeout(self.timeout_s):
                page = self.host.page
                url = page.url
                html = scrub_html(await _content(page))
                screenshot = await page.screenshot(type="png")
                report = await diagnose(self.host, busy=True, timeout_s=self.timeout_s / 2)
            meta = {
                "id": _new_id(taken_at, occasion.reason),
                "taken_at": taken_at.isoformat(),
                "reason": occasion.reason,
                "task_id": occasion.task_id,
                "url": url,
                "error": occasion.error,
                "role": occasion.role,
                "selectors_version": self.host.selectors.version,
            }
            files = {"page.html": html, "screenshot.png": screenshot, "pagecheck.json": _json(report), "meta.json": _json(meta)}
            await asyncio.to_thread(self._store, meta["id"], files)
        log.info("page snapshot %s taken (%s)", meta["id"], occasion.reason)
        return self.describe(meta["id"])

    def _store(self, snapshot_id: str, files: dict[str, bytes]) -> None:
        """Written to a hidden directory, then renamed into place: a listing never sees half a snapshot."""
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{snapshot_id}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            for name, data in files.items():
                (partial / name).write_bytes(data)
            partial.rename(self.root / snapshot_id)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        self._prune()

    def _prune(self) -> None:
        for old in self._ids()[self.kept:]:
            shutil.rmtree(self.root / old, ignore_errors=True)

    def _ids(self) -> list[str]:
        """Every complete snapshot's id, newest first (ids sort by time)."""
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and is_snapshot_id(p.name)), reverse=True)

    def list(self) -> list[dict[str, Any]]:
        found = []
        for snapshot_id in self._ids():
            try:
                found.append(self.describe(snapshot_id))
            except (OSError, ValueError, SnapshotNotFound):
                continue  # pruned or damaged meanwhile: left out, not an error
        return found

    def describe(self, snapshot_id: str) -> dict[str, Any]:
        folder = self._folder(snapshot_id)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        sizes = {name: (folder / name).stat().st_size for name in FILES if (folder / name).is_file()}
        keys = ("taken_at", "reason", "task_id", "url", "error", "role", "selectors_version")
        return {"id": snapshot_id, **{k: meta.get(k) for k in keys}, "files": sizes, "size_bytes": sum(sizes.values())}

    def zip(self, snapshot_id: str) -> bytes:
        """The snapshot's files in one zip, built in memory (a snapshot is a few MB at most)."""
        folder = self._folder(snapshot_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in FILES:
                if (folder / name).is_file():
                    archive.write(folder / name, f"{snapshot_id}/{name}")
        return buffer.getvalue()

    def _folder(self, snapshot_id: str) -> Path:
        if not is_snapshot_id(snapshot_id):
            raise ValueError(f"not a snapshot id: {snapshot_id[:80]!r}")
        folder = self.root / snapshot_id
        if not (folder / "meta.json").is_file():
            raise SnapshotNotFound(snapshot_id)
        return folder


async def _content(page: Page) -> str:
    """The page's HTML; a page in the middle of a navigation is given a moment and asked again."""
    for _ in range(3):
        try:
            return await page.content()
        except PlaywrightError as exc:
            if "navigating" not in str(exc):
                raise
            await asyncio.sleep(0.5)
    return await page.content()


def _new_id(when: datetime, reason: str) -> str:
    return f"{when:%Y%m%d-%H%M%S}-{when.microsecond // 1000:03d}-{reason}"


def _json(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")

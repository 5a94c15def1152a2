"""Generated images kept as files under data_dir for a while (never in the database), then pruned."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ResultStore:
    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory = directory
        self.ttl = ttl

    def path_for(self, task_id: uuid.UUID) -> Path:
        return self.directory / f"{task_id}.json"

    async def save(self, task_id: uuid.UUID, images_b64: list[str], text: str | None) -> str:
        """Writes the result atomically (a reader sees all of it or nothing); returns its path."""
        path = self.path_for(task_id)
        body = json.dumps({"images_b64": images_b64, "text": text}).encode()
        await asyncio.to_thread(_write_atomically, path, body)
        return str(path)

    async def load(self, result_path: str | None) -> dict[str, Any] | None:
        """The stored result, or None when it is gone (pruned, or written by a gateway with another data_dir)."""
        if not result_path:
            return None
        try:
            raw = await asyncio.to_thread(Path(result_path).read_bytes)
            body = json.loads(raw)
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def prune(self) -> int:
        return await asyncio.to_thread(self._prune_sync, time.time() - self.ttl)

    def _prune_sync(self, older_than: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # another gateway sharing the directory pruned it first
            except OSError as exc:
                log.warning("cannot prune result %s: %s", entry.path, exc)
        return removed


def _write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(body)
    os.replace(partial, path)

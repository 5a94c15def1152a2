"""What makes a task outlive its request: the client's idempotency key, and a queued task's inputs kept as a
file (never in the database) so that the next gateway on this data folder picks the task up."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.dispatcher.inputs import GenerationRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskMeta:
    """What a client asked of a task beyond the generation itself."""

    api: str = "generate"  # the face that took it: generate, tasks, openai, gemini, anthropic
    idempotency_key: str | None = None
    callback_url: str | None = None  # asynchronous tasks: where the result is sent

    def keyed(self, index: int, count: int) -> TaskMeta:
        """The i-th of `count` tasks of one request (OpenAI's n): each its own key."""
        if self.idempotency_key is None or count == 1:
            return self
        return dataclasses.replace(self, idempotency_key=f"{self.idempotency_key}:{index}")


def fingerprint(request: GenerationRequest, meta: TaskMeta) -> str:
    """A hash of everything the task was asked: the same key with another body is a conflict."""
    body = {**dataclasses.asdict(request), "api": meta.api, "callback_url": meta.callback_url}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RequestFiles:
    """A queued asynchronous task's inputs under data_dir/requests, written atomically, removed at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, task_id: uuid.UUID) -> Path:
        return self.directory / f"{task_id}.json"

    async def save(self, task_id: uuid.UUID, request: GenerationRequest, meta: TaskMeta) -> str:
        path = self.path_for(task_id)
        body = json.dumps({"request": dataclasses.asdict(request), "meta": dataclasses.asdict(meta)}).encode()
        await asyncio.to_thread(_write_atomically, path, body)
        return str(path)

    async def load(self, path: str) -> tuple[GenerationRequest, TaskMeta] | None:
        """The kept inputs, or None when the file is gone or unreadable (another data folder, a crash mid-write)."""
        try:
            body = json.loads(await asyncio.to_thread(Path(path).read_bytes))
            fields = dict(body["request"])
            fields["references_b64"] = tuple(fields.get("references_b64") or ())
            return GenerationRequest(**fields), TaskMeta(**body["meta"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the kept inputs %s: %s", path, exc)
            return None

    async def remove(self, path: str | None) -> None:
        if path:
            await asyncio.to_thread(_unlink, Path(path))


def _write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(body)
    os.replace(partial, path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


"""What makes a task outlive its request: the client's idempotency key, and a queued asynchronous task's inputs
kept until it ends, so that another gateway picks the task up: a `task_inputs` row when results are kept in the
database (every gateway on it resumes the task), else a file under the data folder (the next gateway on that
folder does). The task row's `request_path` says which: a file's path, or `database`."""

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

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.models import TaskInput
from gateway.dispatcher.inputs import GenerationRequest
from gateway.dispatcher.results import IN_DATABASE, StoreKind

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


CHAT_FIELDS = frozenset({"chat_turn", "turn_references", "continue_chat"})


def fingerprint(request: GenerationRequest, meta: TaskMeta) -> str:
    """A hash of everything the task was asked: the same key with another body is a conflict."""
    # a conversation's chat fields are the gateway's own findings (which task made the last image), not the client's
    asked = {k: v for k, v in dataclasses.asdict(request).items() if k not in CHAT_FIELDS}
    body = {**asked, "api": meta.api, "callback_url": meta.callback_url}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _encoded(request: GenerationRequest, meta: TaskMeta) -> dict[str, object]:
    return {"request": dataclasses.asdict(request), "meta": dataclasses.asdict(meta)}


def _decoded(body: object) -> tuple[GenerationRequest, TaskMeta]:
    """Raises KeyError, TypeError or ValueError on a body that is not kept inputs."""
    if not isinstance(body, dict):
        raise TypeError("kept inputs must be an object")
    fields = dict(body["request"])
    fields["references_b64"] = tuple(fields.get("references_b64") or ())
    return GenerationRequest(**fields), TaskMeta(**body["meta"])


class RequestFiles:
    """A queued asynchronous task's inputs under data_dir/requests, written atomically, removed at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, task_id: uuid.UUID) -> Path:
        return self.directory / f"{task_id}.json"

    def reference_for(self, task_id: uuid.UUID) -> str:
        """What the task row keeps (`request_path`) before the inputs are saved."""
        return str(self.path_for(task_id))

    async def save(self, task_id: uuid.UUID, request: GenerationRequest, meta: TaskMeta) -> str:
        path = self.path_for(task_id)
        body = json.dumps(_encoded(request, meta)).encode()
        await asyncio.to_thread(_write_atomically, path, body)
        return str(path)

    async def load(self, task_id: uuid.UUID, reference: str) -> tuple[GenerationRequest, TaskMeta] | None:
        """The kept inputs, or None when the file is gone or unreadable (another data folder, a crash mid-write)."""
        try:
            return _decoded(json.loads(await asyncio.to_thread(Path(reference).read_bytes)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the kept inputs %s: %s", reference, exc)
            return None

    async def remove(self, task_id: uuid.UUID, reference: str | None) -> None:
        if reference and reference != IN_DATABASE:
            await asyncio.to_thread(_unlink, Path(reference))


class DatabaseInputs:
    """A `task_inputs` row per queued asynchronous task: every gateway on the database can resume it. References
    to files (kept before a switch to this store) are read and removed through `files`."""

    def __init__(self, engine: AsyncEngine, files: RequestFiles) -> None:
        self._engine = engine
        self._files = files

    def reference_for(self, task_id: uuid.UUID) -> str:
        return IN_DATABASE

    async def save(self, task_id: uuid.UUID, request: GenerationRequest, meta: TaskMeta) -> str:
        async with self._engine.begin() as connection:
            await connection.execute(insert(TaskInput).values(task_id=task_id, body=_encoded(request, meta)))
        return IN_DATABASE

    async def load(self, task_id: uuid.UUID, reference: str) -> tuple[GenerationRequest, TaskMeta] | None:
        if reference != IN_DATABASE:
            return await self._files.load(task_id, reference)
        async with self._engine.connect() as connection:
            body = await connection.scalar(select(TaskInput.body).where(TaskInput.task_id == task_id))
        try:
            return None if body is None else _decoded(body)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the kept inputs of task %s: %s", task_id, exc)
            return None

    async def remove(self, task_id: uuid.UUID, reference: str | None) -> None:
        if reference != IN_DATABASE:
            await self._files.remove(task_id, reference)
            return
        async with self._engine.begin() as connection:
            await connection.execute(delete(TaskInput).where(TaskInput.task_id == task_id))


InputStore = RequestFiles | DatabaseInputs


def build_input_store(kind: StoreKind, engine: AsyncEngine, data_dir: Path) -> InputStore:
    """Inputs live with results when those are files (one gateway alone, the default on SQLite), else in the
    database, which every gateway sharing it reads (another result store is shared too)."""
    files = RequestFiles(Path(data_dir) / "requests")
    return files if kind == "files" else DatabaseInputs(engine, files)


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


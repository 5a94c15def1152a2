"""Kept results: a task's images for GATEWAY_TASK_RESULT_TTL after it ends, for GET /tasks/{id} and signed URLs.

One small interface (`ResultStore`: save, load, load_image, prune, delete, check) and three places to keep them:
- `DatabaseResultStore`, a `kept_results` row with its expiry: every gateway sharing the database reads it
  (the default on Postgres, where several gateways may answer one client);
- `FileResultStore`, a file under the data folder: one gateway alone (the default on SQLite);
- `S3ResultStore` (gateway/dispatcher/s3_results.py), objects in an S3-compatible bucket: every gateway reaching it.
The task row's `result_path` says where its result went: a file's path, `database`, or `s3://bucket/key/`.
Every store refuses a result past its expiry itself (before any prune), so every replica answers 410 alike.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.models import KeptResult
from gateway.db.outage import database_unreachable
from gateway.db.types import utcnow

log = logging.getLogger(__name__)

StoreKind = Literal["database", "files", "s3"]
IN_DATABASE = "database"  # a task row's result_path when its result is a kept_results row


class StoreUnusable(Exception):
    """The configured store cannot be used (the bucket is missing or refuses us): the gateway does not start."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    images_b64: list[str]
    text: str | None


@dataclass(frozen=True, slots=True)
class ImageStream:
    """One image as it is read: its first chunk (its type is told from it), the rest as it comes, its size."""

    first: bytes
    rest: AsyncIterator[bytes]
    size: int

    @classmethod
    def whole(cls, image: bytes) -> ImageStream:
        return cls(image, _nothing(), len(image))


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


class ResultStore(Protocol):
    """Where results are kept. `save` answers the reference the task row keeps; `load` is None once the result
    is gone (expired, pruned, or kept by another store); `prune` drops expired ones; `delete` those of tasks
    that retention removed. `load_image` reads one image (decoded) without the others, `open_image` the same
    as a stream where the store can (a bucket's object); `check` raises StoreUnusable at start when the store
    cannot work."""

    kind: StoreKind
    ttl: float

    async def save(self, task_id: uuid.UUID, images_b64: list[str], text: str | None) -> str: ...

    async def load(self, task_id: uuid.UUID, reference: str | None) -> StoredResult | None: ...

    async def load_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> bytes | None: ...

    async def open_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> ImageStream | None: ...

    async def prune(self) -> int: ...

    async def delete(self, kept: Sequence[tuple[uuid.UUID, str]]) -> int: ...

    async def check(self) -> None: ...


def _decoded(body: object) -> StoredResult | None:
    if not isinstance(body, dict):
        return None
    images = [i for i in body.get("images_b64") or [] if isinstance(i, str)]
    text = body.get("text")
    return StoredResult(images, text if isinstance(text, str) else None)


class FileResultStore:
    """A JSON file per result under `directory`; only the gateway with this data folder can read it."""

    kind: StoreKind = "files"

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

    async def load(self, task_id: uuid.UUID, reference: str | None) -> StoredResult | None:
        """None when it is gone (expired, pruned, in the database, or written by a gateway with another data folder)."""
        if not self.owns(reference):
            return None
        try:
            raw = await asyncio.to_thread(self._read_unexpired, Path(str(reference)))
            return _decoded(json.loads(raw)) if raw is not None else None
        except (OSError, ValueError):
            return None

    async def load_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> bytes | None:
        """One JSON file holds them all: read whole (a gateway alone, on SQLite; the other stores read one)."""
        stored = await self.load(task_id, reference)
        return _image(stored.images_b64, index) if stored is not None else None

    async def open_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> ImageStream | None:
        image = await self.load_image(task_id, reference, index)
        return ImageStream.whole(image) if image is not None else None

    async def check(self) -> None:
        """The folder was checked with the settings (GATEWAY_DATA_DIR writable)."""

    @staticmethod
    def owns(reference: str | None) -> bool:
        return bool(reference) and reference != IN_DATABASE and not str(reference).startswith("s3://")

    def _read_unexpired(self, path: Path) -> bytes | None:
        # Past its time by its age, as `prune` judges it: gone before a prune runs, on every gateway alike.
        if path.stat().st_mtime < time.time() - self.ttl:
            return None
        return path.read_bytes()

    async def prune(self) -> int:
        return await asyncio.to_thread(self._prune_sync, time.time() - self.ttl)

    async def delete(self, kept: Sequence[tuple[uuid.UUID, str]]) -> int:
        return await asyncio.to_thread(self._unlink, [reference for _task_id, reference in kept])

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

    def _unlink(self, references: list[str]) -> int:
        removed = 0
        own = self.directory.resolve()
        for stored in references:
            path = Path(stored)
            if not self.owns(stored) or path.resolve().parent != own:
                continue  # another gateway's folder, or not a result file at all: never deleted from here
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                continue  # pruned after its time already (GATEWAY_TASK_RESULT_TTL)
            except OSError as exc:
                log.warning("cannot delete result %s: %s", path, exc)
        return removed


class DatabaseResultStore:
    """A `kept_results` row per result, with its expiry: every gateway on the database serves it alike. A result
    that ends while the database is down goes to `fallback` (this gateway's data folder) rather than being lost;
    file references (those, or from before a switch to this store) are read and pruned there."""

    kind: StoreKind = "database"

    def __init__(self, engine: AsyncEngine, ttl: float, *, fallback: FileResultStore | None = None, batch: int = 500) -> None:
        self._engine = engine
        self.ttl = ttl
        self._fallback = fallback
        self._batch = batch

    async def save(self, task_id: uuid.UUID, images_b64: list[str], text: str | None) -> str:
        now = utcnow()
        values = {"task_id": task_id, "images_b64": list(images_b64), "text": text, "created_at": now,
                  "expires_at": now + timedelta(seconds=self.ttl)}
        insert = pg_insert if self._engine.dialect.name == "postgresql" else sqlite_insert
        statement = insert(KeptResult).values(**values)
        # A task is saved once; a second save (never expected) replaces the first rather than failing the task.
        statement = statement.on_conflict_do_update(index_elements=[KeptResult.task_id], set_={
            k: statement.excluded[k] for k in ("images_b64", "text", "created_at", "expires_at")})
        try:
            async with self._engine.begin() as connection:
                await connection.execute(statement)
        except Exception as exc:
            if self._fallback is None or not database_unreachable(exc):
                raise
            log.warning("the database is down: the result of task %s is kept in this gateway's data folder", task_id)
            return await self._fallback.save(task_id, images_b64, text)
        return IN_DATABASE

    async def load(self, task_id: uuid.UUID, reference: str | None) -> StoredResult | None:
        if reference != IN_DATABASE:
            return await self._fallback.load(task_id, reference) if self._fallback is not None else None
        query = select(KeptResult.images_b64, KeptResult.text).where(
            KeptResult.task_id == task_id, KeptResult.expires_at > utcnow()
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _decoded({"images_b64": row[0], "text": row[1]})

    async def load_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> bytes | None:
        """One element of the JSON array, picked by the database (->> on Postgres, json_extract on SQLite):
        the other images never reach the gateway."""
        if reference != IN_DATABASE:
            return await self._fallback.load_image(task_id, reference, index) if self._fallback is not None else None
        if index < 0:
            return None  # Postgres would count from the end
        query = select(KeptResult.images_b64[index].as_string()).where(
            KeptResult.task_id == task_id, KeptResult.expires_at > utcnow()
        )
        async with self._engine.connect() as connection:
            encoded = await connection.scalar(query)
        return _b64decoded(encoded)

    async def open_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> ImageStream | None:
        """The driver hands over the whole value: one piece (the bucket's store streams)."""
        image = await self.load_image(task_id, reference, index)
        return ImageStream.whole(image) if image is not None else None

    async def check(self) -> None:
        """The database was reached at start already (its schema was checked)."""

    async def prune(self, now: datetime | None = None) -> int:
        """Deletes expired rows, a batch per transaction; any gateway may run it at once."""
        removed = await self._fallback.prune() if self._fallback is not None else 0
        now = now or utcnow()
        while True:
            old = select(KeptResult.task_id).where(KeptResult.expires_at <= now).limit(self._batch)
            statement = delete(KeptResult).where(KeptResult.task_id.in_(old.scalar_subquery())).returning(KeptResult.task_id)
            async with self._engine.begin() as connection:
                deleted = len((await connection.execute(statement)).all())
            removed += deleted
            if deleted < self._batch:
                return removed

    async def delete(self, kept: Sequence[tuple[uuid.UUID, str]]) -> int:
        ids = [task_id for task_id, reference in kept if reference == IN_DATABASE]
        files = [entry for entry in kept if entry[1] != IN_DATABASE]
        removed = await self._fallback.delete(files) if self._fallback is not None and files else 0
        if not ids:
            return removed
        statement = delete(KeptResult).where(KeptResult.task_id.in_(ids)).returning(KeptResult.task_id)
        async with self._engine.begin() as connection:
            return removed + len((await connection.execute(statement)).all())


def build_result_store(kind: StoreKind, engine: AsyncEngine, data_dir: Path, ttl: float) -> ResultStore:
    files = FileResultStore(Path(data_dir) / "results", ttl)
    return DatabaseResultStore(engine, ttl, fallback=files) if kind == "database" else files


def _image(images_b64: list[str], index: int) -> bytes | None:
    return _b64decoded(images_b64[index]) if 0 <= index < len(images_b64) else None


def _b64decoded(encoded: object) -> bytes | None:
    if not isinstance(encoded, str) or not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        return None


def _write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(body)
    os.replace(partial, path)

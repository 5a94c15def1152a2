"""A zip of the old `data/` directory (the panel's upload), read in memory: nothing is extracted to disk.

The archive is refused whole, with a message that names the entry, when any entry escapes its root (`../`,
an absolute path, a drive letter), is a symlink or encrypted, when it has too many entries or too many bytes, or
when a file the migration reads is larger than its limit. Only `browser_instances.json`, `cookies/*.json` and
`ai_studio_session.json` are decompressed, each at most up to its limit (a zip bomb's header lies about sizes), and
all of them together at most up to MAX_UNPACKED_BYTES, counted as they unpack: 1,000 cookie files each just under
the session limit would otherwise be 5 GB in memory.
The old system's `logs/` folder beside them is skipped unread: it counts against neither the entry limit nor
MAX_DATA_BYTES, only against MAX_ARCHIVE_BYTES (what is held in memory at all), and the report says so.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from pathlib import PurePosixPath

from gateway.legacy.olddata import (
    COOKIES_DIR,
    INDEX_FILE,
    LOGS_DIR,
    MAX_COOKIE_FILES,
    MAX_INDEX_BYTES,
    SINGLE_FILE,
    Note,
    OldFiles,
)

MAX_ARCHIVE_BYTES = 64 * 1024 * 1024  # the whole file, logs/ included: room for months of old logs
MAX_DATA_BYTES = 8 * 1024 * 1024  # the compressed entries other than logs/
MAX_ENTRIES = 2000  # entries other than logs/
# What the read files unpack to, together: old sessions are tens of kB each, so room for 1,000 of a few dozen kB.
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024


class ArchiveRejected(Exception):
    """The archive is unsafe or not an old data directory; `note` says why, nothing was read from it."""

    def __init__(self, key: str, **params: object) -> None:
        self.note = Note(key, dict(params))
        super().__init__(key)


def read_zip(data: bytes, *, source: str, max_session_bytes: int) -> OldFiles:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveRejected("migrate_zip_too_large", size=len(data), limit=MAX_ARCHIVE_BYTES)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ArchiveRejected("migrate_zip_invalid") from None
    with archive:
        every = archive.infolist()
        paths = {entry.filename: _checked_path(entry) for entry in every}
        root = _root(paths.values())
        if root is None:
            raise ArchiveRejected("migrate_zip_not_old_data")
        entries: list[zipfile.ZipInfo] = []
        logs: list[zipfile.ZipInfo] = []
        for entry in every:
            relative = _relative(paths[entry.filename], root)
            (logs if relative and relative[0] == LOGS_DIR else entries).append(entry)
        if len(entries) > MAX_ENTRIES:
            raise ArchiveRejected("migrate_zip_too_many", count=len(entries), limit=MAX_ENTRIES)
        data_bytes = sum(e.compress_size for e in entries)
        if data_bytes > MAX_DATA_BYTES:
            raise ArchiveRejected("migrate_zip_too_large", size=data_bytes, limit=MAX_DATA_BYTES)
        wanted = [e for e in entries if _wanted(_relative(paths[e.filename], root), e)]
        declared = sum(e.file_size for e in wanted)
        if declared > MAX_UNPACKED_BYTES:  # refused before anything unpacks; the real sizes are counted below
            raise ArchiveRejected("migrate_zip_unpacked_too_large", size=declared, limit=MAX_UNPACKED_BYTES)
        budget = _Budget(MAX_UNPACKED_BYTES)
        files = OldFiles(source=source)
        if logs:
            files.notices.append(Note("migrate_zip_logs_skipped", {
                "folder": "/".join((*root, LOGS_DIR)) + "/",
                "files": sum(1 for e in logs if not e.is_dir()),
                "size": sum(e.file_size for e in logs),
            }))
        for entry in wanted:
            relative = _relative(paths[entry.filename], root) or ()
            if relative == (INDEX_FILE,):
                files.index = _read(archive, entry, INDEX_FILE, MAX_INDEX_BYTES, budget)
            elif relative == (SINGLE_FILE,):
                files.single = _read(archive, entry, SINGLE_FILE, max_session_bytes, budget)
            else:
                if len(files.cookie_files) >= MAX_COOKIE_FILES:
                    raise ArchiveRejected("migrate_zip_too_many", count=len(entries), limit=MAX_COOKIE_FILES)
                files.cookie_files[relative[1]] = _read(archive, entry, "/".join(relative), max_session_bytes, budget)
    return files


def _wanted(relative: tuple[str, ...] | None, entry: zipfile.ZipInfo) -> bool:
    """Whether the migration reads this entry: the index, the single session, or a cookie file."""
    if relative is None or entry.is_dir():
        return False
    is_cookie_file = len(relative) == 2 and relative[0] == COOKIES_DIR and relative[1].endswith(".json")
    return relative in ((INDEX_FILE,), (SINGLE_FILE,)) or is_cookie_file


class _Budget:
    """The bytes all read entries may still unpack to; spent chunk by chunk, as they unpack."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.spent = 0

    def spend(self, size: int) -> None:
        self.spent += size
        if self.spent > self.limit:
            raise ArchiveRejected("migrate_zip_unpacked_too_large", size=self.spent, limit=self.limit)


def _checked_path(entry: zipfile.ZipInfo) -> tuple[str, ...]:
    """The entry's path parts, or a refusal when it is unsafe to have in a directory at all."""
    name = entry.filename
    unix_mode = entry.external_attr >> 16
    if stat.S_ISLNK(unix_mode):
        raise ArchiveRejected("migrate_zip_symlink", entry=name[:200])
    if entry.flag_bits & 0x1:
        raise ArchiveRejected("migrate_zip_encrypted", entry=name[:200])
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":") or "\x00" in normalized:
        raise ArchiveRejected("migrate_zip_unsafe_path", entry=name[:200])
    parts = tuple(p for p in PurePosixPath(normalized).parts if p not in ("", "."))
    if ".." in parts:
        raise ArchiveRejected("migrate_zip_unsafe_path", entry=name[:200])
    return parts


def _root(paths: object) -> tuple[str, ...] | None:
    """The folder that holds the old files: the zip of `data/` itself, or of its contents (shallowest wins)."""
    candidates: list[tuple[str, ...]] = []
    for parts in paths:  # type: ignore[attr-defined]
        if parts and parts[-1] in (INDEX_FILE, SINGLE_FILE):
            candidates.append(parts[:-1])
        elif len(parts) >= 2 and parts[-2] == COOKIES_DIR:
            candidates.append(parts[:-2])
    return min(candidates, key=len) if candidates else None


def _relative(parts: tuple[str, ...], root: tuple[str, ...]) -> tuple[str, ...] | None:
    return parts[len(root):] if parts[: len(root)] == root and len(parts) > len(root) else None


def _read(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, label: str, limit: int, budget: _Budget) -> bytes:
    if entry.file_size > limit:
        raise ArchiveRejected("migrate_zip_file_too_large", entry=label, limit=limit)
    chunks: list[bytes] = []
    size = 0
    try:
        with archive.open(entry) as handle:
            while chunk := handle.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ArchiveRejected("migrate_zip_file_too_large", entry=label, limit=limit)
                budget.spend(len(chunk))
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError, RuntimeError) as exc:
        raise ArchiveRejected("migrate_zip_entry_unreadable", entry=label, reason=str(exc)[:200]) from None
    return b"".join(chunks)

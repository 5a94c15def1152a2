"""The old system's `data/` directory, as it wrote it, read into what a migration needs.

Layout (ORIGINAL-GUIDE.zh.md): `browser_instances.json` (`{"instances": [{"instance_id", "name", "status",
"created_at", "last_used", "error_message", "is_busy"}], "updated_at"}`), one Playwright cookie list or storage
state per instance in `cookies/browser_<instance_id>_session.json` (the guide also writes
`<instance_id>_session.json`; both are read), and perhaps the single-instance system's `ai_studio_session.json`
(a storage state). Each file is UTF-8 (with or without a BOM) or, as a Chinese Windows machine writes it, GBK
(read as GB18030, its superset); the report says which files were not UTF-8. `logs/` is never read.
Nothing here raises for a bad file: each problem becomes a Note that the report shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.services.session_shape import SessionShapeError, SessionSummary, cookies_of, parse_session, summarize

INDEX_FILE = "browser_instances.json"
COOKIES_DIR = "cookies"
LOGS_DIR = "logs"  # the old server's logs beside the data: never migrated
SINGLE_FILE = "ai_studio_session.json"
SINGLE_LEGACY_ID = "ai_studio_session"  # the id the single-instance session's new instance remembers
SINGLE_NAME = "legacy"
MAX_INDEX_BYTES = 1024 * 1024
MAX_COOKIE_FILES = 1000
COOKIE_FILE = re.compile(r"^(?P<stem>.+)_session\.json$")
FALLBACK_ENCODING = "gb18030"  # a superset of GBK, what the old system wrote on a Chinese Windows machine


@dataclass(frozen=True)
class Note:
    """Something the report says: a message key of gateway/locales and its parameters."""

    key: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.key, **{k: _plain(v) for k, v in self.params.items()}}


@dataclass
class OldFiles:
    """The files of an old data directory that matter: their bytes, or why they could not be read."""

    source: str
    index: bytes | Note | None = None  # None: there is no browser_instances.json
    cookie_files: dict[str, bytes | Note] = field(default_factory=dict)  # file name in cookies/ → content
    single: bytes | Note | None = None
    notices: list[Note] = field(default_factory=list)  # what was left out on purpose (a zip's logs/), for the report

    def empty(self) -> bool:
        return self.index is None and not self.cookie_files and self.single is None


@dataclass
class OldSession:
    file: str  # relative to the data directory, e.g. cookies/browser_a1_session.json
    content: bytes | None = None
    summary: SessionSummary | None = None
    problem: Note | None = None  # unreadable, too large, not a cookie list: not imported

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            **(self.summary.to_json() if self.summary else {}),
            "problem": self.problem.to_json() if self.problem else None,
        }


@dataclass
class OldInstance:
    legacy_id: str
    name: str
    status: str | None = None
    session: OldSession | None = None  # None: it has no cookie file
    single: bool = False  # the single-instance system's ai_studio_session.json


@dataclass
class OldData:
    source: str
    instances: list[OldInstance]
    stray: list[OldSession]  # cookie files that no instance entry claims: reported, not migrated
    problems: list[Note]  # the index is malformed, an entry is unusable, ...
    index_found: bool = False
    notices: list[Note] = field(default_factory=list)  # not problems: a file read as GBK, a zip's logs/ skipped

    @property
    def index_problem(self) -> Note | None:
        return next((p for p in self.problems if p.key.startswith("migrate_index_")), None)


class NotOldData(Exception):
    """The path holds none of the old system's files."""

    def __init__(self, note: Note) -> None:
        self.note = note
        super().__init__(note.key)


def read_directory(path: Path, *, max_session_bytes: int) -> OldFiles:
    """The old files under `path` (a `data/` directory), each read whole up to its limit."""
    if not path.is_dir():
        raise NotOldData(Note("migrate_not_a_directory", {"path": str(path)}))
    files = OldFiles(source=str(path))
    if (path / INDEX_FILE).exists():
        files.index = _read_limited(path / INDEX_FILE, INDEX_FILE, MAX_INDEX_BYTES)
    if (path / SINGLE_FILE).exists():
        files.single = _read_limited(path / SINGLE_FILE, SINGLE_FILE, max_session_bytes)
    cookies = path / COOKIES_DIR
    if cookies.is_dir():
        try:
            names = sorted(p.name for p in cookies.iterdir() if p.name.endswith(".json") and not p.is_dir())
        except OSError as exc:
            names = []
            files.cookie_files[COOKIES_DIR] = Note("migrate_file_unreadable", {"file": COOKIES_DIR, "reason": _reason(exc)})
        for name in names[:MAX_COOKIE_FILES]:
            files.cookie_files[name] = _read_limited(cookies / name, f"{COOKIES_DIR}/{name}", max_session_bytes)
    if files.empty():
        raise NotOldData(Note("migrate_nothing_found", {"path": str(path)}))
    return files


def parse(files: OldFiles, now: datetime | None = None) -> OldData:
    """Old instances with their sessions, stray cookie files, and every problem met on the way."""
    problems: list[Note] = []
    notices = list(files.notices)
    entries = _index_entries(files.index, problems, notices) if files.index is not None else []
    sessions = {name: _session(f"{COOKIES_DIR}/{name}", content, now, notices) for name, content in files.cookie_files.items()}
    claimed: set[str] = set()
    instances: list[OldInstance] = []
    for entry in entries:
        file_name = next((n for n in cookie_file_names(entry.legacy_id) if n in sessions), None)
        if file_name is not None:
            claimed.add(file_name)
            entry.session = sessions[file_name]
        instances.append(entry)
    if files.single is not None:
        single = _session(SINGLE_FILE, files.single, now, notices)
        instances.append(OldInstance(legacy_id=SINGLE_LEGACY_ID, name=SINGLE_NAME, session=single, single=True))
    stray = [session for name, session in sessions.items() if name not in claimed]
    return OldData(files.source, instances, stray, problems, index_found=files.index is not None, notices=notices)


def cookie_file_names(legacy_id: str) -> tuple[str, ...]:
    """Where the old system kept an instance's login: the issue's name first, then the guide's."""
    return (f"browser_{legacy_id}_session.json", f"{legacy_id}_session.json")


def decode_text(content: bytes, file: str, notices: list[Note]) -> bytes:
    """The file as UTF-8 bytes: UTF-8 (BOM or not) as it is, else GB18030, which the notices then mention."""
    try:
        content.decode("utf-8-sig")
        return content
    except UnicodeDecodeError:
        pass
    try:
        text = content.decode(FALLBACK_ENCODING)
    except UnicodeDecodeError:
        raise SessionShapeError("neither UTF-8 nor GBK/GB18030 text") from None
    notices.append(Note("migrate_file_encoding", {"file": file, "encoding": "GB18030 (GBK)"}))
    return text.encode("utf-8")


def _index_entries(index: bytes | Note, problems: list[Note], notices: list[Note]) -> list[OldInstance]:
    if isinstance(index, Note):
        problems.append(Note("migrate_index_unreadable", {"file": INDEX_FILE, "reason": _note_reason(index)}))
        return []
    try:
        document = parse_session(decode_text(index, INDEX_FILE, notices))  # the same JSON rules as a session file
    except SessionShapeError as exc:
        problems.append(Note("migrate_index_unreadable", {"file": INDEX_FILE, "reason": str(exc)}))
        return []
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        problems.append(Note("migrate_index_shape", {"file": INDEX_FILE}))
        return []
    entries: list[OldInstance] = []
    seen: set[str] = set()
    for position, raw in enumerate(document["instances"]):
        entry = _entry(raw, position, problems)
        if entry is None:
            continue
        if entry.legacy_id in seen:
            problems.append(Note("migrate_entry_duplicate", {"position": position, "legacy_id": entry.legacy_id}))
            continue
        seen.add(entry.legacy_id)
        entries.append(entry)
    return entries


def _entry(raw: Any, position: int, problems: list[Note]) -> OldInstance | None:
    if not isinstance(raw, dict):
        problems.append(Note("migrate_entry_invalid", {"position": position, "reason": "not an object"}))
        return None
    legacy_id, name = raw.get("instance_id"), raw.get("name")
    if isinstance(legacy_id, int) and not isinstance(legacy_id, bool):
        legacy_id = str(legacy_id)
    if not isinstance(legacy_id, str) or not legacy_id.strip():
        problems.append(Note("migrate_entry_invalid", {"position": position, "reason": "no instance_id"}))
        return None
    legacy_id = legacy_id.strip()
    if not isinstance(name, str) or not name.strip():
        name = legacy_id  # the old panel always asked for a name; an entry without one keeps its id
    status = raw.get("status") if isinstance(raw.get("status"), str) else None
    return OldInstance(legacy_id=legacy_id, name=name.strip(), status=status)


def _session(file: str, content: bytes | Note, now: datetime | None, notices: list[Note]) -> OldSession:
    if isinstance(content, Note):
        return OldSession(file, problem=content)
    try:
        content = decode_text(content, file, notices)  # instances read UTF-8 only: a GBK file moves in re-encoded
        cookies = cookies_of(parse_session(content))  # a cookie list or a storage state, as an instance reads both
    except SessionShapeError as exc:
        return OldSession(file, problem=Note("migrate_session_invalid", {"file": file, "reason": str(exc)}))
    return OldSession(file, content=content, summary=summarize(cookies, now))


def _read_limited(path: Path, label: str, limit: int) -> bytes | Note:
    try:
        with path.open("rb") as handle:
            content = handle.read(limit + 1)
    except OSError as exc:
        return Note("migrate_file_unreadable", {"file": label, "reason": _reason(exc)})
    if len(content) > limit:
        return Note("migrate_file_too_large", {"file": label, "limit": limit})
    return content


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _note_reason(note: Note) -> str:
    return str(note.params.get("reason") or note.key.removeprefix("migrate_").replace("_", " "))


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value

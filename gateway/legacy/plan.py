"""From old data to new instances: a plan (pure), then its application through a target (the management API for
the CLI, the instance service for the panel), then a report.

Idempotent by the old id each new instance keeps (`instances.legacy_id`): an old instance that already has one
is skipped. Each new instance is created together with its session in one request (the session waits in its
row until the instance is first ready), so an interrupted run leaves no instance without the login it came
with, and the next run does the rest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from gateway.i18n import translate
from gateway.legacy.olddata import Note, OldData, OldInstance
from gateway.services.session_shape import SessionSummary

NAME_MAX_LENGTH = 64  # as gateway/db/models.py (this module stays free of the database packages)
NAME_PATTERN = re.compile(rf"^[\w-]{{1,{NAME_MAX_LENGTH}}}$")
LEGACY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_NAME_ATTEMPTS = 50

# What happens to an old instance.
CREATE, EXISTS, START_ONLY, INVALID = "create", "exists", "start", "invalid"
# What happened to it.
CREATED, SKIPPED, STARTED, FAILED, WOULD_CREATE, WOULD_START = "created", "skipped", "started", "failed", "would_create", "would_start"


@dataclass(frozen=True)
class Existing:
    """An instance already in the fleet, as the migration sees it."""

    instance_id: str
    name: str
    legacy_id: str | None
    status: str
    started_at: datetime | str | None


@dataclass
class Step:
    old: OldInstance
    action: str
    name: str  # the new instance's name (or the existing one's)
    renamed: Note | None = None  # why it differs from the old name
    instance_id: str | None = None  # of the existing instance
    session_note: Note | None = None  # why its session is not imported
    start: bool = False
    problem: Note | None = None  # why it cannot move in at all

    @property
    def imports_session(self) -> bool:
        return self.action == CREATE and self.old.session is not None and self.session_note is None


@dataclass
class Plan:
    data: OldData
    steps: list[Step]
    start: bool

    @property
    def changes(self) -> int:
        return sum(1 for s in self.steps if s.action == CREATE or (s.action == START_ONLY and s.start))


@dataclass
class Outcome:
    step: Step
    result: str  # created / skipped / started / failed / would_create / would_start
    instance_id: str | None = None
    name: str | None = None
    started: bool = False
    error: str | None = None
    notes: list[Note] = field(default_factory=list)


@dataclass
class Report:
    plan: Plan
    outcomes: list[Outcome]
    dry_run: bool

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == FAILED]

    @property
    def partial(self) -> bool:
        """Something that should have moved in did not: a failed step, or an index nobody could read."""
        return bool(self.failed) or self.plan.data.index_problem is not None

    @property
    def changed(self) -> int:
        return sum(1 for o in self.outcomes if o.result in (CREATED, STARTED))


class TargetConflict(Exception):
    """The target refused a create: `what` is "name" (taken) or "legacy" (that old instance is migrated)."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(message)


class TargetFailed(Exception):
    """The target refused or failed; the message is the one to show."""


class Target(Protocol):
    async def existing(self) -> list[Existing]: ...

    async def create(self, name: str, legacy_id: str, session: bytes | None) -> tuple[str, str]:
        """Creates a stopped instance; returns its id and name. Raises TargetConflict or TargetFailed."""

    async def start(self, instance_id: str) -> None: ...


# Planning -------------------------------------------------------------------------------------------


def make_plan(data: OldData, existing: list[Existing], *, start: bool = False) -> Plan:
    by_legacy = {e.legacy_id: e for e in existing if e.legacy_id}
    taken = {e.name for e in existing}
    steps = [_step(old, by_legacy, taken, start) for old in data.instances]
    return Plan(data, steps, start)


def _step(old: OldInstance, by_legacy: dict[str, Existing], taken: set[str], start: bool) -> Step:
    if not LEGACY_ID_PATTERN.fullmatch(old.legacy_id):
        return Step(old, INVALID, old.name, problem=Note("migrate_legacy_id_invalid", {"legacy_id": old.legacy_id[:80]}))
    found = by_legacy.get(old.legacy_id)
    if found is not None:
        # Already moved in; --start still starts one that never ran (a run interrupted before its start).
        never_ran = found.started_at is None and found.status == "stopped"
        action = START_ONLY if start and never_ran else EXISTS
        return Step(old, action, found.name, instance_id=found.instance_id, start=action == START_ONLY)
    name, renamed = new_name(old.name, taken)
    taken.add(name)
    return Step(old, CREATE, name, renamed=renamed, session_note=_session_note(old), start=start)


def new_name(old_name: str, taken: set[str]) -> tuple[str, Note | None]:
    """The old name when it is valid and free; else a valid one with a suffix, and why."""
    base = sanitize_name(old_name)
    why = None if base == old_name else Note("migrate_renamed_invalid", {"old": old_name, "new": base})
    if base not in taken:
        return base, why
    for number in range(2, 10_000):
        suffix = f"-{number}"
        candidate = base[: NAME_MAX_LENGTH - len(suffix)] + suffix
        if candidate not in taken:
            reason = "migrate_renamed_invalid_taken" if why else "migrate_renamed_taken"
            return candidate, Note(reason, {"old": old_name, "new": candidate})
    raise RuntimeError("no free name")  # 10 000 instances of one name: not a fleet this runs


def sanitize_name(name: str) -> str:
    """Letters and digits of any script, "-" and "_"; runs of anything else become one "-"."""
    cleaned = re.sub(r"[^\w-]+", "-", name.strip()).strip("-")[:NAME_MAX_LENGTH].strip("-")
    return cleaned if NAME_PATTERN.fullmatch(cleaned) else "instance"


def _session_note(old: OldInstance) -> Note | None:
    session = old.session
    if session is None:
        return Note("migrate_session_missing")
    if session.problem is not None:
        return session.problem
    summary = session.summary
    if summary is not None and summary.expired:
        return Note("migrate_session_expired", {"expired_at": summary.auth_expires_at})
    return None


# Applying -------------------------------------------------------------------------------------------


def preview(plan: Plan) -> Report:
    """What a run would do (--dry-run and the panel's first step); changes nothing."""
    outcomes = []
    for step in plan.steps:
        if step.action == CREATE:
            outcomes.append(Outcome(step, WOULD_CREATE, name=step.name, started=step.start))
        elif step.action == START_ONLY:
            outcomes.append(Outcome(step, WOULD_START, step.instance_id, step.name, started=True))
        else:
            outcomes.append(_skipped(step))
    return Report(plan, outcomes, dry_run=True)


async def apply(plan: Plan, target: Target) -> Report:
    """Carries out the plan step by step; a failed step is reported and the others go on."""
    outcomes = []
    taken = {step.name for step in plan.steps}
    for step in plan.steps:
        if step.action == CREATE:
            outcome = await _create(step, target, taken)
        elif step.action == START_ONLY:
            outcome = Outcome(step, STARTED, step.instance_id, step.name)
        else:
            outcome = _skipped(step)
        if step.start and outcome.instance_id and outcome.result in (CREATED, STARTED):
            await _start(outcome, target)
        outcomes.append(outcome)
    return Report(plan, outcomes, dry_run=False)


async def _create(step: Step, target: Target, taken: set[str]) -> Outcome:
    session = step.old.session.content if step.imports_session and step.old.session else None
    name = step.name
    for _attempt in range(MAX_NAME_ATTEMPTS):
        try:
            instance_id, created_name = await target.create(name, step.old.legacy_id, session)
            return Outcome(step, CREATED, instance_id, created_name)
        except TargetConflict as exc:
            if exc.what == "legacy":  # another run migrated it in the meantime
                return Outcome(step, SKIPPED, name=name, notes=[Note("migrate_already_migrated", {"name": name})])
            # The name was taken after the plan was made: the next free suffix.
            taken.add(name)
            name, renamed = new_name(step.old.name, taken)
            step.name, step.renamed = name, renamed
        except TargetFailed as exc:
            return Outcome(step, FAILED, name=name, error=str(exc))
    return Outcome(step, FAILED, name=name, error="no free name")


async def _start(outcome: Outcome, target: Target) -> None:
    try:
        await target.start(outcome.instance_id or "")
        outcome.started = True
    except TargetFailed as exc:
        outcome.notes.append(Note("migrate_start_failed", {"reason": str(exc)}))
        if outcome.result == STARTED:
            outcome.result, outcome.error = FAILED, str(exc)


def _skipped(step: Step) -> Outcome:
    if step.action == EXISTS:
        return Outcome(step, SKIPPED, step.instance_id, step.name, notes=[Note("migrate_already_migrated", {"name": step.name})])
    return Outcome(step, FAILED, name=step.name, notes=[step.problem] if step.problem else [])


# Reporting ------------------------------------------------------------------------------------------


def report_json(report: Report) -> dict[str, Any]:
    data = report.plan.data
    return {
        "success": not report.partial,
        "dry_run": report.dry_run,
        "source": data.source,
        "instances": [_outcome_json(o) for o in report.outcomes],
        "stray_cookie_files": [s.to_json() for s in data.stray],
        "problems": [p.to_json() for p in data.problems],
        "notices": [n.to_json() for n in data.notices],
        "summary": summary_counts(report),
    }


def summary_counts(report: Report) -> dict[str, int]:
    counts = {key: 0 for key in (CREATED, SKIPPED, STARTED, FAILED, WOULD_CREATE, WOULD_START)}
    for outcome in report.outcomes:
        counts[outcome.result] += 1
    counts["started_total"] = sum(1 for o in report.outcomes if o.started and not report.dry_run)
    counts["to_start"] = sum(1 for o in report.outcomes if o.started and report.dry_run)
    counts["sessions_imported"] = sum(1 for o in report.outcomes if o.result in (CREATED, WOULD_CREATE) and o.step.imports_session)
    counts["stray_cookie_files"] = len(report.plan.data.stray)
    counts["problems"] = len(report.plan.data.problems)
    return counts


def _outcome_json(outcome: Outcome) -> dict[str, Any]:
    step, old = outcome.step, outcome.step.old
    session = old.session
    return {
        "old_id": old.legacy_id,
        "old_name": old.name,
        "old_status": old.status,
        "single_instance_session": old.single,
        "result": outcome.result,
        "name": outcome.name or step.name,
        "renamed": step.renamed.to_json() if step.renamed else None,
        "instance_id": outcome.instance_id,
        "started": outcome.started,
        "session": {
            **(session.to_json() if session else {"file": None}),
            "imported": step.imports_session and outcome.result in (CREATED, WOULD_CREATE),
            "not_imported": step.session_note.to_json() if step.session_note and step.action == CREATE else None,
        },
        "error": outcome.error,
        "notes": [n.to_json() for n in outcome.notes],
    }


def report_rows(report: Report, language: str) -> list[dict[str, str]]:
    """One row per old instance in the reader's words: what the CLI's table and the panel's report show."""
    return [_row(outcome, language, report.dry_run) for outcome in report.outcomes]


# A problem or notice of the report in the reader's language (gateway/locales).
def note_text(note: Note, language: str) -> str:
    return translate(note.key, language, **{k: _when(v) for k, v in note.params.items()})


def problem_texts(report: Report, language: str) -> list[str]:
    """The report's footer: problems with the index, cookie files no instance claims, then what was read or skipped
    otherwise than as written (a GBK file, a zip's logs/)."""
    data = report.plan.data
    lines = [note_text(p, language) for p in data.problems]
    for stray in data.stray:
        detail = note_text(stray.problem, language) if stray.problem else session_text(stray.summary, language)
        lines.append(translate("migrate_stray_file", language, file=stray.file, detail=detail))
    return lines + [note_text(n, language) for n in data.notices]


def session_text(summary: SessionSummary | None, language: str) -> str:
    if summary is None:
        return ""
    if summary.auth_expires_at is None:
        key = "migrate_session_no_expiry" if summary.auth_cookies else "migrate_session_no_auth"
        return translate(key, language, cookies=summary.cookies)
    key = "migrate_session_expired_summary" if summary.expired else "migrate_session_summary"
    return translate(key, language, cookies=summary.cookies, expires=_when(summary.auth_expires_at))


def _row(outcome: Outcome, language: str, dry_run: bool) -> dict[str, str]:
    step, old = outcome.step, outcome.step.old
    session = old.session
    parts = []
    if session is not None and session.summary is not None:
        parts.append(session_text(session.summary, language))
    if step.action == CREATE:
        if step.imports_session:
            parts.append(translate("migrate_session_will_import" if dry_run else "migrate_session_stored", language))
        elif step.session_note is not None:
            parts.append(note_text(step.session_note, language))
    notes = [note_text(n, language) for n in ([step.renamed] if step.renamed else []) + outcome.notes]
    if outcome.error:
        notes.append(outcome.error)
    if outcome.started:
        notes.append(translate("migrate_will_start" if dry_run else "migrate_started", language))
    return {
        "old_id": old.legacy_id,
        "old_name": old.name,
        "result": translate(f"migrate_result_{outcome.result}", language),
        "result_code": outcome.result,
        "name": outcome.name or step.name,
        "instance_id": outcome.instance_id or "",
        "session": "; ".join(p for p in parts if p) or "—",
        "notes": "; ".join(notes),
    }


def _when(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return value

"""`aistudio-fleet migrate`: the shared planner (gateway/legacy) applied through the management API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from gateway.cli.client import EXIT_OK, EXIT_PARTIAL, SHORT_ID, ApiRefused, FleetClient, UsageProblem, dumps
from gateway.cli.tables import table
from gateway.i18n import translate
from gateway.legacy.archive import MAX_ARCHIVE_BYTES, ArchiveRejected, read_zip
from gateway.legacy.olddata import NotOldData, OldFiles, parse, read_directory
from gateway.legacy.plan import (
    Existing,
    Report,
    TargetConflict,
    TargetFailed,
    apply,
    make_plan,
    note_text,
    preview,
    problem_texts,
    report_json,
    report_rows,
    summary_counts,
)

# The gateway's own default (GATEWAY_MAX_SESSION_BYTES); the gateway checks each session again on arrival.
MAX_SESSION_BYTES = 5 * 1024 * 1024


class ApiTarget:
    """The migration's target over HTTP; the blocking client runs in a worker thread."""

    def __init__(self, client: FleetClient) -> None:
        self._client = client

    async def existing(self) -> list[Existing]:
        views = await asyncio.to_thread(self._client.instances)
        return [Existing(v["instance_id"], v["name"], v.get("legacy_id"), v["status"], v.get("started_at")) for v in views]

    async def create(self, name: str, legacy_id: str, session: bytes | None) -> tuple[str, str]:
        body: dict[str, object] = {"name": name, "legacy_id": legacy_id}
        if session is not None:
            body["session"] = json.loads(session.decode("utf-8-sig"))
        try:
            answer = await asyncio.to_thread(self._client.call, "POST", "/api/instances", json=body)
        except ApiRefused as exc:
            if exc.code in ("instance_name_taken", "instance_legacy_taken"):
                raise TargetConflict("name" if exc.code == "instance_name_taken" else "legacy", str(exc)) from None
            raise TargetFailed(str(exc)) from None
        return answer["instance_id"], answer["instance"]["name"]

    async def start(self, instance_id: str) -> None:
        try:
            await asyncio.to_thread(self._client.call, "POST", f"/api/instances/{instance_id}/start")
        except ApiRefused as exc:
            raise TargetFailed(str(exc)) from None


def run_migration(client: FleetClient, source: Path, *, start: bool, dry_run: bool, as_json: bool, lang: str) -> int:
    files = read_source(source, lang)
    data = parse(files)
    target = ApiTarget(client)
    existing = asyncio.run(target.existing())  # an unreachable gateway stops here, before any change
    plan = make_plan(data, existing, start=start)
    report = preview(plan) if dry_run else asyncio.run(apply(plan, target))
    if as_json:
        click.echo(dumps(report_json(report)))
    else:
        click.echo(render(report, lang))
    return EXIT_PARTIAL if report.partial else EXIT_OK


def read_source(source: Path, lang: str) -> OldFiles:
    """An old data directory, or a zip of one (the same checks as the panel's upload)."""
    try:
        if source.is_dir():
            return read_directory(source, max_session_bytes=MAX_SESSION_BYTES)
        with source.open("rb") as handle:
            content = handle.read(MAX_ARCHIVE_BYTES + 1)
        return read_zip(content, source=str(source), max_session_bytes=MAX_SESSION_BYTES)
    except NotOldData as exc:
        raise UsageProblem(note_text(exc.note, lang), code=exc.note.key) from None
    except ArchiveRejected as exc:
        raise UsageProblem(note_text(exc.note, lang), code=exc.note.key) from None
    except OSError as exc:
        raise UsageProblem(f"cannot read {source}: {exc.strerror or exc}") from None


def render(report: Report, lang: str) -> str:
    rows = report_rows(report, lang)
    lines = [f"{report.plan.data.source}"]
    if rows:
        lines.append(table(
            ("OLD ID", "OLD NAME", "RESULT", "NEW NAME", "ID"),
            [(r["old_id"], r["old_name"], r["result"], r["name"], r["instance_id"][:SHORT_ID] or "-") for r in rows],
        ))
        lines.append("")
        for r in rows:  # the details under the table, so that it fits a terminal
            lines.append(f"{r['old_id']}  {translate('migrate_login_label', lang)}: {r['session']}")
            if r["notes"]:
                lines.append(f"{' ' * len(r['old_id'])}  {r['notes']}")
    problems = problem_texts(report, lang)
    if problems:
        lines.append("")
        lines += [f"! {p}" for p in problems]
    lines.append("")
    counts = summary_counts(report)
    if report.dry_run:
        lines.append(translate("migrate_summary_dry", lang, **counts))
    elif report.changed == 0 and not report.failed:
        lines.append(translate("migrate_nothing_to_do", lang))
    else:
        lines.append(translate("migrate_summary", lang, **{**counts, "started": counts["started_total"]}))
    return "\n".join(lines)


"""The panel's "Move in" page: a zip of the old system's data/ directory, its dry-run report, then the
migration itself, through the same planner as `aistudio-fleet migrate` (gateway/legacy) and the instance service.

Stateless between the two steps: the confirm button sends the same file again with the preview's digest, so a
different file is previewed instead of migrated, and two gateways behind one address serve it alike.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from jinja2_fragments.litestar import HTMXBlockTemplate
from litestar import Controller, Request, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from gateway.api.errors import request_language
from gateway.errors import Invalid
from gateway.legacy.archive import MAX_ARCHIVE_BYTES, ArchiveRejected, read_zip
from gateway.legacy.olddata import Note, OldData, parse
from gateway.legacy.plan import Report, apply, make_plan, note_text, preview, problem_texts, report_rows, summary_counts
from gateway.legacy.service_target import ServiceTarget
from gateway.panel.controllers import DEPENDENCIES, context, page
from gateway.panel.live import PoolWatcher
from gateway.services.instances import InstanceService

UNPROCESSABLE = 422


# The whole zip (its logs/ included) and the form around it: above the admin app's general body limit.
UPLOAD_LIMIT = MAX_ARCHIVE_BYTES + 1024 * 1024


class MigrationPanelController(Controller):
    dependencies = DEPENDENCIES
    include_in_schema = False

    @get("/migrate", name="panel:migrate")
    async def migrate_page(self, request: HTMXRequest) -> Template:
        return page(request, "migrate.html", {"max_mb": MAX_ARCHIVE_BYTES // (1024 * 1024)}, block="result")

    @post("/migrate/preview", name="panel:migrate-preview", request_max_body_size=UPLOAD_LIMIT)
    async def preview(self, request: HTMXRequest, instances: NamedDependency[InstanceService]) -> Template:
        archive, start, _digest_seen = await _form(request)
        return await _answer(request, instances, archive, start, dry_run=True)

    @post("/migrate/apply", name="panel:migrate-apply", request_max_body_size=UPLOAD_LIMIT)
    async def apply(self, request: HTMXRequest, instances: NamedDependency[InstanceService], watcher: NamedDependency[PoolWatcher]) -> Template:
        archive, start, digest_seen = await _form(request)
        if digest_seen != _digest(archive):
            # Not what the person saw and confirmed: show what this file would do instead.
            return await _answer(request, instances, archive, start, dry_run=True, notice=Note("migrate_zip_changed"))
        answer = await _answer(request, instances, archive, start, dry_run=False)
        watcher.poke()
        return answer


async def _form(request: Request[Any, Any, Any]) -> tuple[bytes, bool, str]:
    """The zip, whether to start what is created, and the digest of the file the preview showed."""
    form = await request.form()
    upload = form.get("file")
    archive = await upload.read(MAX_ARCHIVE_BYTES + 1) if isinstance(upload, UploadFile) else b""
    if not archive:
        raise Invalid("migrate_zip_missing")
    return archive, str(form.get("start") or "") in ("1", "on", "true"), str(form.get("digest") or "")


async def _answer(
    request: Request[Any, Any, Any], instances: InstanceService, archive: bytes, start: bool, *, dry_run: bool,
    notice: Note | None = None,
) -> Template:
    language = request_language(request)
    try:
        data = await asyncio.to_thread(_read, archive, request.app.state.settings.sessions.max_session_bytes)
    except ArchiveRejected as exc:
        return _result(request, error=note_text(exc.note, language), status=UNPROCESSABLE)
    refusal = refusal_of(data)
    if refusal is not None:
        # A zip is a deliberate upload: any file in it that is not in the old shape stops the whole of it.
        message = note_text(Note("migrate_zip_rejected_problem", {"problem": note_text(refusal, language)}), language)
        return _result(request, error=message, status=UNPROCESSABLE)
    target = ServiceTarget(instances, language)
    plan = make_plan(data, await target.existing(), start=start)
    report = preview(plan) if dry_run else await apply(plan, target)
    return _result(
        request, report=report, rows=report_rows(report, language), problems=problem_texts(report, language),
        counts=summary_counts(report), digest=_digest(archive), start=start,
        notice=note_text(notice, language) if notice else None,
    )


def refusal_of(data: OldData) -> Note | None:
    """What makes an uploaded zip unusable as a whole: an index or a cookie file not in the old shape."""
    if data.index_problem is not None:
        return data.index_problem
    for old in data.instances:
        if old.session is not None and old.session.problem is not None:
            return old.session.problem
    for stray in data.stray:
        if stray.problem is not None:
            return stray.problem
    return None


def _read(archive: bytes, max_session_bytes: int) -> OldData:
    return parse(read_zip(archive, source="data.zip", max_session_bytes=max_session_bytes))


def _digest(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


def _result(request: Request[Any, Any, Any], *, status: int = 200, report: Report | None = None, **values: Any) -> Template:
    values = {"report": report, "error": None, "notice": None, **values}
    return HTMXBlockTemplate(template_name="migrate.html", block_name="result", context=context(request, **values), status_code=status)


MIGRATION_PANEL_CONTROLLERS = [MigrationPanelController]

"""The migration planner on its own: reading an old data directory or zip, the plan, names, problems, and an
interrupted run finished by the next one (through the instance service, fake runtime, each database)."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest

from gateway.app import Fleet
from gateway.legacy.archive import ArchiveRejected, read_zip
from gateway.legacy.olddata import NotOldData, parse, read_directory
from gateway.legacy.plan import (
    CREATE,
    CREATED,
    EXISTS,
    SKIPPED,
    Existing,
    TargetFailed,
    apply,
    make_plan,
    new_name,
    report_json,
)
from gateway.legacy.service_target import ServiceTarget
from tests.legacy.old_system import EXPIRED, NO_COOKIES, SIGNED_IN, STRAY_ID, write_old_data, zip_directory

SIM = "http://127.0.0.1:9000"
LIMIT = 5 * 1024 * 1024


def old_dir(tmp_path: Path) -> Path:
    return write_old_data(tmp_path / "data", SIM)


def test_an_old_directory_reads_into_instances_sessions_and_strays(tmp_path: Path) -> None:
    data = parse(read_directory(old_dir(tmp_path), max_session_bytes=LIMIT))
    by_id = {old.legacy_id: old for old in data.instances}
    assert list(by_id) == [SIGNED_IN.instance_id, EXPIRED.instance_id, NO_COOKIES.instance_id]
    alpha, beta, gamma = by_id.values()
    assert alpha.name == "账号-alpha" and alpha.session and alpha.session.summary
    assert alpha.session.summary.cookies == 6 and alpha.session.summary.auth_cookies == 5 and not alpha.session.summary.expired
    assert beta.session and beta.session.summary and beta.session.summary.expired
    assert gamma.session is None
    assert [s.file for s in data.stray] == [f"cookies/browser_{STRAY_ID}_session.json"]
    assert data.problems == []


def test_the_plan_keeps_names_renames_what_it_must_and_skips_what_moved_in(tmp_path: Path) -> None:
    data = parse(read_directory(old_dir(tmp_path), max_session_bytes=LIMIT))
    existing = [Existing("id-1", "beta", None, "running", "2024-01-01T00:00:00Z"),
                Existing("id-2", "old-alpha", SIGNED_IN.instance_id, "running", "2024-01-01T00:00:00Z")]
    plan = make_plan(data, existing, start=True)
    alpha, beta, gamma = plan.steps
    assert (alpha.action, alpha.name, alpha.instance_id) == (EXISTS, "old-alpha", "id-2")
    assert (beta.action, beta.name, beta.renamed.key) == (CREATE, "beta-2", "migrate_renamed_taken")
    assert beta.session_note is not None and beta.session_note.key == "migrate_session_expired" and not beta.imports_session
    assert (gamma.action, gamma.name, gamma.renamed.key) == (CREATE, "gamma-one", "migrate_renamed_invalid")
    assert gamma.session_note is not None and gamma.session_note.key == "migrate_session_missing"
    assert plan.changes == 2


def test_names_that_cannot_be_kept() -> None:
    assert new_name("a b/c", set()) == ("a-b-c", new_name("a b/c", set())[1])
    assert new_name("!!!", set())[0] == "instance"
    long = "x" * 70
    assert new_name(long, {"x" * 64})[0] == "x" * 62 + "-2"
    assert new_name("测试", {"测试", "测试-2"})[0] == "测试-3"


def test_a_malformed_index_is_reported_and_its_cookie_files_are_strays(tmp_path: Path) -> None:
    directory = old_dir(tmp_path)
    (directory / "browser_instances.json").write_text('{"instances": [{"instance_id": "a1b2c3d4", ')
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    assert data.instances == [] and data.index_problem and data.index_problem.key == "migrate_index_unreadable"
    assert len(data.stray) == 3
    (directory / "browser_instances.json").write_text('[{"instance_id": "a1b2c3d4"}]')
    assert parse(read_directory(directory, max_session_bytes=LIMIT)).index_problem.key == "migrate_index_shape"
    (directory / "browser_instances.json").write_text(json.dumps({"instances": [7, {"name": "no id"}, {"instance_id": "x1", "name": "a"}, {"instance_id": "x1", "name": "b"}]}))
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    assert [p.key for p in data.problems] == ["migrate_entry_invalid", "migrate_entry_invalid", "migrate_entry_duplicate"]
    assert [old.name for old in data.instances] == ["a"]


def test_unusable_cookie_files_are_reported_not_fatal(tmp_path: Path) -> None:
    directory = old_dir(tmp_path)
    (directory / "cookies" / f"browser_{SIGNED_IN.instance_id}_session.json").write_text('{"SID": "x"}')  # neither shape
    (directory / "cookies" / f"browser_{EXPIRED.instance_id}_session.json").write_bytes(b"x" * (LIMIT + 1))
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    alpha, beta, _gamma = data.instances
    assert alpha.session and alpha.session.problem and alpha.session.problem.key == "migrate_session_invalid"
    assert beta.session and beta.session.problem and beta.session.problem.key == "migrate_file_too_large"
    plan = make_plan(data, [])
    assert [s.action for s in plan.steps] == [CREATE, CREATE, CREATE]  # created without the login it cannot bring
    assert not any(s.imports_session for s in plan.steps)


def test_a_directory_without_old_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotOldData) as refused:
        read_directory(tmp_path, max_session_bytes=LIMIT)
    assert refused.value.note.key == "migrate_nothing_found"


def test_the_zip_of_the_directory_reads_like_the_directory(tmp_path: Path) -> None:
    directory = old_dir(tmp_path)
    for prefix in ("data/", "", "backup/2024/data/"):
        files = read_zip(zip_directory(directory, prefix=prefix), source="x.zip", max_session_bytes=LIMIT)
        assert files.index == (directory / "browser_instances.json").read_bytes()
        assert sorted(files.cookie_files) == sorted(p.name for p in (directory / "cookies").iterdir())


def _zip(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return out.getvalue()


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


INDEX = json.dumps({"instances": [], "updated_at": None}).encode()


@pytest.mark.parametrize(
    ("archive", "key"),
    [
        (_zip(("data/browser_instances.json", INDEX), ("data/../../etc/cron.d/x", b"x")), "migrate_zip_unsafe_path"),
        (_zip(("data/browser_instances.json", INDEX), ("/etc/passwd", b"x")), "migrate_zip_unsafe_path"),
        (_zip(("data/browser_instances.json", INDEX), ("C:\\Windows\\x.json", b"x")), "migrate_zip_unsafe_path"),
        (_zip(("data/browser_instances.json", INDEX), (_symlink("data/cookies/browser_a_session.json", "/etc/shadow"), b"/etc/shadow")), "migrate_zip_symlink"),
        (_zip(("data/browser_instances.json", INDEX), *[(f"data/screenshots/{n}.png", b"") for n in range(2000)]), "migrate_zip_too_many"),
        (_zip(("data/browser_instances.json", b" " * (1024 * 1024 + 1))), "migrate_zip_file_too_large"),
        (_zip(("notes.txt", b"hello")), "migrate_zip_not_old_data"),
        (b"PK\x03\x04 not really a zip", "migrate_zip_invalid"),
    ],
    ids=["dotdot", "absolute", "drive", "symlink", "too-many", "file-too-large", "not-old-data", "not-a-zip"],
)
def test_unsafe_or_foreign_zips_are_refused_whole(archive: bytes, key: str) -> None:
    with pytest.raises(ArchiveRejected) as refused:
        read_zip(archive, source="x.zip", max_session_bytes=LIMIT)
    assert refused.value.note.key == key


def test_a_zip_bomb_is_stopped_at_the_limit_not_by_its_header() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data/cookies/browser_a_session.json", b"[" + b" " * (LIMIT * 2) + b"]")
    with pytest.raises(ArchiveRejected) as refused:
        read_zip(out.getvalue(), source="x.zip", max_session_bytes=LIMIT)
    assert refused.value.note.key == "migrate_zip_file_too_large" and len(out.getvalue()) < 100_000


class FailsAfter(ServiceTarget):
    """The instance service, until the gateway "goes away" after `creates` instances."""

    def __init__(self, fleet: Fleet, creates: int) -> None:
        super().__init__(fleet.instances, "en")
        self.left = creates

    async def create(self, name: str, legacy_id: str, session: bytes | None) -> tuple[str, str]:
        if self.left == 0:
            raise TargetFailed("connection reset")
        self.left -= 1
        return await super().create(name, legacy_id, session)


async def test_an_interrupted_migration_finishes_on_the_next_run_and_then_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    data = parse(read_directory(old_dir(tmp_path), max_session_bytes=LIMIT))
    broken = FailsAfter(fleet, creates=1)
    first = await apply(make_plan(data, await broken.existing()), broken)
    assert [o.result for o in first.outcomes] == [CREATED, "failed", "failed"] and first.partial

    target = ServiceTarget(fleet.instances, "en")
    second = await apply(make_plan(data, await target.existing()), target)
    assert [o.result for o in second.outcomes] == [SKIPPED, CREATED, CREATED] and not second.partial
    views = await fleet.instances.list()
    assert sorted((v.name, v.legacy_id) for v in views) == sorted(
        [("账号-alpha", SIGNED_IN.instance_id), ("beta", EXPIRED.instance_id), ("gamma-one", NO_COOKIES.instance_id)])

    third = await apply(make_plan(data, await target.existing()), target)
    assert [o.result for o in third.outcomes] == [SKIPPED] * 3 and third.changed == 0
    assert len(await fleet.instances.list()) == 3
    assert report_json(third)["summary"]["skipped"] == 3


def test_the_guides_cookie_file_name_and_a_zip_given_to_the_cli_are_read_too(tmp_path: Path) -> None:
    from gateway.cli.migrate import read_source

    directory = old_dir(tmp_path)
    cookies = directory / "cookies"
    (cookies / f"browser_{SIGNED_IN.instance_id}_session.json").rename(cookies / f"{SIGNED_IN.instance_id}_session.json")
    archive = tmp_path / "data.zip"
    archive.write_bytes(zip_directory(directory))
    for source in (directory, archive):
        data = parse(read_source(source, "en"))
        assert data.instances[0].session is not None and data.instances[0].session.summary is not None
        assert data.instances[0].session.file == f"cookies/{SIGNED_IN.instance_id}_session.json"

"""Old logins as they really are: an index written in GBK by a Chinese Windows machine, cookie files saved as
Playwright storage states rather than bare cookie lists, and a zip of data/ that also holds the old logs/ folder
(skipped unread, whatever its size). Bad input of each kind stays a clear, per-file message."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from gateway.app import Fleet
from gateway.legacy.archive import MAX_ARCHIVE_BYTES, MAX_DATA_BYTES, MAX_ENTRIES, ArchiveRejected, read_zip
from gateway.legacy.olddata import parse, read_directory
from gateway.legacy.plan import CREATE, CREATED, apply, make_plan, preview, problem_texts, report_json
from gateway.legacy.service_target import ServiceTarget
from gateway.services.session_shape import check_session
from tests.legacy.old_system import EXPIRED, SIGNED_IN, STRAY_ID, cookie_list, write_old_data, zip_directory

SIM = "http://127.0.0.1:9000"
DOMAIN = "127.0.0.1"
LIMIT = 5 * 1024 * 1024
CHINESE_NAME = "测试账号"


def gbk_data(tmp_path: Path) -> Path:
    """The standard old directory, its index rewritten in GBK with Chinese names, one cookie file in GBK too."""
    directory = write_old_data(tmp_path / "data", SIM)
    index = json.loads((directory / "browser_instances.json").read_text("utf-8"))
    index["instances"][0]["name"] = CHINESE_NAME
    index["instances"][1]["name"] = "备用账号"
    index["instances"][1]["error_message"] = "登录已过期"
    (directory / "browser_instances.json").write_bytes(json.dumps(index, ensure_ascii=False, indent=2).encode("gbk"))
    cookies = cookie_list(DOMAIN, "acct-alpha")
    cookies[-1]["value"] = "偏好=中文"  # a non-ASCII value, so that the file really is GBK and not ASCII
    (directory / "cookies" / f"browser_{SIGNED_IN.instance_id}_session.json").write_bytes(
        json.dumps(cookies, ensure_ascii=False).encode("gbk"))
    return directory


def storage_state(account: str, *, expired: bool = False) -> dict:
    """As Playwright's `context.storage_state()` writes it."""
    return {"cookies": cookie_list(DOMAIN, account, expired=expired),
            "origins": [{"origin": "https://aistudio.google.com", "localStorage": [{"name": "theme", "value": "dark"}]}]}


def test_a_gbk_index_with_chinese_names_moves_in_with_its_cookie_files(tmp_path: Path) -> None:
    directory = gbk_data(tmp_path)
    with pytest.raises(UnicodeDecodeError):
        (directory / "browser_instances.json").read_bytes().decode("utf-8")  # the premise: not UTF-8
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    assert data.problems == [] and data.index_problem is None
    assert [old.name for old in data.instances] == [CHINESE_NAME, "备用账号", "gamma one"]
    alpha = data.instances[0]
    assert alpha.session and alpha.session.summary and alpha.session.summary.cookies == 6 and alpha.session.problem is None
    assert alpha.session.content is not None and "偏好=中文" in alpha.session.content.decode("utf-8")  # re-encoded for the instance
    assert check_session(alpha.session.content).cookies == 6
    assert [s.file for s in data.stray] == [f"cookies/browser_{STRAY_ID}_session.json"]  # only the real stray

    assert [(n.key, n.params["file"]) for n in data.notices] == [
        ("migrate_file_encoding", "browser_instances.json"),
        ("migrate_file_encoding", f"cookies/browser_{SIGNED_IN.instance_id}_session.json"),
    ]
    report = preview(make_plan(data, []))
    assert [s.name for s in report.plan.steps][:2] == [CHINESE_NAME, "备用账号"] and report.plan.steps[0].imports_session
    as_json = report_json(report)
    assert as_json["success"] is True and as_json["notices"][0] == {
        "code": "migrate_file_encoding", "file": "browser_instances.json", "encoding": "GB18030 (GBK)"}
    assert "browser_instances.json is not UTF-8 text; it was read as GB18030 (GBK)." in problem_texts(report, "en")
    assert "browser_instances.json 不是 UTF-8 编码，已按 GB18030 (GBK) 读取。" in problem_texts(report, "zh")


def test_utf8_with_a_bom_is_read_as_utf8_without_a_notice(tmp_path: Path) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    index = directory / "browser_instances.json"
    index.write_bytes(b"\xef\xbb\xbf" + index.read_bytes())
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    assert data.problems == [] and data.notices == [] and len(data.instances) == 3


def test_an_index_in_neither_encoding_is_a_clear_error_and_moves_nothing(tmp_path: Path) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    (directory / "browser_instances.json").write_bytes(b'{"instances": [{"instance_id": "a1", "name": "\xff\xfe"}]}')
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    assert data.instances == [] and data.index_problem is not None
    assert data.index_problem.key == "migrate_index_unreadable"
    assert data.index_problem.params["reason"] == "neither UTF-8 nor GBK/GB18030 text"
    report = preview(make_plan(data, []))
    assert report.partial and report_json(report)["success"] is False
    assert "browser_instances.json cannot be read (neither UTF-8 nor GBK/GB18030 text)" in problem_texts(report, "en")[0]


def test_storage_state_cookie_files_move_in_like_cookie_lists(tmp_path: Path) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    cookies = directory / "cookies"
    (cookies / f"browser_{SIGNED_IN.instance_id}_session.json").write_text(json.dumps(storage_state("acct-alpha")))
    (cookies / f"browser_{EXPIRED.instance_id}_session.json").write_text(json.dumps(storage_state("acct-beta", expired=True)))
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    alpha, beta, _gamma = data.instances
    assert alpha.session and alpha.session.summary and alpha.session.problem is None
    assert (alpha.session.summary.cookies, alpha.session.summary.auth_cookies, alpha.session.summary.expired) == (6, 5, False)
    assert beta.session and beta.session.summary and beta.session.summary.expired  # judged by its cookies, as a list is
    plan = make_plan(data, [])
    assert plan.steps[0].imports_session and not plan.steps[1].imports_session
    assert plan.steps[1].session_note is not None and plan.steps[1].session_note.key == "migrate_session_expired"


@pytest.mark.parametrize(
    "content",
    [b'{"SID": "abc", "HSID": "def"}', b'"SID=abc; HSID=def"', b'{"cookies": "SID=abc"}',
     b'{"cookies": [], "origins": ["https://aistudio.google.com"]}', b'[{"name": "SID"}]'],
    ids=["name-value-object", "header-string", "cookies-not-a-list", "origins-not-objects", "cookie-without-value"],
)
def test_a_file_that_is_neither_shape_is_reported_per_file_and_brings_no_login(tmp_path: Path, content: bytes) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    (directory / "cookies" / f"browser_{SIGNED_IN.instance_id}_session.json").write_bytes(content)
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    alpha, beta, _gamma = data.instances
    assert alpha.session and alpha.session.problem and alpha.session.problem.key == "migrate_session_invalid"
    assert alpha.session.problem.params["file"] == f"cookies/browser_{SIGNED_IN.instance_id}_session.json"
    assert alpha.session.content is None and beta.session and beta.session.problem is None  # the others are unaffected
    plan = make_plan(data, [])
    assert plan.steps[0].action == CREATE and not plan.steps[0].imports_session
    assert plan.steps[0].session_note == alpha.session.problem


async def test_gbk_and_storage_state_logins_are_stored_by_the_instance_service(fleet: Fleet, tmp_path: Path) -> None:
    directory = gbk_data(tmp_path)
    (directory / "cookies" / f"browser_{EXPIRED.instance_id}_session.json").write_bytes(
        json.dumps(storage_state("acct-beta"), ensure_ascii=False).encode("gbk"))
    data = parse(read_directory(directory, max_session_bytes=LIMIT))
    target = ServiceTarget(fleet.instances, "zh")
    report = await apply(make_plan(data, await target.existing()), target)
    assert [o.result for o in report.outcomes] == [CREATED] * 3 and not report.partial
    assert [i["session"]["imported"] for i in report_json(report)["instances"]] == [True, True, False]
    assert sorted(v.name for v in await fleet.instances.list()) == sorted([CHINESE_NAME, "备用账号", "gamma-one"])


def _with_logs(directory: Path, logs: dict[str, bytes]) -> bytes:
    """The directory zipped with its logs/ folder, the logs stored uncompressed (so their size is what it says)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, "data/" + path.relative_to(directory).as_posix())
        for name, content in logs.items():
            archive.writestr(f"data/logs/{name}", content, compress_type=zipfile.ZIP_STORED)
    return out.getvalue()


def test_a_zip_with_a_logs_folder_over_the_limits_is_read_and_the_logs_skipped(tmp_path: Path) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    big = {"multi_instance_server_20240601.log": os.urandom(MAX_DATA_BYTES + 1024)}
    many = {f"browser_{n}.log": b"INFO started\n" for n in range(MAX_ENTRIES + 1)}
    for logs in (big, many):
        archive = _with_logs(directory, logs)
        files = read_zip(archive, source="data.zip", max_session_bytes=LIMIT)
        assert files.index == (directory / "browser_instances.json").read_bytes()
        assert len(files.cookie_files) == 3
        data = parse(files)
        assert data.problems == [] and len(data.instances) == 3
        (skipped,) = data.notices
        assert skipped.key == "migrate_zip_logs_skipped" and skipped.params["folder"] == "data/logs/"
        assert skipped.params["files"] == len(logs) + 1  # with the one write_old_data leaves
        report = preview(make_plan(data, []))
        assert report_json(report)["notices"][0]["code"] == "migrate_zip_logs_skipped" and not report.partial
        assert any(line.startswith("data/logs/ was skipped unread") for line in problem_texts(report, "en"))
        assert any(line.startswith("已跳过 data/logs/") for line in problem_texts(report, "zh"))


def test_the_same_bulk_outside_logs_is_still_refused(tmp_path: Path) -> None:
    directory = write_old_data(tmp_path / "data", SIM)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.write(directory / "browser_instances.json", "data/browser_instances.json")
        archive.writestr("data/backup/everything.bin", os.urandom(MAX_DATA_BYTES + 1024))
    with pytest.raises(ArchiveRejected) as refused:
        read_zip(out.getvalue(), source="data.zip", max_session_bytes=LIMIT)
    assert refused.value.note.key == "migrate_zip_too_large" and refused.value.note.params["limit"] == MAX_DATA_BYTES
    out = io.BytesIO(zip_directory(directory))  # and the entry limit still holds for anything but logs/
    with zipfile.ZipFile(out, "a") as archive:
        for n in range(MAX_ENTRIES):
            archive.writestr(f"data/screenshots/{n}.png", b"")
    with pytest.raises(ArchiveRejected) as refused:
        read_zip(out.getvalue(), source="data.zip", max_session_bytes=LIMIT)
    assert refused.value.note.key == "migrate_zip_too_many"


def test_a_file_over_the_whole_archive_limit_is_refused_before_it_is_opened() -> None:
    with pytest.raises(ArchiveRejected) as refused:
        read_zip(b"\0" * (MAX_ARCHIVE_BYTES + 1), source="data.zip", max_session_bytes=LIMIT)
    assert refused.value.note.key == "migrate_zip_too_large" and refused.value.note.params["limit"] == MAX_ARCHIVE_BYTES


def test_a_zip_of_a_gbk_directory_with_storage_states_and_logs_reads_like_the_directory(tmp_path: Path) -> None:
    directory = gbk_data(tmp_path)
    (directory / "cookies" / f"browser_{EXPIRED.instance_id}_session.json").write_text(json.dumps(storage_state("acct-beta")))
    from_dir = parse(read_directory(directory, max_session_bytes=LIMIT))
    from_zip = parse(read_zip(zip_directory(directory), source="data.zip", max_session_bytes=LIMIT))
    assert [(o.legacy_id, o.name) for o in from_zip.instances] == [(o.legacy_id, o.name) for o in from_dir.instances]
    assert [o.session.summary for o in from_zip.instances if o.session] == [o.session.summary for o in from_dir.instances if o.session]
    assert [n.key for n in from_zip.notices] == ["migrate_zip_logs_skipped", "migrate_file_encoding", "migrate_file_encoding"]

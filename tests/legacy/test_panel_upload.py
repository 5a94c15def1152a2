"""The panel's "Move in" page in process (fake runtime): a zip's preview changes nothing, the confirm carries the
previewed file's digest, and a bad zip gets its message (422) with nothing created. The same page in a real
browser against real instances: tests/panel/test_migration_panel.py."""

from __future__ import annotations

import html
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from tests.legacy.old_system import write_old_data, zip_directory
from tests.panel.conftest import csrf_token

Client = AsyncTestClient[Any]


async def post_zip(panel: Client, path: str, archive: bytes, **fields: str) -> Any:
    token = csrf_token((await panel.get("/migrate")).text)
    headers = {"X-CSRFToken": token, "HX-Request": "true", "Accept-Language": "en"}
    files = {"file": ("data.zip", archive, "application/zip")}
    return await panel.post(path, files=files, data=fields, headers=headers)


async def names(panel: Client) -> list[str]:
    return [v["name"] for v in (await panel.get("/api/instances")).json()["instances"]]


async def test_preview_then_confirm(panel: Client, tmp_path: Path) -> None:
    archive = zip_directory(write_old_data(tmp_path / "data", "http://127.0.0.1:9000"))
    page = await panel.get("/migrate")
    assert page.status_code == 200 and 'data-nav="migrate"' in page.text

    preview = await post_zip(panel, "/migrate/preview", archive)
    assert preview.status_code == 200, preview.text
    assert preview.text.count('data-result="would_create"') == 3 and "deadbeef" in preview.text
    assert 'data-action="migrate-confirm"' in preview.text
    assert await names(panel) == []  # a preview changes nothing

    stale = await post_zip(panel, "/migrate/apply", archive, digest="0" * 64)
    assert 'data-migrate-notice' in stale.text and 'data-migrate-phase="preview"' in stale.text
    assert await names(panel) == []  # not the previewed file: previewed again, nothing migrated

    digest = preview.text.split('name="digest" value="', 1)[1].split('"', 1)[0]
    done = await post_zip(panel, "/migrate/apply", archive, digest=digest)
    assert done.status_code == 200 and done.text.count('data-result="created"') == 3
    assert sorted(await names(panel)) == sorted(["账号-alpha", "beta", "gamma-one"])

    again = await post_zip(panel, "/migrate/preview", archive)
    assert again.text.count('data-result="skipped"') == 3 and 'data-action="migrate-confirm"' not in again.text


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return out.getvalue()


INDEX = json.dumps({"instances": [{"instance_id": "a1", "name": "a"}], "updated_at": None}).encode()


async def test_bad_zips_get_a_message_and_change_nothing(panel: Client) -> None:
    cases = {
        "points outside the archive": _zip({"data/browser_instances.json": INDEX, "data/../evil.json": b"[]"}),
        "not a zip archive": b"plain text",
        "is not a session an instance can read": _zip({"data/browser_instances.json": INDEX,
                                                       "data/cookies/browser_a1_session.json": b'{"SID": "x"}'}),
        "is not in the old system's shape": _zip({"data/browser_instances.json": b'["a1"]'}),
        "cannot be read": _zip({"data/browser_instances.json": b"{not json"}),
    }
    for expected, archive in cases.items():
        for path in ("/migrate/preview", "/migrate/apply"):
            answer = await post_zip(panel, path, archive, digest="x")
            assert answer.status_code == 422, (expected, answer.status_code, answer.text[:300])
            assert expected in html.unescape(answer.text) and "data-migrate-error" in answer.text, (expected, answer.text[:500])
    missing = await post_zip(panel, "/migrate/preview", b"")
    assert missing.status_code in (400, 422)
    assert await names(panel) == []


async def test_the_page_needs_its_csrf_token(panel: Client, tmp_path: Path) -> None:
    archive = zip_directory(write_old_data(tmp_path / "data", "http://127.0.0.1:9000"))
    await panel.get("/migrate")
    answer = await panel.post("/migrate/apply", files={"file": ("data.zip", archive, "application/zip")})
    assert answer.status_code == 403
    assert await names(panel) == []


async def test_a_zip_whose_logs_make_it_larger_than_the_panels_other_forms_is_read(panel: Client) -> None:
    """A zip over the admin app's general body limit (10 MB) moves in: its logs/ is skipped, and the page says so."""
    import os

    logs = {f"data/logs/server-{n}.log": os.urandom(1024 * 1024) for n in range(12)}  # random: no compression
    archive = _zip({"data/browser_instances.json": INDEX, **logs})
    assert len(archive) > 12 * 1024 * 1024
    preview = await post_zip(panel, "/migrate/preview", archive)
    assert preview.status_code == 200, preview.text[:500]
    assert 'data-result="would_create"' in preview.text and "logs" in html.unescape(preview.text)


def _session_padded_to(size: int) -> bytes:
    """A storage state the old system could have written, padded with an origin's local storage to `size` bytes."""
    head = b'{"cookies": [{"name": "SID", "value": "x", "domain": ".google.com", "path": "/"}], "origins": [' \
           b'{"origin": "https://aistudio.google.com", "localStorage": [{"name": "pad", "value": "'
    tail = b'"}]}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


async def test_a_zip_whose_sessions_unpack_past_the_total_limit_is_refused_and_changes_nothing(panel: Client) -> None:
    """Each cookie file is within the session limit, all of them together are not: refused while they unpack."""
    from gateway.legacy.archive import MAX_UNPACKED_BYTES

    each = 5 * 1024 * 1024 - 1024  # under the panel's session limit (5 MiB)
    count = MAX_UNPACKED_BYTES // each + 1
    index = json.dumps({"instances": [{"instance_id": f"a{n}", "name": f"old-{n}"} for n in range(count)]}).encode()
    cookies = {f"data/cookies/browser_a{n}_session.json": _session_padded_to(each) for n in range(count)}
    archive = _zip({"data/browser_instances.json": index, **cookies}, zipfile.ZIP_DEFLATED)
    assert len(archive) < 1024 * 1024
    for path in ("/migrate/preview", "/migrate/apply"):
        answer = await post_zip(panel, path, archive, digest="x")
        assert answer.status_code == 422, (path, answer.status_code, answer.text[:300])
        assert f"unpack to more than {MAX_UNPACKED_BYTES} bytes" in html.unescape(answer.text), answer.text[:500]
    assert await names(panel) == []


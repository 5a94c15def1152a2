"""What the admin listener tells a browser about its answers: the type it read from the bytes, no sniffing, no
framing, and a content security policy (the panel's own pages may run their own scripts; nothing else may run).

A compromised instance is a FakeRuntime instance whose screenshot call answers HTML with script.
"""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.test_management_api import EN, started

Client = AsyncTestClient[Any]
HOSTILE_PAGE = b"<!doctype html><script>fetch('/api/instances').then(r => r.text()).then(alert)</script>"


def assert_inert(response: Any) -> None:
    """Headers that keep an answer from being run or framed, whatever a browser makes of its body."""
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    policy = response.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, policy


async def test_a_screenshot_that_is_html_with_script_is_refused_not_passed_on(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    fake.script_screenshot(instance_id, HOSTILE_PAGE, "text/html; charset=utf-8")
    answer = await admin.get(f"/api/instances/{instance_id}/screenshot", headers=EN)
    assert answer.status_code == 502, answer.text
    assert not answer.headers["content-type"].startswith("text/html")
    assert b"<script>" not in answer.content
    assert "is not a PNG, JPEG or WebP image" in answer.json()["message"]
    assert_inert(answer)


async def test_a_screenshot_gets_the_type_of_its_bytes_not_the_instances_header(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    fake.script_screenshot(instance_id, TINY_PNG, "text/html")
    answer = await admin.get(f"/api/instances/{instance_id}/screenshot")
    assert answer.status_code == 200 and answer.content == TINY_PNG
    assert answer.headers["content-type"] == "image/png"
    assert_inert(answer)


async def test_json_logs_and_errors_are_sandboxed(admin: Client, fake: FakeRuntime) -> None:
    instance_id = await started(admin)
    for path in ("/api/instances", f"/api/instances/{instance_id}/logs", "/api/instances/nope", f"/instances/{instance_id}/logs.txt"):
        answer = await admin.get(path)
        assert answer.status_code in (200, 404), (path, answer.status_code)
        assert_inert(answer)


async def test_the_panels_pages_may_run_only_their_own_scripts_and_never_in_a_frame(admin: Client) -> None:
    for path in ("/", "/tasks", "/migrate"):
        page = await admin.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
        policy = page.headers["content-security-policy"]
        assert "sandbox" not in policy
        for directive in ("script-src 'self';", "style-src 'self';", "connect-src 'self'", "frame-ancestors 'none'", "object-src 'none'"):
            assert directive in policy, (path, directive, policy)
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    docs = await admin.get("/schema")
    assert docs.status_code == 200 and "frame-ancestors 'none'" in docs.headers["content-security-policy"]
    assert "sandbox" not in docs.headers["content-security-policy"]


async def test_a_refused_host_is_answered_with_the_same_headers(admin: Client) -> None:
    answer = await admin.get("/api/instances", headers={"Host": "rebound.example"})
    assert answer.status_code == 400
    assert_inert(answer)

"""Panel sessions live in the database: signing out ends one everywhere, even for a copied cookie."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from gateway.app import create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.panel.conftest import TOKEN, csrf_token


async def sign_in(client: AsyncTestClient[Any]) -> str:
    """Signs in through the form; returns the session cookie's value."""
    form = await client.get("/login")
    response = await client.post(
        "/login", data={"token": TOKEN, "next": "/", "_csrf_token": csrf_token(form.text)}, follow_redirects=False
    )
    assert response.status_code in (302, 303)
    return client.cookies["fleet_admin"]


async def signed_in_with(client: AsyncTestClient[Any], cookie: str) -> bool:
    """Whether this cookie alone opens a panel page (else the page sends the browser to sign in)."""
    client.cookies.clear()
    client.cookies.set("fleet_admin", cookie)
    response = await client.get("/tasks", follow_redirects=False)
    assert response.status_code in (200, 302, 303), response.text
    return response.status_code == 200


async def test_signing_out_revokes_the_cookie_on_every_gateway_of_the_database(
    database_url: str, tmp_path: Path
) -> None:
    # Two gateways on one database and one data folder (so one signing key), as behind a load balancer.
    settings = make_settings(database_url, tmp_path, admin_token=TOKEN)
    first, second = create_admin_app(settings, runtime=FakeRuntime()), create_admin_app(settings, runtime=FakeRuntime())
    async with AsyncTestClient(first) as one, AsyncTestClient(second) as other:
        cookie = await sign_in(one)
        kept = await sign_in(other)  # another browser's session, which must outlive the first one's sign-out
        assert await signed_in_with(one, cookie) and await signed_in_with(other, cookie)

        # Sign out on the first gateway, with the page's CSRF token, as the panel's button does.
        one.cookies.set("fleet_admin", cookie)
        token = csrf_token((await one.get("/")).text)
        out = await one.post("/logout", data={"_csrf_token": token}, follow_redirects=False)
        assert out.status_code in (302, 303) and out.headers["location"] == "/login"

        # The copied cookie is worth nothing now, on either gateway; the other session still works.
        assert not await signed_in_with(one, cookie)
        assert not await signed_in_with(other, cookie)
        assert await signed_in_with(other, kept)
        # The bearer token is not a session: sign-out leaves the API usable with it.
        bearer = await other.get("/api/instances", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200


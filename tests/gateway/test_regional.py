"""Each instance's time zone and locale, set with its proxy: the management API and the panel over the fake runtime,
on SQLite and Postgres. Checked: stored normalized, shown with the effective values (fleet defaults), handed to the
instance's environment at its next start, and refused (422 naming the field, nothing stored) when malformed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from pydantic import ValidationError

from fleet_contract.regional import accept_languages_for, normalize_locale, normalize_timezone
from gateway.app import create_admin_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import IsolatedSettings, make_settings
from tests.gateway.test_proxies import EN, OWN, ZH, create, events, start_and_wait, stop_and_wait, view
from tests.panel.conftest import csrf_token

Client = AsyncTestClient[Any]


@pytest.fixture
async def admin_in_tokyo(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Client]:
    """The management API of a gateway whose fleet defaults are Asia/Tokyo and ja-JP."""
    settings = make_settings(database_url, tmp_path, default_timezone="Asia/Tokyo", default_locale="ja-JP")
    async with AsyncTestClient(create_admin_app(settings, runtime=fake)) as client:
        yield client


def test_the_grammar_of_time_zones_and_locales() -> None:
    assert normalize_timezone(" asia/tokyo ") == "Asia/Tokyo" and normalize_timezone("") is None
    assert normalize_locale("ja_jp") == "ja-JP" and normalize_locale("zh-hans-cn") == "zh-Hans-CN"
    for bad in ("Tokyo", "Asia/Nowhere", "../../etc/passwd", "+09:00"):
        with pytest.raises(ValueError):
            normalize_timezone(bad)
    for bad in ("japanese", "j", "ja-", "日本語", "en-US;q=0.9"):
        with pytest.raises(ValueError):
            normalize_locale(bad)
    # English first whatever the locale: the selectors read AI Studio's English labels
    assert accept_languages_for("ja-JP") == "en-US,en,ja-JP,ja"
    assert accept_languages_for("en-GB") == "en-GB,en" and accept_languages_for("en") == "en-US,en"


async def test_create_and_patch_set_them_with_the_proxy_and_the_next_start_gets_them(
    admin: Client, fake: FakeRuntime
) -> None:
    body = await create_with(admin, {"name": "tokyo", "proxy": OWN, "timezone": "asia/tokyo", "locale": "ja_JP"})
    shown = body["instance"]
    assert (shown["timezone"], shown["locale"]) == ("Asia/Tokyo", "ja-JP")
    assert (shown["effective_timezone"], shown["effective_locale"]) == ("Asia/Tokyo", "ja-JP")
    assert [e["kind"] for e in await events(admin, body["instance_id"])] == ["created", "proxy_changed", "regional_changed"]
    env = (await start_and_wait(admin, body["instance_id"]), fake.containers[body["instance_id"]].env)[1]
    assert (env["INSTANCE_TIMEZONE"], env["INSTANCE_LOCALE"]) == ("Asia/Tokyo", "ja-JP")

    # A change applies from the next start, like the proxy's; only the fields given change.
    answer = await admin.patch(f"/api/instances/{body['instance_id']}", json={"timezone": "Europe/Berlin"}, headers=EN)
    assert answer.status_code == 200 and answer.json()["changed"] is True, answer.text
    assert "Europe/Berlin" in answer.json()["message"] and "ja-JP" in answer.json()["message"]
    assert fake.containers[body["instance_id"]].env["INSTANCE_TIMEZONE"] == "Asia/Tokyo"
    await stop_and_wait(admin, body["instance_id"])
    await start_and_wait(admin, body["instance_id"])
    env = fake.containers[body["instance_id"]].env
    assert (env["INSTANCE_TIMEZONE"], env["INSTANCE_LOCALE"], env["INSTANCE_PROXY"]) == ("Europe/Berlin", "ja-JP", OWN)

    # null or "": back to the fleet defaults (UTC, en-US unless GATEWAY_DEFAULT_* say otherwise)
    cleared = await admin.patch(f"/api/instances/{body['instance_id']}", json={"timezone": None, "locale": ""},
                                headers=ZH)
    assert cleared.status_code == 200 and "UTC" in cleared.json()["message"], cleared.text
    after = await view(admin, body["instance_id"])
    assert (after["timezone"], after["locale"], after["effective_timezone"], after["effective_locale"]) == (
        None, None, "UTC", "en-US")
    assert after["proxy"] is not None  # the proxy was not among the fields given
    again = await admin.patch(f"/api/instances/{body['instance_id']}", json={"locale": None})
    assert again.json()["changed"] is False


async def test_fleet_defaults_are_shown_as_effective_and_forwarded(admin_in_tokyo: Client, fake: FakeRuntime) -> None:
    body = await create_with(admin_in_tokyo, {"name": "plain"})
    assert (body["instance"]["timezone"], body["instance"]["effective_timezone"]) == (None, "Asia/Tokyo")
    assert body["instance"]["effective_locale"] == "ja-JP"
    await start_and_wait(admin_in_tokyo, body["instance_id"])
    env = fake.containers[body["instance_id"]].env
    assert (env["INSTANCE_TIMEZONE"], env["INSTANCE_LOCALE"]) == ("Asia/Tokyo", "ja-JP")


@pytest.mark.parametrize(
    ("body", "field", "english", "chinese"),
    [
        ({"timezone": "Tokyo"}, "timezone", "is not an IANA time zone name", "不是 IANA 时区名"),
        ({"locale": "japanese"}, "locale", "is not a language tag", "不是语言标记"),
        # a good proxy beside a bad locale: refused as a whole, so the proxy is not stored either
        ({"proxy": OWN, "locale": "x"}, "locale", "is not a language tag", "不是语言标记"),
    ],
)
async def test_malformed_values_are_refused_naming_the_field_and_nothing_is_stored(
    admin: Client, body: dict[str, Any], field: str, english: str, chinese: str
) -> None:
    instance_id = (await create(admin, "untouched"))["instance_id"]
    before, events_before = await view(admin, instance_id), await events(admin, instance_id)
    for headers, words in ((EN, english), (ZH, chinese)):
        answer = await admin.patch(f"/api/instances/{instance_id}", json=body, headers=headers)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"] == f"{field}_invalid" and f"{field}" in answer.json()["message"]
        assert words in answer.json()["message"]
    refused = await admin.post("/api/instances", json={"name": "never", **body}, headers=EN)
    assert refused.status_code == 422 and refused.json()["error"] == f"{field}_invalid"
    assert await view(admin, instance_id) == before and await events(admin, instance_id) == events_before
    assert [i["name"] for i in (await admin.get("/api/instances")).json()["instances"]] == ["untouched"]


def test_bad_fleet_defaults_stop_the_gateway(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        IsolatedSettings(data_dir=tmp_path, default_timezone="Mars/Olympus")
    assert "GATEWAY_DEFAULT_TIMEZONE" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        IsolatedSettings(data_dir=tmp_path, default_locale="martian")
    assert "GATEWAY_DEFAULT_LOCALE" in str(caught.value)
    settings = IsolatedSettings(data_dir=tmp_path, default_timezone="europe/paris", default_locale="fr_fr")
    assert (settings.instance.default_timezone, settings.instance.default_locale) == ("Europe/Paris", "fr-FR")


async def test_panel_sets_them_and_shows_the_effective_values(admin: Client) -> None:
    htmx = {"HX-Request": "true", "X-CSRFToken": csrf_token((await admin.get("/")).text)}
    instance_id = (await create(admin, "from-panel"))["instance_id"]
    page = (await admin.get(f"/instances/{instance_id}", headers=EN)).text
    assert "data-timezone>UTC (fleet default)" in page and "data-locale>en-US (fleet default)" in page
    refused = await admin.post(f"/instances/{instance_id}/regional", data={"timezone": "Nowhere", "locale": ""},
                               headers={**ZH, **htmx})
    assert refused.status_code == 422 and "不是 IANA 时区名" in refused.text
    saved = await admin.post(f"/instances/{instance_id}/regional", data={"timezone": "Asia/Tokyo", "locale": "en-US"},
                             headers={**EN, **htmx})
    assert saved.status_code == 200 and "Asia/Tokyo" in saved.text
    page = (await admin.get(f"/instances/{instance_id}", headers=EN)).text
    assert "data-timezone>Asia/Tokyo</dd>" in page and 'value="Asia/Tokyo"' in page
    assert (await view(admin, instance_id))["locale"] == "en-US"


async def create_with(admin: Client, body: dict[str, Any]) -> dict[str, Any]:
    response = await admin.post("/api/instances", json=body, headers=EN)
    assert response.status_code == 200, response.text
    return response.json()

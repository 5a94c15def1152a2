"""The catalogue as the pages see it, on the fake runtime (SQLite and Postgres): a model the packaged data lacks,
offered by one account's (fake) page, is listed, checked against the ratios and sizes that page showed, sent only
to that account with those options, and kept in the instance's row; a packaged model no page offers is marked."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.accounts import page_catalogue
from gateway.db.models import Instance, Status
from gateway.runtime.fake import FakeRuntime
from gateway.services.catalogue import CatalogueService
from gateway.app import create_admin_app
from tests.gateway.pool import Pool, open_pool, serve
from tests.polling import await_until

NEW = "gemini-nano-banana-2.2"
FLASH_25 = "gemini-2.5-flash-image"
EN = {"Accept-Language": "en"}


@pytest.fixture
async def pair(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Pool]:
    async with open_pool(database_url, tmp_path, fake, instances=2) as opened:
        yield opened


@pytest.fixture
async def admin_http(pair: Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The admin listener (management API) of the same fleet."""
    async with serve(create_admin_app(pair.fleet.settings, fleet=pair.fleet)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http


async def listed(pool: Pool) -> dict[str, dict]:
    return {m["id"]: m for m in (await pool.http.get("/v1/models")).json()["data"]}


async def test_a_model_one_page_offers_is_served_with_the_options_it_showed(pair: Pool) -> None:
    offering, other = pair.instance_ids
    pair.fake.offer_fake_model(offering, NEW, ["1:1", "8:1"], ["1K", "2K"], label="Nano Banana 2.2")

    async def new_listed() -> bool:
        return NEW in await listed(pair)

    await await_until(new_listed, timeout=15, what="the offered model in /v1/models")
    models = await listed(pair)
    assert models[NEW]["packaged"] is False and models[NEW]["aspect_ratios"] == ["1:1", "8:1"]
    assert models[NEW]["image_sizes"] == ["1K", "2K"] and models[NEW]["name"] == "Nano Banana 2.2"
    assert models["gemini-nano-banana-2.1"]["offered_by_pages"] is True
    gemini = {m["name"]: m for m in (await pair.http.get("/v1beta/models")).json()["models"]}
    assert f"models/{NEW}" in gemini

    for _ in range(3):  # every time to the account whose page lists it, never to the other
        answer = await pair.generate(model=NEW, aspect_ratio="8:1", image_size="2k")
        assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
        generation = pair.fake.generations[-1]
        assert (generation.instance_id, generation.model, generation.aspect_ratio, generation.image_size) == (
            offering, NEW, "8:1", "2K")
        assert generation.model_options == {"ratios": ["1:1", "8:1"], "sizes": ["1K", "2K"], "label": "Nano Banana 2.2"}
    assert all(g.instance_id != other for g in pair.fake.generations if g.model == NEW)

    refused = await pair.http.post("/generate", json={"prompt": "p", "model": NEW, "aspect_ratio": "4:3"}, headers=EN)
    assert refused.status_code == 422 and "8:1" in refused.text
    unknown = await pair.http.post("/generate", json={"prompt": "p", "model": "gemini-nano-banana-9"}, headers=EN)
    assert unknown.status_code == 422

    async with pair.fleet.sessions() as session:
        row = await session.get(Instance, __import__("uuid").UUID(offering))
        assert [m["id"] for m in row.offered_models["models"]][-1] == NEW
        assert row.offered_models["options"][NEW]["ratios"] == ["1:1", "8:1"]


async def test_a_packaged_model_no_page_offers_is_marked(pair: Pool) -> None:
    for instance_id in pair.instance_ids:
        pair.fake.refuse_model(instance_id, FLASH_25)  # the fake picker shows it as not available to the account

    async def marked() -> bool:
        return (await listed(pair))[FLASH_25]["offered_by_pages"] is False

    await await_until(marked, timeout=15, what="the model marked as offered by no page")
    assert (await listed(pair))["gemini-3-pro-image"]["offered_by_pages"] is True
    assert page_catalogue.offer_counts()["gemini-3-pro-image"] == 2


# ---- the operator's catalogue edit ---------------------------------------------------------------------------

EDIT = {"version": "ops-1", "models": [
    {"id": "gemini-nano-banana-2.3", "name": "Nano Banana 2.3", "aspect_ratios": ["1:1", "3:2"], "image_sizes": ["2K"]},
    {"id": "gemini-3-pro-image", "aspect_ratios": ["1:1"], "image_sizes": ["1K"]},
]}


@pytest.mark.parametrize("body, key", [
    (b"{not json", "catalogue_not_json"),
    (b'{"models": [{"id": "m-1", "aspect_ratios": ["1:1"], "colour": "red"}]}', "catalogue_unknown_field"),
    (b'{"modles": []}', "catalogue_unknown_field"),
    (b'{"models": [{"id": "m-1", "aspect_ratios": []}]}', "catalogue_no_ratio"),
    (b'{"models": [{"id": "m-1"}]}', "catalogue_no_ratio"),
    (b'{"models": [{"id": "gemini-3.1-flash-image", "aspect_ratios": ["1:1"]}]}', "catalogue_id_retired"),
    (b'{"models": [{"id": "m-1", "aspect_ratios": ["1:1"], "image_sizes": ["3K"]}]}', "catalogue_size_invalid"),
])
async def test_a_bad_catalogue_edit_is_refused_with_the_reason_and_the_current_one_stays(
    admin_http: httpx.AsyncClient, body: bytes, key: str
) -> None:
    kept = {"models": [{"id": "kept-1", "aspect_ratios": ["1:1"]}]}
    assert (await admin_http.put("/api/catalogue/", json=kept)).status_code == 200
    refused = await admin_http.put("/api/catalogue/", content=body, headers=EN)
    assert refused.status_code in (400, 422), refused.text
    template = json.loads((Path(__file__).resolve().parents[2] / "gateway/locales/en.json").read_text("utf-8"))[key]
    said = refused.json()["message"]
    assert all(part in said for part in re.split(r"\{[a-z_]+\}", template) if part), (said, template)
    assert (await admin_http.get("/api/catalogue/")).json()["override"] == kept
    assert page_catalogue.operator_ids() == ["kept-1"]  # the model check still uses the current edit


async def test_an_operator_edit_is_used_by_the_model_check_and_sent_to_the_instance(pair: Pool, admin_http: httpx.AsyncClient) -> None:
    saved = await admin_http.put("/api/catalogue/", json=EDIT)
    assert saved.status_code == 200, saved.text
    answer = await pair.generate(model="gemini-nano-banana-2.3", aspect_ratio="3:2", image_size="2K")
    assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
    generation = pair.fake.generations[-1]
    assert generation.model == "gemini-nano-banana-2.3"
    assert generation.model_options == {"ratios": ["1:1", "3:2"], "sizes": ["2K"], "label": "Nano Banana 2.3"}
    narrowed = await pair.http.post("/generate", json={"prompt": "p", "model": "gemini-3-pro-image", "aspect_ratio": "16:9"}, headers=EN)
    assert narrowed.status_code == 422  # the operator's edit of a packaged model is the one check's
    view = (await admin_http.get("/api/catalogue/")).json()
    sources = {m["id"]: m["source"] for m in view["models"]}
    assert sources["gemini-nano-banana-2.3"] == "operator" and sources["gemini-3-pro-image"] == "operator"
    assert sources["gemini-nano-banana-2.1"] == "packaged" and view["retired"]
    assert "gemini-nano-banana-2.3" in await listed(pair)
    assert (await admin_http.delete("/api/catalogue/")).json()["removed"] is True
    gone = await pair.http.post("/generate", json={"prompt": "p", "model": "gemini-nano-banana-2.3"}, headers=EN)
    assert gone.status_code == 422


async def test_a_read_of_an_older_edit_that_lands_after_a_newer_one_leaves_the_newer(
    pair: Pool, admin_http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = {"models": [{"id": "older-model", "aspect_ratios": ["1:1"]}]}
    assert (await admin_http.put("/api/catalogue/", json=older)).json() is not None
    read = CatalogueService._stored
    has_read, held = asyncio.Event(), asyncio.Event()

    async def held_read(service: CatalogueService) -> Any:  # a listing that read the edit, then waited while a newer one was saved
        stored = await read(service)
        has_read.set()
        await held.wait()
        return stored

    monkeypatch.setattr(CatalogueService, "_stored", held_read)
    listing = asyncio.ensure_future(admin_http.get("/api/catalogue/"))
    await asyncio.wait_for(has_read.wait(), timeout=10)
    monkeypatch.setattr(CatalogueService, "_stored", read)
    assert (await admin_http.put("/api/catalogue/", json=EDIT)).status_code == 200
    held.set()
    late = (await listing).json()
    assert (late["override"], late["revision"]) == (older, 1)  # what it read, shown as such
    assert page_catalogue.installed_revision() == 2 and "older-model" not in page_catalogue.operator_ids()
    answer = await pair.generate(model="gemini-nano-banana-2.3", aspect_ratio="3:2", image_size="2K")
    assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
    assert (await admin_http.get("/api/catalogue/")).json()["revision"] == 2


async def test_a_replica_that_does_not_lead_learns_the_offers_from_the_rows(pair: Pool) -> None:
    """Only the leading replica probes pages; another one reads what they offered from the instances' rows."""
    offering, other = pair.instance_ids
    pair.fake.offer_fake_model(offering, NEW, ["1:1", "8:1"], ["1K", "2K"], label="Nano Banana 2.2")
    await await_until(lambda: _row_offers(pair, offering), timeout=15, what="the offer written to the instance's row")
    page_catalogue.clear()  # what a follower knows before it reads the rows: nothing
    assert page_catalogue.offered_spec(NEW) is None
    await pair.fleet.reconciler.follow_offers()
    spec = page_catalogue.offered_spec(NEW)
    assert spec is not None and list(spec.aspect_ratios) == ["1:1", "8:1"]
    assert {str(i) for i in page_catalogue.accounts_offering(NEW)} == {offering}
    await pair.fleet.instances.stop(other)
    await pair.fleet.instances.stop(offering)
    await await_until(lambda: _stopped(pair, offering), timeout=15, what="the offering instance stopped")
    await pair.fleet.reconciler.follow_offers()
    assert page_catalogue.accounts_offering(NEW) == set()  # a stopped account's page offers nothing now


async def _row_offers(pool: Pool, instance_id: str) -> bool:
    async with pool.fleet.sessions() as session:
        row = await session.get(Instance, __import__("uuid").UUID(instance_id))
        return bool(row and row.offered_models and any(m["id"] == NEW for m in row.offered_models.get("models", [])))


async def _stopped(pool: Pool, instance_id: str) -> bool:
    async with pool.fleet.sessions() as session:
        row = await session.get(Instance, __import__("uuid").UUID(instance_id))
        return row is not None and row.status == Status.STOPPED

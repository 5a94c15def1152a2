"""Models, ratios and sizes through the generation API, on the fake runtime: the catalogue's 422s (nothing
dispatched, nothing stored), what reaches the instance and what the answer and the task row say, and an
account that cannot use a model (the task goes elsewhere without spending its retry; the instance is blocked
for that model until it restarts or gets a new session). SQLite and Postgres where the database decides."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from datetime import date

import httpx
import pytest

from fleet_contract import catalogue as contract_catalogue
from fleet_contract.catalogue import CATALOGUE_PATH, parse
from fleet_contract.catalogue import load as load_catalogue
from gateway.app import create_admin_app
from gateway.dispatcher import generation_options
from gateway.errors import Invalid
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.pool import Pool, open_pool, serve
from tests.polling import await_until

PNG = base64.b64encode(TINY_PNG).decode()
EN = {"Accept-Language": "en"}
DEFAULT = "gemini-nano-banana-2.1"
PRO = "gemini-3-pro-image"
LITE = "gemini-3.1-flash-lite-image"
FLASH_25 = "gemini-2.5-flash-image"
RETIRED_FLASH = "gemini-3.1-flash-image"  # shut down 2026-10-29, Nano Banana 2.1 in its place
STANDARD = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
EXTREME = ["1:4", "4:1", "1:8", "8:1"]


# ---- the catalogue itself ---------------------------------------------------------------------------


def test_the_catalogue_files_shape() -> None:
    """models.json as the contract package ships it: every key the reader relies on, with its type."""
    assert CATALOGUE_PATH.parts[-2:] == ("fleet_contract", "models.json")
    raw = json.loads(CATALOGUE_PATH.read_text("utf-8"))
    assert set(raw) == {"version", "about", "default_model", "pages_driven", "models", "retired"}
    assert isinstance(raw["version"], str) and isinstance(raw["about"], str) and raw["pages_driven"] == ["chat"]
    model_keys = {"id", "name", "page", "aliases", "aspect_ratios", "image_sizes", "references"}
    for model in raw["models"]:
        assert set(model) == model_keys, model["id"]
        assert model["page"] in ("chat", "imagen") and isinstance(model["references"], bool)
        assert all(isinstance(v, str) for key in ("aliases", "aspect_ratios", "image_sizes") for v in model[key])
        assert set(model["aspect_ratios"]) <= set(STANDARD + EXTREME) and set(model["image_sizes"]) <= {"512", "1K", "2K", "4K"}
    current = {m["id"] for m in raw["models"]}
    for retired in raw["retired"]:
        assert set(retired) == {"id", "name", "aliases", "retired_on", "successor"}, retired["id"]
        assert date.fromisoformat(retired["retired_on"]) and retired["successor"] in current
    names = [n for m in raw["models"] + raw["retired"] for n in (m["id"], *m["aliases"])]
    assert len(names) == len(set(names))  # a name means one model
    assert raw["default_model"] in current


def test_the_catalogue_lists_todays_models() -> None:
    catalogue = load_catalogue()
    assert catalogue.default_model == DEFAULT and catalogue.default.name == "Nano Banana 2.1"
    assert catalogue.ids == (DEFAULT, PRO, LITE, FLASH_25) and [m.id for m in catalogue.driven] == list(catalogue.ids)
    assert list(catalogue.find(DEFAULT).aspect_ratios) == STANDARD + EXTREME
    assert catalogue.find(DEFAULT).image_sizes == catalogue.find(PRO).image_sizes == ("1K", "2K", "4K")
    assert list(catalogue.find(LITE).aspect_ratios) == STANDARD + EXTREME and catalogue.find(LITE).image_sizes == ("1K",)
    assert list(catalogue.find(PRO).aspect_ratios) == list(catalogue.find(FLASH_25).aspect_ratios) == STANDARD
    assert catalogue.find(FLASH_25).image_sizes == ()
    # Earlier names stay aliases of the model they became.
    for earlier, current in [(f"{FLASH_25}-preview", FLASH_25), (f"{PRO}-preview", PRO)]:
        assert catalogue.find(earlier).id == current
    # Shut-down models are no current model, and each names its successor.
    retired = {r.id: (r.retired_on, r.successor) for r in catalogue.retired}
    assert retired == {
        RETIRED_FLASH: ("2026-10-29", DEFAULT),
        "imagen-4.0-generate-001": ("2026-08-17", DEFAULT),
        "imagen-4.0-ultra-generate-001": ("2026-08-17", PRO),
        "imagen-4.0-fast-generate-001": ("2026-08-17", LITE),
    }
    for name in [*retired, f"{RETIRED_FLASH}-preview"]:
        assert catalogue.find(name) is None and catalogue.find_retired(name) is not None
    assert catalogue.find_retired(f"{RETIRED_FLASH}-preview").id == RETIRED_FLASH


def _raw(**changes: Any) -> dict[str, Any]:
    raw = json.loads(CATALOGUE_PATH.read_text("utf-8"))
    return {**raw, **changes}


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"default_model": RETIRED_FLASH}, "default model"),
        ({"retired": [{"id": "old", "retired_on": "2026-01-01", "successor": RETIRED_FLASH}]}, "successor"),
        ({"retired": [{"id": "old", "retired_on": "2026-01-01", "successor": f"{PRO}-preview"}]}, "successor"),
        ({"retired": [{"id": PRO, "retired_on": "2026-01-01", "successor": DEFAULT}]}, "twice"),
    ],
)
def test_a_catalogue_that_contradicts_itself_fails_at_load(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(_raw(**changes))


def test_a_model_on_a_page_not_driven_is_listed_but_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model of today's catalogue lives on another page, but the reader and the one check still know how."""
    other = {"id": "imagen-5", "name": "Imagen 5", "page": "imagen", "aliases": [], "aspect_ratios": ["1:1"],
             "image_sizes": [], "references": False}
    catalogue = parse(_raw(models=[*_raw()["models"], other]))
    assert catalogue.find("imagen-5").driven is False and "imagen-5" not in [m.id for m in catalogue.driven]
    monkeypatch.setattr(contract_catalogue, "load", lambda: catalogue)
    with pytest.raises(Invalid) as caught:
        generation_options("imagen-5", None, None)
    assert caught.value.key == "model_not_driven" and DEFAULT in caught.value.params["choices"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        (f"{RETIRED_FLASH}={DEFAULT}, imagen-4.0-generate-001={PRO}", {RETIRED_FLASH: DEFAULT, "imagen-4.0-generate-001": PRO}),
        (f"dall-e-3={PRO}-preview", {"dall-e-3": PRO}),  # any name a client cannot change; a target by an earlier name
    ],
)
def test_operator_aliases_read(text: str, expected: dict[str, str]) -> None:
    assert load_catalogue().operator_aliases(text) == expected


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pool]:
    tmp = tmp_path_factory.mktemp("models")
    async with open_pool(f"sqlite+aiosqlite:///{tmp}/gateway.db", tmp, FakeRuntime(), instances=1) as opened:
        yield opened


@pytest.fixture
async def untouched(pool: Pool) -> AsyncIterator[None]:
    """The request must neither reach an instance nor leave a task row."""
    generations, tasks = len(pool.fake.generations), await pool.task_count()
    yield
    assert len(pool.fake.generations) == generations
    assert await pool.task_count() == tasks


BAD: list[tuple[str, dict[str, Any], str, list[str]]] = [
    # (id, body, error key, words the English message must hold: the allowed values)
    ("unknown model", {"model": "gemini-9-ultra"}, "model_unknown", ["gemini-9-ultra", DEFAULT, PRO, LITE, FLASH_25]),
    ("ratio the model lacks", {"model": PRO, "aspect_ratio": "1:8"}, "aspect_ratio_unknown", [PRO, "1:8", "21:9", "Auto"]),
    ("ratio unknown to the default", {"aspect_ratio": "2:1"}, "aspect_ratio_unknown", [DEFAULT, "16:9", "8:1"]),
    ("size the model lacks", {"model": PRO, "image_size": "8K"}, "image_size_unknown", [PRO, "8K", "1K, 2K, 4K"]),
    ("size the lite model lacks", {"model": LITE, "image_size": "2K"}, "image_size_unknown", [LITE, "2K", "1K"]),
    ("size on a model without sizes", {"model": FLASH_25, "image_size": "2K"}, "image_size_not_offered", [FLASH_25, "image_size"]),
    ("size unknown to the default", {"image_size": "512"}, "image_size_unknown", [DEFAULT, "1K, 2K, 4K"]),
    ("model not text", {"model": 3}, "field_type", ["model"]),
    ("size not text", {"model": PRO, "image_size": 2}, "field_type", ["image_size"]),
    # Shut down: refused at once, naming the date and the model to use instead.
    ("retired flash", {"model": RETIRED_FLASH}, "model_retired", [RETIRED_FLASH, "2026-10-29", DEFAULT]),
    ("retired preview name", {"model": f"{RETIRED_FLASH}-preview"}, "model_retired", [f"{RETIRED_FLASH}-preview", DEFAULT]),
    ("Imagen", {"model": "imagen-4.0-generate-001"}, "model_retired", ["imagen-4.0-generate-001", "2026-08-17", DEFAULT]),
]


@pytest.mark.parametrize("path", ["/generate", "/tasks"])
@pytest.mark.parametrize(("body", "key", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
async def test_options_the_model_lacks_are_422_naming_what_it_offers(
    pool: Pool, untouched: None, path: str, body: dict[str, Any], key: str, words: list[str]
) -> None:
    english = await pool.http.post(path, json={"prompt": "p", **body}, headers=EN)
    assert english.status_code == 422, english.text
    assert english.json()["success"] is False and english.json()["error"] == key
    for word in words:
        assert word in english.json()["message"]
    chinese = await pool.http.post(path, json={"prompt": "p", **body})
    assert chinese.status_code == 422 and any("\u4e00" <= ch <= "\u9fff" for ch in chinese.json()["message"])


async def test_the_form_is_checked_the_same_way(pool: Pool, untouched: None) -> None:
    files = [("reference_images", ("a.png", TINY_PNG, "image/png"))]  # multipart: the endpoint takes no other form
    form = {"prompt": "p", "model": PRO, "image_size": "16K"}
    response = await pool.http.post("/generate-with-file", data=form, files=files, headers=EN)
    assert response.status_code == 422 and response.json()["error"] == "image_size_unknown"
    imagen = {"prompt": "p", "model": "imagen-4.0-fast-generate-001"}
    response = await pool.http.post("/generate-with-file", data=imagen, files=files, headers=EN)
    assert response.status_code == 422 and response.json()["error"] == "model_retired"
    assert LITE in response.json()["message"]


# ---- what reaches the instance --------------------------------------------------------------------------


async def test_an_old_request_runs_the_default_model_at_the_pages_default_size(pool: Pool) -> None:
    body = (await pool.generate(aspect_ratio="16:9")).json()
    assert body["success"] is True and body["model"] == DEFAULT and body["image_size"] is None
    generation = pool.fake.generations[-1]
    assert generation.model == DEFAULT and generation.image_size is None and generation.aspect_ratio == "16:9"
    row = (await pool.task_rows())[-1]
    assert str(row.id) == body["task_id"] and row.model == DEFAULT and row.image_size is None


async def test_model_and_size_reach_the_instance_and_the_row_an_alias_as_its_successor(pool: Pool) -> None:
    body = (await pool.generate(model=f"{PRO}-preview", aspect_ratio="21:9", image_size="2k")).json()
    assert body["success"] is True and body["model"] == PRO and body["image_size"] == "2K"
    generation = pool.fake.generations[-1]
    assert (generation.model, generation.image_size, generation.aspect_ratio) == (PRO, "2K", "21:9")
    row = (await pool.task_rows())[-1]
    assert (row.model, row.image_size, row.aspect_ratio) == (PRO, "2K", "21:9")


async def test_the_extra_ratios_of_nano_banana_2_1_and_an_async_task_reports_its_options(pool: Pool) -> None:
    submitted = await pool.http.post("/tasks", json={"prompt": "p", "model": DEFAULT, "aspect_ratio": "1:8", "image_size": "4K"})
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]

    async def done() -> bool:
        return (await pool.http.get(f"/tasks/{task_id}")).json()["done"]

    await await_until(done, timeout=5, what="the task to finish")
    body = (await pool.http.get(f"/tasks/{task_id}")).json()
    assert body["success"] is True and (body["model"], body["image_size"]) == (DEFAULT, "4K")
    generation = next(g for g in pool.fake.generations if g.task_id == task_id)
    assert (generation.model, generation.image_size, generation.aspect_ratio) == (DEFAULT, "4K", "1:8")


async def test_the_form_carries_model_and_size(pool: Pool) -> None:
    files = [("reference_images", ("a.png", TINY_PNG, "image/png"))]
    form = {"prompt": "p", "aspect_ratio": "8:1", "model": LITE, "image_size": "1K"}
    body = (await pool.http.post("/generate-with-file", data=form, files=files)).json()
    assert body["success"] is True and body["model"] == LITE
    generation = pool.fake.generations[-1]
    assert (generation.model, generation.image_size, generation.aspect_ratio) == (LITE, "1K", "8:1")
    assert generation.references == [PNG]


# ---- an account that cannot use a model ------------------------------------------------------------------


@pytest.fixture
async def pair(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Pool]:
    # One attempt only: a model_unavailable answer must not spend it.
    async with open_pool(database_url, tmp_path, fake, instances=2, max_attempts=1) as opened:
        yield opened


async def unavailable_models(pool: Pool, instance_id: str) -> list[str]:
    await pool.fleet.dispatcher.settled()  # a task's last release is written just after its answer
    view = await pool.fleet.instances.get(instance_id)
    return [block.model for block in view.unavailable_models]


def models_run_on(pool: Pool, instance_id: str) -> list[tuple[str | None, str]]:
    return [(g.model, g.outcome) for g in pool.fake.generations if g.instance_id == instance_id]


async def test_model_unavailable_goes_elsewhere_unspent_and_blocks_that_model_there(pair: Pool) -> None:
    first, second = pair.lru_order()
    pair.fake.refuse_model(first, PRO)
    body = (await pair.generate(model=PRO)).json()
    assert body["success"] is True and body["instance_id"] == second and body["attempts"] == 1
    assert [t["outcome"] for t in body["timings"]["tries"]] == ["model_unavailable", "succeeded"]
    assert await unavailable_models(pair, first) == [PRO] and await unavailable_models(pair, second) == []
    view = await pair.fleet.instances.get(first)
    assert view.unavailable_models[0].reason and view.tasks_failed == 0  # nothing ran there
    # The management API shows it, for one instance and in the list.
    async with serve(create_admin_app(pair.fleet.settings, fleet=pair.fleet)) as url, httpx.AsyncClient(base_url=url) as admin:
        shown = (await admin.get(f"/api/instances/{first}")).json()["instance"]["unavailable_models"]
        assert [b["model"] for b in shown] == [PRO] and shown[0]["reason"] and shown[0]["since"]
        listed = {v["instance_id"]: v["unavailable_models"] for v in (await admin.get("/api/instances")).json()["instances"]}
        assert [b["model"] for b in listed[first]] == [PRO] and listed[second] == []
    # Later tasks for that model never go there; other models still do.
    for _ in range(3):
        assert (await pair.generate(model=PRO)).json()["instance_id"] == second
    assert (await pair.generate()).json()["instance_id"] == first
    assert models_run_on(pair, first) == [(PRO, "model_unavailable"), (DEFAULT, "ok")]


async def test_a_model_no_account_can_use_fails_then_is_refused_without_dispatch(pair: Pool) -> None:
    for instance_id in pair.instance_ids:
        pair.fake.refuse_model(instance_id, LITE)
    response = await pair.http.post("/generate", json={"prompt": "p", "model": LITE}, headers=EN)
    body = response.json()
    assert response.status_code == 200 and body["success"] is False and body["error_code"] == "model_unavailable"
    assert body["attempts"] == 0 and "model" in body["message"]
    assert len(pair.fake.generations) == 2
    for instance_id in pair.instance_ids:
        assert await unavailable_models(pair, instance_id) == [LITE]
    tasks = await pair.task_count()
    refused = await pair.http.post("/generate", json={"prompt": "p", "model": LITE}, headers=EN)
    assert refused.status_code == 503 and refused.json()["error"] == "model_unavailable_everywhere"
    assert LITE in refused.json()["message"] and refused.headers["Retry-After"]
    assert len(pair.fake.generations) == 2 and await pair.task_count() == tasks
    assert (await pair.generate(model=PRO)).json()["success"] is True  # other models are served


async def test_a_restart_clears_the_block(pair: Pool) -> None:
    first, second = pair.lru_order()
    pair.fake.refuse_model(first, PRO)
    assert (await pair.generate(model=PRO)).json()["instance_id"] == second
    assert await unavailable_models(pair, first) == [PRO]
    await pair.fleet.instances.stop(first)
    await await_until(lambda: _status(pair, first, "stopped"), timeout=5, what="the instance stopped")
    await pair.fleet.instances.start(first)
    await await_until(lambda: _ready(pair, first), timeout=5, what="the instance ready again")
    assert await unavailable_models(pair, first) == []
    # Its new container's account has the model: the least recently used instance takes it again.
    body = (await pair.generate(model=PRO)).json()
    assert body["success"] is True and body["instance_id"] == first


async def test_a_new_session_clears_the_block(pair: Pool) -> None:
    first, second = pair.lru_order()
    pair.fake.refuse_model(first, PRO)
    assert (await pair.generate(model=PRO)).json()["instance_id"] == second
    state = {"cookies": [{"name": "SID", "value": "x", "domain": ".google.com", "path": "/"}], "origins": []}
    await pair.fleet.instances.import_session(first, json.dumps(state).encode())
    assert await unavailable_models(pair, first) == []
    # The import woke a pass that probes (and locks) the row; a lease skips a locked row, so let it finish.
    await asyncio.wait_for(pair.fleet.reconciler.next_pass(), 10)
    # The same account still lacks it: asked again, blocked again, and the task still succeeds elsewhere.
    body = (await pair.generate(model=PRO)).json()
    assert body["success"] is True and body["instance_id"] == second
    assert await unavailable_models(pair, first) == [PRO]
    assert [m for m, _ in models_run_on(pair, first)] == [PRO, PRO]


async def test_a_queued_task_for_a_blocked_model_lets_other_models_through(pair: Pool) -> None:
    first, second = pair.lru_order()
    pair.fake.refuse_model(first, PRO)
    assert (await pair.generate(model=PRO)).json()["instance_id"] == second
    pair.fake.set_generate_delay(second, 30.0)  # held until the pool closes
    running = (await pair.http.post("/tasks", json={"prompt": "long", "model": PRO})).json()
    assert running["status"] == "running"
    waiting = (await pair.http.post("/tasks", json={"prompt": "waits for the second", "model": PRO})).json()
    assert waiting["status"] == "queued"
    behind = (await pair.http.post("/tasks", json={"prompt": "any instance will do"})).json()
    assert behind["status"] == "queued"

    async def behind_done() -> bool:
        return (await pair.http.get(f"/tasks/{behind['task_id']}")).json()["done"]

    await await_until(behind_done, timeout=10, what="the task behind to finish")
    finished = (await pair.http.get(f"/tasks/{behind['task_id']}")).json()
    assert finished["success"] is True and finished["instance_id"] == first
    # The one ahead of it still waits for the only instance that can use its model.
    assert (await pair.http.get(f"/tasks/{waiting['task_id']}")).json()["status"] == "queued"


async def _status(pool: Pool, instance_id: str, status: str) -> bool:
    return (await pool.fleet.instances.get(instance_id)).status == status


async def _ready(pool: Pool, instance_id: str) -> bool:
    view = await pool.fleet.instances.get(instance_id)
    return view.status == "running" and view.login_state == "logged_in"

"""Kept results (GATEWAY_RESULT_STORE): both stores behind one interface, on both databases; the setting and its
refusals; and two gateways on one Postgres with separate data folders, each serving the other's results, signed
URLs and expiries alike."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.api.image_urls import ImageSigner
from gateway.app import Fleet, create_api_app
from gateway.db.engine import create_db_engine
from gateway.db.migrate import prepare_schema
from gateway.db.models import FleetMarker, KeptResult
from gateway.db.types import utcnow
from gateway.dispatcher.results import (
    IN_DATABASE,
    DatabaseResultStore,
    FileResultStore,
    StoredResult,
)
from gateway.retention import Purged
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY, make_settings
from tests.gateway.pool import DISPATCH_FAST, serve, start_instances
from tests.polling import await_until

TINY_B64 = base64.b64encode(TINY_PNG).decode()
REPO = Path(__file__).resolve().parents[2]
KEY = "replica-api-key"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    db = create_db_engine(database_url)
    await prepare_schema(db, upgrade=True)
    try:
        yield db
    finally:
        await db.dispose()


# ---- the database's store ----------------------------------------------------------------------------------


async def test_database_store_keeps_a_result_until_it_expires(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=3600)
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [TINY_B64, "c2Vjb25k"], "the page's text")
    assert reference == IN_DATABASE
    assert await store.load(task_id, reference) == StoredResult([TINY_B64, "c2Vjb25k"], "the page's text")
    assert await store.load(uuid.uuid4(), reference) is None  # another task's
    assert await store.load(task_id, "/data/results/some-file.json") is None  # a file reference is not its own
    assert await store.load(task_id, None) is None  # the row forgot it (expired)
    # Nothing expired yet: a prune keeps it; an hour later it is gone, and only it.
    assert await store.prune() == 0
    assert await store.prune(utcnow() + timedelta(seconds=3601)) == 1
    assert await store.load(task_id, reference) is None


async def test_database_store_answers_none_past_the_expiry_before_any_prune(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=0.3)
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [TINY_B64], None)
    assert (await store.load(task_id, reference)) == StoredResult([TINY_B64], None)
    await asyncio.sleep(0.4)
    assert await store.load(task_id, reference) is None
    async with engine.connect() as connection:  # still there: only retention's prune deletes it
        assert await connection.scalar(select(func.count()).select_from(KeptResult)) == 1
    assert await store.prune() == 1


async def test_database_store_prunes_in_batches_and_deletes_by_task(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=60, batch=2)
    ids = [uuid.uuid4() for _ in range(5)]
    for task_id in ids:
        await store.save(task_id, [TINY_B64], None)
    # Retention hands over the deleted tasks' references: file references are not this store's.
    assert await store.delete([(ids[0], IN_DATABASE), (ids[1], "/elsewhere/x.json")]) == 1
    assert await store.load(ids[0], IN_DATABASE) is None and await store.load(ids[1], IN_DATABASE) is not None
    assert await store.delete([]) == 0
    assert await store.prune(utcnow() + timedelta(seconds=61)) == 4  # more than one batch of 2


async def test_database_store_reads_one_image_alone(engine: AsyncEngine) -> None:
    """The database picks the element (->> on Postgres, json_extract on SQLite): one image, never the others."""
    store = DatabaseResultStore(engine, ttl=3600)
    task_id = uuid.uuid4()
    images = [base64.b64encode(f"image {n}".encode()).decode() for n in range(3)]
    reference = await store.save(task_id, images, "text")
    assert [await store.load_image(task_id, reference, n) for n in range(3)] == [b"image 0", b"image 1", b"image 2"]
    assert await store.load_image(task_id, reference, 3) is None and await store.load_image(task_id, reference, -1) is None
    assert await store.load_image(uuid.uuid4(), reference, 0) is None
    opened = await store.open_image(task_id, reference, 1)
    assert opened is not None and (opened.first, opened.size) == (b"image 1", 7)
    # Past its expiry (before any prune): gone.
    brief = DatabaseResultStore(engine, ttl=0.3)
    short = uuid.uuid4()
    await brief.save(short, images, None)

    async def first_image() -> bytes | None:
        return await brief.load_image(short, IN_DATABASE, 0)

    await await_until(first_image, until=lambda image: image is None, timeout=10, what="the short result to expire")


async def test_saving_one_task_twice_keeps_the_second(engine: AsyncEngine) -> None:
    store = DatabaseResultStore(engine, ttl=60)
    task_id = uuid.uuid4()
    await store.save(task_id, ["Zmlyc3Q="], "first")
    await store.save(task_id, ["c2Vjb25k"], None)
    assert await store.load(task_id, IN_DATABASE) == StoredResult(["c2Vjb25k"], None)


# ---- the data folder's store -------------------------------------------------------------------------------


async def test_file_store_keeps_prunes_and_deletes_only_its_own(tmp_path: Path) -> None:
    store = FileResultStore(tmp_path / "results", ttl=60)
    first, second = uuid.uuid4(), uuid.uuid4()
    path = await store.save(first, [TINY_B64], "text")
    assert path == str(tmp_path / "results" / f"{first}.json")
    assert await store.load(first, path) == StoredResult([TINY_B64], "text")
    assert await store.load_image(first, path, 0) == TINY_PNG and await store.load_image(first, path, 1) is None
    assert await store.load(first, IN_DATABASE) is None and await store.load(first, None) is None
    # Past its time by its file's age.
    old = (tmp_path / "results" / f"{first}.json")
    os.utime(old, (0, 0))
    assert await store.load(first, path) is None and await store.load_image(first, path, 0) is None  # before a prune
    other = await store.save(second, [TINY_B64], None)
    assert await store.prune() == 1 and not old.exists()
    assert await store.load(first, path) is None
    # Retention's deletion: a file outside its folder is not the gateway's to delete.
    outside = tmp_path / "keep.json"
    outside.write_text("{}")
    assert await store.delete([(uuid.uuid4(), str(outside)), (second, IN_DATABASE)]) == 0
    assert await store.delete([(second, other)]) == 1
    assert outside.exists() and not Path(other).exists()


async def test_a_damaged_result_file_reads_as_gone(tmp_path: Path) -> None:
    store = FileResultStore(tmp_path / "results", ttl=60)
    task_id = uuid.uuid4()
    path = Path(await store.save(task_id, [TINY_B64], None))
    path.write_text("[not a result")
    assert await store.load(task_id, str(path)) is None


# ---- the setting -------------------------------------------------------------------------------------------


def test_auto_is_the_database_on_postgres_and_files_on_sqlite(tmp_path: Path) -> None:
    postgres = "postgresql+asyncpg://u@db/fleet"
    assert make_settings(postgres, tmp_path).result_store_kind == "database"
    assert make_settings("", tmp_path).result_store_kind == "files"
    assert make_settings(f"sqlite+aiosqlite:///{tmp_path}/g.db", tmp_path).result_store_kind == "files"
    assert make_settings(postgres, tmp_path, result_store="files").result_store_kind == "files"
    assert make_settings("", tmp_path, result_store="database").dispatch.result_store == "database"


@pytest.mark.parametrize("value", ["gcs", "", "Database "])
def test_an_unknown_store_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings("", tmp_path, result_store=value)
    assert "result_store" in str(refused.value)


def test_files_in_a_data_folder_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValidationError) as refused:
        make_settings("postgresql+asyncpg://u@db/fleet", blocker / "data", result_store="files")
    assert f"{blocker} is not a folder" in str(refused.value) and "GATEWAY_RESULT_STORE=files" in str(refused.value)
    # The database's store does not need the folder.
    assert make_settings("postgresql+asyncpg://u@db/fleet", blocker / "data").result_store_kind == "database"


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the developer's AWS variables nor their ~/.aws files: the settings alone decide."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


MINIO = {"result_s3_endpoint_url": "http://minio:9000"}
KEYS = {"result_s3_access_key_id": "fleet", "result_s3_secret_access_key": "fleet-secret"}
S3_REFUSALS = [
    ({}, "GATEWAY_RESULT_STORE=s3 needs GATEWAY_RESULT_S3_URL"),
    ({"result_s3_url": "s3:///results", **MINIO, **KEYS}, "GATEWAY_RESULT_S3_URL names no bucket"),
    ({"result_s3_url": "s3://", **MINIO, **KEYS}, "GATEWAY_RESULT_S3_URL names no bucket"),
    ({"result_s3_url": "https://fleet/results", **MINIO, **KEYS}, "GATEWAY_RESULT_S3_URL must start with s3://"),
    ({"result_s3_url": "fleet/results", **MINIO, **KEYS}, "GATEWAY_RESULT_S3_URL must start with s3://"),
    ({"result_s3_url": "s3://Fleet_Results", **MINIO, **KEYS}, "'Fleet_Results' is not a bucket name"),
    ({"result_s3_url": "s3://fleet?versionId=1", **MINIO, **KEYS}, "takes no query"),
    ({"result_s3_url": "s3://fleet", "result_s3_endpoint_url": "minio:9000", **KEYS}, "GATEWAY_RESULT_S3_ENDPOINT_URL must be an http(s) URL"),
    ({"result_s3_url": "s3://fleet", **MINIO}, "needs credentials: GATEWAY_RESULT_S3_ACCESS_KEY_ID"),
    ({"result_s3_url": "s3://fleet", **MINIO, "result_s3_access_key_id": "fleet"}, "set both or neither"),
    ({"result_s3_url": "s3://fleet"}, "on AWS needs a region"),
]


@pytest.mark.usefixtures("no_aws_environment")
@pytest.mark.parametrize(("given", "reason"), S3_REFUSALS)
def test_a_bucket_setting_that_cannot_work_is_refused_with_its_reason(tmp_path: Path, given: dict[str, str], reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings("", tmp_path, result_store="s3", **given)
    assert reason in str(refused.value)
    assert "fleet-secret" not in str(refused.value)  # a secret never shows in the reason


@pytest.mark.usefixtures("no_aws_environment")
def test_a_bucket_takes_its_credentials_and_region_from_the_standard_aws_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The settings' own: path-style for an S3-compatible server, the prefix as a folder.
    own = make_settings("", tmp_path, result_store="s3", result_s3_url="s3://fleet/a/b/", **MINIO, **KEYS).dispatch.result_s3
    assert own is not None and (own.bucket, own.prefix, own.path_style, own.access_key_id) == ("fleet", "a/b/", True, "fleet")
    # A shared credentials file (a mounted secret) for the server; AWS_REGION for AWS itself (virtual-host style).
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[default]\naws_access_key_id = from-file\naws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    mounted = make_settings("", tmp_path, result_store="s3", result_s3_url="s3://fleet", **MINIO).dispatch.result_s3
    assert mounted is not None and mounted.access_key_id is None and mounted.prefix == ""
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    aws = make_settings("", tmp_path, result_store="s3", result_s3_url="s3://fleet").dispatch.result_s3
    assert aws is not None and (aws.region, aws.endpoint_url, aws.path_style) == ("eu-west-3", None, False)
    forced = make_settings("", tmp_path, result_store="s3", result_s3_url="s3://fleet", result_s3_path_style=True)
    assert forced.dispatch.result_s3 is not None and forced.dispatch.result_s3.path_style
    # Another store ignores the bucket's settings, however wrong.
    assert make_settings("", tmp_path, result_s3_url="gs://x").dispatch.result_s3 is None


def run_gateway(data_dir: Path, **variables: str) -> subprocess.CompletedProcess[bytes]:
    """`python -m gateway` as an operator starts it, with only these GATEWAY_* variables; it should not stay up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_"))}
    env.update(GATEWAY_RUNTIME="fake", GATEWAY_DATA_DIR=str(data_dir), GATEWAY_API_PORT="0", GATEWAY_ADMIN_PORT="0",
               AWS_SHARED_CREDENTIALS_FILE=str(data_dir / "none"), AWS_CONFIG_FILE=str(data_dir / "none"), **variables)
    return subprocess.run([sys.executable, "-m", "gateway"], check=False, cwd=REPO, env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize(("variables", "reason"), [
    ({"GATEWAY_RESULT_STORE": "s3", "GATEWAY_RESULT_S3_URL": "s3:///fleet-results"}, "GATEWAY_RESULT_S3_URL names no bucket"),
    ({"GATEWAY_RESULT_STORE": "s3", "GATEWAY_RESULT_S3_URL": "minio://fleet"}, "must start with s3://"),
    ({"GATEWAY_RESULT_STORE": "s3", "GATEWAY_RESULT_S3_URL": "s3://fleet", "GATEWAY_RESULT_S3_ENDPOINT_URL": "http://minio:9000"},
     "needs credentials"),
    ({"GATEWAY_RESULT_STORE": "gcs"}, "GATEWAY_RESULT_STORE"),
])
def test_the_gateway_refuses_to_start_on_a_store_that_cannot_work(tmp_path: Path, variables: dict[str, str], reason: str) -> None:
    result = run_gateway(tmp_path, **variables)
    message = result.stderr.decode()
    assert result.returncode == 2, message
    assert "refusing to start" in message and reason in message and "Traceback" not in message


def test_the_gateway_refuses_a_data_folder_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_gateway(blocker / "data")  # SQLite and files under it, by default
    message = result.stderr.decode()
    assert result.returncode == 2, message
    assert "GATEWAY_DATA_DIR keeps the results (GATEWAY_RESULT_STORE=files) and the SQLite database" in message
    assert f"{blocker} is not a folder" in message and "Traceback" not in message


# ---- two gateways on one Postgres --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def replica(url: str, data_dir: Path, fake: FakeRuntime, **overrides: Any) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    settings = make_settings(url, data_dir, encryption_key=REPLICA_ENCRYPTION_KEY, **{**DISPATCH_FAST, "api_keys": KEY, **overrides})
    fleet = await Fleet.open(settings, runtime=fake)
    try:
        async with serve(create_api_app(settings, fleet=fleet)) as base:
            headers = {"Authorization": f"Bearer {KEY}", "Accept-Language": "en"}
            async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as http:
                yield fleet, http
    finally:
        await fleet.close()


@pytest.mark.postgres
async def test_a_task_made_on_one_gateway_is_read_with_its_images_on_the_other(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    fake.generate_delay = 0.2
    async with replica(postgres_url, tmp_path / "a", fake) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake) as (fleet_b, http_b):
            assert fleet_a.dispatcher.results.kind == fleet_b.dispatcher.results.kind == "database"
            accepted = await http_a.post("/tasks", json={"prompt": "made on a"})
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]

            async def on_b() -> dict[str, Any]:
                return (await http_b.get(f"/tasks/{task_id}")).json()

            finished = await await_until(on_b, until=lambda body: body.get("done"), timeout=15, what="the task, read on b")
            assert finished["success"] is True and finished["status"] == "succeeded"
            assert [base64.b64decode(i) for i in finished["generated_images"]] == [TINY_PNG]
            assert finished["ai_text_response"] == "fake text"
            # A synchronous answer from b is read back on a just the same.
            made_on_b = (await http_b.post("/generate", json={"prompt": "made on b"})).json()

            async def on_a() -> dict[str, Any]:
                return (await http_a.get(f"/tasks/{made_on_b['task_id']}")).json()

            # Its row ends just after the answer went out: a is told a moment later.
            read_on_a = await await_until(on_a, until=lambda body: body.get("done"), timeout=10, what="b's task on a")
            assert read_on_a["generated_images"] == made_on_b["generated_images"] != []
    # Neither data folder holds a result: they are in the database.
    assert not (tmp_path / "a" / "results").exists() and not (tmp_path / "b" / "results").exists()


@pytest.mark.postgres
async def test_a_signed_url_made_on_one_gateway_is_served_by_the_other(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with replica(postgres_url, tmp_path / "a", fake) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake) as (fleet_b, http_b):
            # One key for both, kept in the database (neither data folder has one of its own).
            assert fleet_a.secret == fleet_b.secret != ""
            async with fleet_a.sessions() as session:
                assert await session.get(FleetMarker, "signing_key") is not None
            answer = await http_a.post("/v1/images/generations", json={"prompt": "a fox", "response_format": "url"})
            assert answer.status_code == 200, answer.text
            url = httpx.URL(answer.json()["data"][0]["url"])
            assert url.path.startswith("/v1/images/files/")
            async with httpx.AsyncClient(base_url=str(http_b.base_url)) as anonymous:  # no API key
                served = await anonymous.get(url.path, params=url.params)
                assert served.status_code == 200 and served.content == TINY_PNG
                # The signature still binds: another index or expiry is refused on b too.
                forged = await anonymous.get(url.path.replace("/0.png", "/1.png"), params=url.params)
                assert forged.status_code == 403 and forged.json()["error"]["code"] == "image_url_invalid"


@pytest.mark.postgres
async def test_an_expired_result_is_410_alike_on_both_gateways_and_pruned_by_retention(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    async with replica(postgres_url, tmp_path / "a", fake, task_result_ttl=1.0) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with replica(postgres_url, tmp_path / "b", fake, task_result_ttl=1.0) as (fleet_b, http_b):
            made = (await http_a.post("/generate", json={"prompt": "short-lived"})).json()
            assert made["success"] is True
            task_id = made["task_id"]
            await asyncio.sleep(1.2)
            answers = [await http.get(f"/tasks/{task_id}") for http in (http_a, http_b)]
            assert [a.status_code for a in answers] == [410, 410]
            assert answers[0].json() == answers[1].json()
            assert answers[0].json()["error"] == "task_result_gone" and task_id in answers[0].json()["message"]
            # A signed URL still valid (signed to last longer) for the expired result: 410 with the reason on both.
            signer = ImageSigner.from_settings(fleet_a.settings.faces, fleet_a.secret)
            url = signer.path(uuid.UUID(task_id), 0, "image/png", now=time.time() + 60)
            images = [await http.get(url, headers={"Authorization": ""}) for http in (http_a, http_b)]
            assert [i.status_code for i in images] == [410, 410] and images[0].json() == images[1].json()
            assert images[0].json()["error"]["code"] == "task_result_gone" and task_id in images[0].json()["error"]["message"]
            # The gateways' own retention loops delete the row (every second at this TTL); still 410 after.
            async def kept_rows() -> int:
                async with fleet_a.sessions() as session:
                    return int(await session.scalar(select(func.count()).select_from(KeptResult)) or 0)

            await await_until(kept_rows, until=lambda count: count == 0, timeout=10, what="retention to prune the row")
            assert await fleet_b.retention.purge_once() == Purged()
            assert (await http_a.get(f"/tasks/{task_id}")).status_code == 410
            # A malformed id is a 404 on both, never a 500.
            assert [(await h.get("/tasks/not-an-id")).status_code for h in (http_a, http_b)] == [404, 404]


async def test_an_expired_result_in_the_data_folder_is_410_before_any_prune(
    database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    """The files store: past the TTL by the row's end, the file still there (no prune yet), 410 all the same."""
    overrides = {"result_store": "files", "task_result_ttl": 3.0, "retention_interval": 3600.0}
    async with replica(database_url, tmp_path, fake, **overrides) as (fleet, http):
        await start_instances(fleet, 1)
        # The loops that forget and prune expired results stop here: the 410 must come from the expiry itself.
        await fleet.retention.close()
        fleet.dispatcher._pruner.cancel()  # type: ignore[union-attr]
        answer = (await http.post("/v1/images/generations", json={"prompt": "short-lived", "response_format": "url"})).json()
        url = httpx.URL(answer["data"][0]["url"])
        task_id = url.path.split("/")[-2]
        assert (await http.get(f"/tasks/{task_id}")).status_code == 200
        later = ImageSigner.from_settings(fleet.settings.faces, fleet.secret).path(uuid.UUID(task_id), 0, "image/png", now=time.time() + 60)
        assert (await http.get(later)).content == TINY_PNG
        gone = await await_until(lambda: http.get(f"/tasks/{task_id}"), until=lambda answer: answer.status_code != 200,
                                 timeout=15, what="the result to expire")
        assert (tmp_path / "results" / f"{task_id}.json").is_file()  # still there: nothing pruned it
        assert gone.status_code == 410 and gone.json()["error"] == "task_result_gone"
        image = await http.get(later)
        assert image.status_code == 410 and image.json()["error"]["code"] == "task_result_gone"

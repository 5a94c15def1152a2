"""GATEWAY_RESULT_STORE=s3 against a real S3-compatible server (moto's server mode, started here): the store's
keys and expiry, then through the gateway's HTTP API: a task read back with its images, a signed URL, 410 once
expired, prune, and two gateways with separate data folders sharing the bucket."""

from __future__ import annotations

import base64
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api.image_urls import ImageSigner
from gateway.app import Fleet, create_api_app
from gateway.dispatcher.results import FileResultStore, StoredResult, StoreUnusable
from gateway.dispatcher.s3_results import CHUNK, MANIFEST, S3ResultStore
from gateway.errors import Unavailable
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY, make_settings
from tests.gateway.pool import DISPATCH_FAST, serve, start_instances
from tests.polling import await_until
from tests.s3server import S3Server, running_s3_server

TINY_B64 = base64.b64encode(TINY_PNG).decode()
KEY = "s3-api-key"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.new_bucket()


def s3_store(s3: S3Server, bucket: str, tmp_path: Path, ttl: float = 60) -> S3ResultStore:
    settings = make_settings("", tmp_path, **s3.settings(bucket)).dispatch.result_s3
    assert settings is not None and settings.path_style  # an endpoint URL: path-style, as MinIO wants
    return S3ResultStore(settings, ttl, fallback=FileResultStore(tmp_path / "results", ttl))


# ---- the store against the server --------------------------------------------------------------------------


async def test_a_result_is_a_folder_of_objects_keyed_by_its_expiry(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    store = s3_store(s3, bucket, tmp_path, ttl=60)
    await store.check()
    task_id = uuid.uuid4()
    before = time.time()
    reference = await store.save(task_id, [TINY_B64, base64.b64encode(b"second").decode()], "the page's text")
    assert reference.startswith(f"s3://{bucket}/results/") and reference.endswith(f"/{task_id}/")
    keys = sorted(s3.keys(bucket))
    folder = reference.removeprefix(f"s3://{bucket}/")
    assert keys == [folder + "0", folder + "1", folder + MANIFEST]
    expires = int(folder.removeprefix("results/")[:11])
    assert before + 60 <= expires <= time.time() + 62
    # Each object carries its expiry too (for a reader of the bucket, and a lifecycle rule's logs).
    head = s3.client().head_object(Bucket=bucket, Key=folder + "0")
    assert head["Metadata"]["expires-at"] == str(expires) and head["ContentType"] == "image/png"
    assert await store.load(task_id, reference) == StoredResult([TINY_B64, base64.b64encode(b"second").decode()], "the page's text")
    assert await store.load_image(task_id, reference, 1) == b"second"
    assert await store.load_image(task_id, reference, 2) is None
    # Another task's id, another bucket's reference, a file's: not this result.
    assert await store.load(uuid.uuid4(), reference) is None
    assert await store.load(task_id, reference.replace(bucket, "other-bucket")) is None
    assert await store.load(task_id, "database") is None


async def test_an_expired_result_is_refused_by_its_key_and_pruned(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    store = s3_store(s3, bucket, tmp_path, ttl=1)
    short = uuid.uuid4()
    reference = await store.save(short, [TINY_B64], None)
    kept = s3_store(s3, bucket, tmp_path, ttl=3600)
    long_id = uuid.uuid4()
    long_ref = await kept.save(long_id, [TINY_B64], None)
    # Something else under the prefix (an operator's file) is never touched.
    s3.client().put_object(Bucket=bucket, Key="results/README", Body=b"not a result")
    expires = int(reference.removeprefix(f"s3://{bucket}/results/")[:11])
    assert await store.prune(now=expires - 1) == 0  # nothing expired by then

    async def loaded() -> StoredResult | None:
        return await store.load(short, reference)

    await await_until(loaded, until=lambda stored: stored is None, timeout=15, what="the short result to expire")
    assert await store.load_image(short, reference, 0) is None and await store.open_image(short, reference, 0) is None
    assert len(s3.keys(bucket)) == 5  # refused before any prune: the objects are still there
    assert await store.prune() == 1
    assert sorted(s3.keys(bucket)) == sorted([*(long_ref.removeprefix(f"s3://{bucket}/") + k for k in ("0", MANIFEST)), "results/README"])
    assert await kept.load(long_id, long_ref) == StoredResult([TINY_B64], None)
    # Retention's deletion of an old task removes its folder, expired or not.
    assert await kept.delete([(long_id, long_ref), (uuid.uuid4(), "/elsewhere/x.json")]) == 1
    assert s3.keys(bucket) == ["results/README"]


async def test_one_image_is_streamed_from_the_bucket_a_chunk_at_a_time(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    store = s3_store(s3, bucket, tmp_path)
    task_id = uuid.uuid4()
    images = [os.urandom(2 * CHUNK + 10), os.urandom(100)]
    reference = await store.save(task_id, [base64.b64encode(i).decode() for i in images], None)
    opened = await store.open_image(task_id, reference, 0)
    assert opened is not None and opened.size == len(images[0]) and len(opened.first) == CHUNK
    rest = [chunk async for chunk in opened.rest]
    assert max(len(c) for c in rest) <= CHUNK and opened.first + b"".join(rest) == images[0]
    small = await store.open_image(task_id, reference, 1)
    assert small is not None and small.first == images[1] and small.size == 100
    assert await store.open_image(task_id, reference, 2) is None


async def test_a_missing_bucket_stops_the_store_at_its_check(s3: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3, "no-such-bucket-here", tmp_path)
    with pytest.raises(StoreUnusable) as refused:
        await store.check()
    assert "no-such-bucket-here" in str(refused.value) and "does not exist" in str(refused.value)


async def test_an_unreachable_bucket_keeps_the_result_in_the_data_folder(tmp_path: Path) -> None:
    settings = make_settings("", tmp_path, result_store="s3", result_s3_url="s3://fleet-down/r",
                             result_s3_endpoint_url="http://127.0.0.1:9", result_s3_access_key_id="k",
                             result_s3_secret_access_key="s").dispatch.result_s3
    assert settings is not None
    store = S3ResultStore(settings, 60, fallback=FileResultStore(tmp_path / "results", 60))
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [TINY_B64], "text")
    assert reference == str(tmp_path / "results" / f"{task_id}.json")
    assert await store.load(task_id, reference) == StoredResult([TINY_B64], "text")
    assert await store.load_image(task_id, reference, 0) == TINY_PNG
    # A result in the bucket, while it cannot be reached: a 503 with its reason, not a 500.
    in_bucket = f"s3://fleet-down/r/{int(time.time()) + 60:011d}/{task_id}/"
    for read in (store.load(task_id, in_bucket), store.load_image(task_id, in_bucket, 0), store.open_image(task_id, in_bucket, 0)):
        with pytest.raises(Unavailable) as refused:
            await read
        assert refused.value.key == "result_store_unavailable" and refused.value.status_code == 503


# ---- through the gateway -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def gateway(url: str, data_dir: Path, fake: FakeRuntime, **overrides: Any) -> AsyncIterator[tuple[Fleet, httpx.AsyncClient]]:
    settings = make_settings(url, data_dir, encryption_key=REPLICA_ENCRYPTION_KEY, **{**DISPATCH_FAST, "api_keys": KEY, **overrides})
    fleet = await Fleet.open(settings, runtime=fake)
    try:
        async with serve(create_api_app(settings, fleet=fleet)) as base:
            headers = {"Authorization": f"Bearer {KEY}", "Accept-Language": "en"}
            async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as http:
                yield fleet, http
    finally:
        await fleet.close()


async def read_done(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        return (await http.get(f"/tasks/{task_id}")).json()

    return await await_until(read, until=lambda body: body.get("done"), timeout=15, what=f"task {task_id} to end")


async def test_the_gateway_keeps_results_in_the_bucket(
    database_url: str, tmp_path: Path, fake: FakeRuntime, s3: S3Server, bucket: str
) -> None:
    async with gateway(database_url, tmp_path, fake, **s3.settings(bucket)) as (fleet, http):
        assert fleet.dispatcher.results.kind == "s3"
        await start_instances(fleet, 1)
        accepted = await http.post("/tasks", json={"prompt": "kept in a bucket"})
        assert accepted.status_code == 202, accepted.text
        finished = await read_done(http, accepted.json()["task_id"])
        assert finished["status"] == "succeeded"
        assert [base64.b64decode(i) for i in finished["generated_images"]] == [TINY_PNG]
        assert finished["ai_text_response"] == "fake text"
        answer = await http.post("/v1/images/generations", json={"prompt": "a fox", "response_format": "url"})
        assert answer.status_code == 200, answer.text
        url = httpx.URL(answer.json()["data"][0]["url"])
        async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
            served = await anonymous.get(url.path, params=url.params)
            assert served.status_code == 200 and served.content == TINY_PNG
            assert served.headers["content-type"] == "image/png"
            missing = await anonymous.get(url.path.replace("/0.png", "/1.png"), params=url.params)
            assert missing.status_code == 403  # the signature binds the index
            # An image larger than a chunk goes out as the bucket hands it over, its length known up front.
            big = b"\x89PNG\r\n\x1a\n" + os.urandom(3 * CHUNK + 1234)
            task_id = url.path.split("/")[-2]
            key = next(k for k in s3.keys(bucket) if k.endswith(f"/{task_id}/0"))
            s3.client().put_object(Bucket=bucket, Key=key, Body=big)
            async with anonymous.stream("GET", url.path, params=url.params) as streamed:
                assert streamed.status_code == 200 and streamed.headers["content-type"] == "image/png"
                assert streamed.headers["content-length"] == str(len(big))
                chunks = [chunk async for chunk in streamed.aiter_raw()]
            assert b"".join(chunks) == big
    assert len([k for k in s3.keys(bucket) if k.endswith(MANIFEST)]) == 2
    assert not (tmp_path / "results").exists()  # nothing fell back to the data folder


@pytest.mark.postgres
async def test_two_gateways_share_the_bucket_and_its_expiry(
    postgres_url: str, tmp_path: Path, fake: FakeRuntime, s3: S3Server, bucket: str
) -> None:
    settings = {**s3.settings(bucket), "task_result_ttl": 4.0}
    async with gateway(postgres_url, tmp_path / "a", fake, **settings) as (fleet_a, http_a):
        await start_instances(fleet_a, 1)
        async with gateway(postgres_url, tmp_path / "b", fake, **settings) as (_fleet_b, http_b):
            accepted = await http_a.post("/tasks", json={"prompt": "made on a"})
            task_id = accepted.json()["task_id"]
            on_b = await read_done(http_b, task_id)
            assert [base64.b64decode(i) for i in on_b["generated_images"]] == [TINY_PNG]
            answer = (await http_b.post("/v1/images/generations", json={"prompt": "made on b", "response_format": "url"})).json()
            url = httpx.URL(answer["data"][0]["url"])
            made_on_b = url.path.split("/")[-2]
            signer = ImageSigner.from_settings(fleet_a.settings.faces, fleet_a.secret)
            async with httpx.AsyncClient(base_url=str(http_a.base_url)) as anonymous_a, \
                    httpx.AsyncClient(base_url=str(http_b.base_url)) as anonymous_b:
                served = [await client.get(url.path, params=url.params) for client in (anonymous_a, anonymous_b)]
                assert [(s.status_code, s.content) for s in served] == [(200, TINY_PNG)] * 2
                # Past the TTL both answer 410 with the reason, for the task and for its image URL.
                await await_until(lambda: http_a.get(f"/tasks/{made_on_b}"), until=lambda answer: answer.status_code != 200,
                                  timeout=20, what="the later result to expire")
                gone = [await http.get(f"/tasks/{task_id}") for http in (http_a, http_b)]
                assert [g.status_code for g in gone] == [410, 410] and gone[0].json() == gone[1].json()
                assert gone[0].json()["error"] == "task_result_gone" and "no longer kept" in gone[0].json()["message"]
                images = [await client.get(url.path, params=url.params) for client in (anonymous_a, anonymous_b)]
                assert [i.status_code for i in images] == [410, 410] and images[0].json() == images[1].json()
                # The URL expires with its result (whichever its second falls in first names the reason).
                assert images[0].json()["error"]["code"] in ("task_result_gone", "image_url_expired")
                # A URL still valid for a result past its time: the result's reason, on both.
                later = signer.path(uuid.UUID(made_on_b), 0, "image/png", now=time.time() + 60)
                images = [await client.get(later) for client in (anonymous_a, anonymous_b)]
                assert [i.status_code for i in images] == [410, 410] and images[0].json() == images[1].json()
                assert images[0].json()["error"]["code"] == "task_result_gone" and made_on_b in images[0].json()["error"]["message"]
            # Retention (every second at this TTL) prunes the bucket; neither data folder ever held a result.

            def manifests() -> list[str]:
                return [k for k in s3.keys(bucket) if k.endswith(MANIFEST)]

            await await_until(manifests, until=lambda keys: keys == [], timeout=15, what="retention to prune the bucket")
    assert not (tmp_path / "a" / "results").exists() and not (tmp_path / "b" / "results").exists()


def test_the_gateway_refuses_to_start_on_a_missing_bucket(s3: S3Server, tmp_path: Path) -> None:
    """Settings that parse, a server that answers, but no such bucket: the gateway stops at start, saying why."""
    from tests.gateway.test_result_stores import run_gateway

    variables = {f"GATEWAY_{name.upper()}": str(value) for name, value in s3.settings("fleet-missing").items()}
    result = run_gateway(tmp_path, **variables)
    message = result.stderr.decode()
    assert result.returncode == 2, message
    assert "refusing to start: GATEWAY_RESULT_STORE=s3: bucket 'fleet-missing' cannot be used: it does not exist" in message
    assert "Traceback" not in message

"""Kept results in an S3-compatible bucket (GATEWAY_RESULT_STORE=s3): every gateway that reaches the bucket serves
every result, however many gateways a large pool runs and however big their results.

A result is a folder of objects under the configured prefix, its expiry first in the key:
    <prefix><expires, epoch seconds, 11 digits>/<task id>/0, 1, ...   one decoded image each
    <prefix><expires>/<task id>/result.json                         {"count", "text"}, written last
so `load` refuses an expired result from its key alone (no request), `prune` lists the prefix in key order and
stops at the first folder not yet expired, and one image is read without the others. The objects also carry
their expiry (`Expires`, `x-amz-meta-expires-at`); a lifecycle rule on the bucket is the backstop for what no
gateway prunes (README). The client is boto3 in worker threads: AWS's own, maintained client, with the same
credential chain as every AWS tool; aiobotocore pins botocore to narrow versions, which other packages fight.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from gateway.dispatcher.results import FileResultStore, ImageStream, StoredResult, StoreKind, StoreUnusable
from gateway.errors import Unavailable
from gateway.settings import S3StoreSettings

log = logging.getLogger(__name__)

MANIFEST = "result.json"
DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys
CHUNK = 256 * 1024  # an image streamed from the bucket to the client this much at a time
_FOLDER = re.compile(r"(?P<expires>\d{11})/(?P<task>[0-9a-f-]{36})/")
_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"RIFF": "image/webp", b"GIF8": "image/gif"}

T = TypeVar("T")


def build_s3_client(settings: S3StoreSettings) -> Any:
    import boto3  # only with GATEWAY_RESULT_STORE=s3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path" if settings.path_style else "virtual"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5, read_timeout=30, max_pool_connections=32,
    )
    # A client (unlike a session) is safe to share between threads.
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region,
        aws_access_key_id=settings.access_key_id, aws_secret_access_key=settings.secret_access_key, config=config,
    )


class S3ResultStore:
    """Objects in a bucket, shared by every gateway; a result that ends while the bucket cannot be written goes
    to `fallback` (this gateway's data folder) rather than being lost."""

    kind: StoreKind = "s3"

    def __init__(self, settings: S3StoreSettings, ttl: float, *, fallback: FileResultStore | None = None, client: Any = None) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.ttl = ttl
        self._client = client if client is not None else build_s3_client(settings)
        self._fallback = fallback

    # References ------------------------------------------------------------------------------------

    def folder_for(self, task_id: uuid.UUID, expires: int) -> str:
        return f"{self.prefix}{expires:011d}/{task_id}/"

    def _folder_of(self, task_id: uuid.UUID, reference: str | None) -> str | None:
        """The key folder a reference names, if it is this bucket's, this task's, and not yet expired."""
        head = f"s3://{self.bucket}/"
        if not reference or not reference.startswith(head):
            return None
        folder = reference.removeprefix(head)
        match = _FOLDER.fullmatch(folder.removeprefix(self.prefix)) if folder.startswith(self.prefix) else None
        if match is None or match["task"] != str(task_id):
            return None
        return folder if int(match["expires"]) > time.time() else None

    # The store -------------------------------------------------------------------------------------

    async def save(self, task_id: uuid.UUID, images_b64: list[str], text: str | None) -> str:
        """The images first, the manifest last: a result is there once its manifest is."""
        folder = self.folder_for(task_id, int(time.time() + self.ttl) + 1)  # rounded up: never kept less than the TTL
        try:
            images = [base64.b64decode(image) for image in images_b64]
            await asyncio.gather(*(self._put(folder + str(i), body, _mime(body)) for i, body in enumerate(images)))
            manifest = json.dumps({"count": len(images), "text": text}).encode()
            await self._put(folder + MANIFEST, manifest, "application/json")
        except Exception as exc:
            if self._fallback is None or not _unreachable(exc):
                raise
            log.warning("the bucket cannot be written (%s): the result of task %s is kept in this gateway's data folder",
                        _reason(exc), task_id)
            return await self._fallback.save(task_id, images_b64, text)
        return f"s3://{self.bucket}/{folder}"

    async def load(self, task_id: uuid.UUID, reference: str | None) -> StoredResult | None:
        if FileResultStore.owns(reference):
            return await self._fallback.load(task_id, reference) if self._fallback is not None else None
        folder = self._folder_of(task_id, reference)
        manifest = await self._get(folder + MANIFEST) if folder is not None else None
        if folder is None or manifest is None:
            return None
        try:
            body = json.loads(manifest)
            count, text = int(body["count"]), body.get("text")
        except (ValueError, KeyError, TypeError):
            return None
        images = await asyncio.gather(*(self._get(folder + str(i)) for i in range(count)))
        if any(image is None for image in images):
            return None  # pruned meanwhile
        return StoredResult([base64.b64encode(image).decode() for image in images if image is not None],
                            text if isinstance(text, str) else None)

    async def load_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> bytes | None:
        if FileResultStore.owns(reference):
            return await self._fallback.load_image(task_id, reference, index) if self._fallback is not None else None
        folder = self._folder_of(task_id, reference)
        return await self._get(folder + str(index)) if folder is not None and index >= 0 else None

    async def open_image(self, task_id: uuid.UUID, reference: str | None, index: int) -> ImageStream | None:
        """The object as it comes from the bucket, CHUNK bytes at a time: the gateway never holds all of it."""
        if FileResultStore.owns(reference):
            return await self._fallback.open_image(task_id, reference, index) if self._fallback is not None else None
        folder = self._folder_of(task_id, reference)
        if folder is None or index < 0:
            return None
        answer = await self._reading(self._get_object, folder + str(index))
        if answer is None:
            return None
        body = answer["Body"]
        try:
            first = await self._reading(body.read, CHUNK)
        except BaseException:
            body.close()
            raise
        return ImageStream(first, self._rest_of(body), int(answer.get("ContentLength") or len(first)))

    async def _rest_of(self, body: Any) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._thread(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def prune(self, now: float | None = None) -> int:
        """Deletes the folders whose expiry has passed; any gateway may run it at once. Returns results removed."""
        removed = await self._fallback.prune() if self._fallback is not None else 0
        expired = await self._thread(self._expired_keys, now if now is not None else time.time())
        await self._delete_keys(expired)
        return removed + sum(1 for key in expired if key.endswith("/" + MANIFEST))

    async def delete(self, kept: Sequence[tuple[uuid.UUID, str]]) -> int:
        """Retention's deletion of old tasks: their folders, whether expired or not."""
        files = [entry for entry in kept if FileResultStore.owns(entry[1])]
        removed = await self._fallback.delete(files) if self._fallback is not None and files else 0
        head = f"s3://{self.bucket}/{self.prefix}"
        folders = [ref.removeprefix(f"s3://{self.bucket}/") for _task, ref in kept if ref.startswith(head)]
        for folder in folders:
            keys = await self._thread(self._keys_under, folder)
            await self._delete_keys(keys)
            removed += any(key.endswith("/" + MANIFEST) for key in keys)
        return removed

    async def check(self) -> None:
        """The bucket exists and answers us: otherwise the gateway does not start (StoreUnusable, with why)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await self._thread(self._client.head_bucket, Bucket=self.bucket)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StoreUnusable(f"GATEWAY_RESULT_STORE=s3: bucket {self.bucket!r} cannot be used: {_reason(exc)}") from None

    # The bucket ------------------------------------------------------------------------------------

    async def _put(self, key: str, body: bytes, content_type: str) -> None:
        expires = int(key.removeprefix(self.prefix)[:11])
        await self._thread(
            self._client.put_object, Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
            Expires=datetime.fromtimestamp(expires, UTC), Metadata={"expires-at": str(expires)},
        )

    async def _get(self, key: str) -> bytes | None:
        """The object's bytes; None when it is not there (expired and pruned, or never written)."""
        return await self._reading(self._get_sync, key)

    async def _reading(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read from the bucket; one it cannot answer is a 503 for the client, not a 500."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await self._thread(call, *args, **kwargs)
        except (BotoCoreError, ClientError, OSError) as exc:
            log.warning("cannot read results from bucket %r: %s", self.bucket, _reason(exc))
            raise Unavailable("result_store_unavailable", headers={"Retry-After": "5"}) from None

    def _get_object(self, key: str) -> dict[str, Any] | None:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)  # type: ignore[no-any-return]
        except self._client.exceptions.NoSuchKey:
            return None

    def _get_sync(self, key: str) -> bytes | None:
        answer = self._get_object(key)
        if answer is None:
            return None
        with answer["Body"] as body:
            return bytes(body.read())

    def _expired_keys(self, now: float) -> list[str]:
        """Keys in expiry order up to the first folder still kept; other objects under the prefix are left."""
        expired: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                match = _FOLDER.match(item["Key"].removeprefix(self.prefix))
                if match is None:
                    continue
                if int(match["expires"]) > now:
                    return expired
                expired.append(item["Key"])
        return expired

    def _keys_under(self, folder: str) -> list[str]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start : start + DELETE_BATCH]]
            answer = await self._thread(self._client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            for error in answer.get("Errors", []):
                log.warning("cannot delete result object %s: %s", error.get("Key"), error.get("Message"))

    @staticmethod
    async def _thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(call, *args, **kwargs)


def _mime(body: bytes) -> str:
    return next((mime for magic, mime in _MIME.items() if body.startswith(magic)), "application/octet-stream")


def _unreachable(exc: BaseException) -> bool:
    """The bucket could not be reached or answered a server error: worth keeping the result elsewhere."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) >= 500
    return isinstance(exc, BotoCoreError | OSError)


def _reason(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or status
        meaning = {"404": "it does not exist", "NoSuchBucket": "it does not exist", "403": "access denied (check the credentials)"}
        return f"{meaning.get(str(code), error.get('Message') or code)} (HTTP {status})"
    return str(exc).splitlines()[0][:300] or type(exc).__name__

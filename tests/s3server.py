"""A real S3-compatible server for the tests: moto's server mode (`moto[server]`), a subprocess on a free port,
speaking the S3 REST API over HTTP as MinIO would; the gateway reaches it through boto3 like any bucket."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.polling import wait_until
from tests.ports import free_port as _free_port

ACCESS_KEY, SECRET_KEY, REGION = "fleet-test-key", "fleet-test-secret", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def new_bucket(self) -> str:
        name = f"fleet-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def settings(self, bucket: str, prefix: str = "results") -> dict[str, Any]:
        """The gateway's settings for this bucket (make_settings overrides)."""
        return {"result_store": "s3", "result_s3_url": f"s3://{bucket}/{prefix}", "result_s3_endpoint_url": self.endpoint_url,
                "result_s3_region": REGION, "result_s3_access_key_id": ACCESS_KEY, "result_s3_secret_access_key": SECRET_KEY}


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> httpx.Response:
            assert process.poll() is None, (process.stderr.read() if process.stderr else b"").decode()[-2000:]
            return httpx.get(f"{url}/moto-api/", timeout=1.0)

        wait_until(up, timeout=30, what="moto's S3 server to answer", ignore=(httpx.TransportError,), pause=0.1)
        yield S3Server(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

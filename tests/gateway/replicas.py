"""Gateway replicas as real processes on one Postgres, each with its own data folder, sharing fake instances.

The fake instances (`FakeRuntime`, not what these tests are about) live in the test process behind a loopback
HTTP server (`SharedFake`); each gateway process (`python -m tests.gateway.replicas`, the real Fleet and apps
under uvicorn, as `python -m gateway` runs them) reaches them through `RemoteFakeRuntime`, which forwards the
runtime's calls and the instances' HTTP to that server. A replica can be SIGKILLed like any process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

from gateway.runtime.base import InstanceSpec, RuntimeState
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "replica-admin-token-0123456789"
SHARED_FAKE_URL = "AISTUDIO_SHARED_FAKE_URL"
URL_HEADER = "x-fake-url"


# ---- in the test process: the fake instances behind a loopback server ---------------------------------------


class SharedFake:
    """A FakeRuntime on its own event loop (a thread), served on 127.0.0.1: `/runtime/<call>` for the runtime's
    calls, `/instance` (the original URL in a header) for the instances' HTTP."""

    def __init__(self, generate_delay: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.fake: FakeRuntime  # made on the server's loop
        self._delay = generate_delay
        self._thread = threading.Thread(target=self._serve, daemon=True, name="shared-fake")
        self._started = threading.Event()
        self._server: Any = None

    @staticmethod
    async def _make(delay: float) -> FakeRuntime:
        fake = FakeRuntime()
        fake.generate_delay = delay
        return fake

    def __enter__(self) -> Self:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)

    def set_delay(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(setattr, self.fake, "generate_delay", seconds)

    def generations(self) -> list[Any]:
        return list(self.fake.generations)

    def _serve(self) -> None:
        import uvicorn

        asyncio.set_event_loop(self.loop)
        self.fake = self.loop.run_until_complete(self._make(self._delay))
        config = uvicorn.Config(self._app, host="127.0.0.1", port=self.port, log_config=None, lifespan="off",
                                access_log=False, timeout_keep_alive=30, interface="asgi3")
        self._server = uvicorn.Server(config)
        self.loop.call_soon(self._started.set)
        self.loop.run_until_complete(self._server.serve())

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if scope["path"] == "/instance":
            status, out_headers, content = await self._instance(scope["method"], headers, body)
        else:
            status, out_headers, content = await self._runtime(scope["path"].rsplit("/", 1)[-1], json.loads(body or b"{}"))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in out_headers.items()]})
        await send({"type": "http.response.body", "body": content})

    async def _instance(self, method: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        url = headers.pop(URL_HEADER)
        forwarded = {k: v for k, v in headers.items() if k not in ("host", "content-length", "connection")}
        request = httpx.Request(method, url, headers=forwarded, content=body)
        try:
            response = await self.fake.http_transport.handle_async_request(request)
            content = await response.aread()
        except httpx.HTTPError as exc:  # the instance is gone or refused: the gateway sees a dropped connection
            return 599, {"x-fake-error": type(exc).__name__}, b""
        return response.status_code, {"content-type": response.headers.get("content-type", "application/json")}, content

    async def _runtime(self, call: str, args: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        fake = self.fake
        if call == "start":
            result: Any = await fake.start(InstanceSpec(**args["spec"]))
        elif call == "stop":
            result = await fake.stop(args["instance_id"], args.get("timeout", 10.0))
        elif call == "remove":
            result = await fake.remove(args["instance_id"], remove_volume=args["remove_volume"])
        elif call == "inspect":
            result = await fake.inspect(args["instance_id"])
        elif call == "list_managed":
            result = {iid: dataclasses.asdict(state) for iid, state in (await fake.list_managed()).items()}
        else:
            return 404, {}, b"{}"
        if isinstance(result, RuntimeState):
            result = dataclasses.asdict(result)
        return 200, {"content-type": "application/json"}, json.dumps(result).encode()


# ---- in a gateway process: the runtime that forwards to SharedFake -----------------------------------------


class _Forward(httpx.AsyncBaseTransport):
    def __init__(self, base: str) -> None:
        self._client = httpx.AsyncClient(base_url=base, timeout=None, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        headers[URL_HEADER] = str(request.url)
        try:
            answer = await self._client.request(request.method, "/instance", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise httpx.ConnectError(f"shared fake unreachable: {exc}", request=request) from exc
        if answer.status_code == 599:
            raise httpx.ConnectError(answer.headers.get("x-fake-error", "connection refused"), request=request)
        return httpx.Response(answer.status_code, headers={"content-type": answer.headers.get("content-type", "")},
                              content=answer.content)


class RemoteFakeRuntime:
    """The runtime protocol, each call forwarded to the test process's SharedFake."""

    name = "fake"

    def __init__(self, base: str) -> None:
        self._base = base
        self.http_transport = _Forward(base)

    async def _call(self, call: str, **args: Any) -> Any:
        async with httpx.AsyncClient(base_url=self._base, timeout=30, trust_env=False) as client:
            answer = await client.post(f"/runtime/{call}", json=args)
        answer.raise_for_status()
        return answer.json()

    async def setup(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        return RuntimeState(**await self._call("start", spec=dataclasses.asdict(spec)))

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        await self._call("stop", instance_id=instance_id, timeout=timeout)

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        await self._call("remove", instance_id=instance_id, remove_volume=remove_volume)

    async def inspect(self, instance_id: str) -> RuntimeState:
        return RuntimeState(**await self._call("inspect", instance_id=instance_id))

    async def list_managed(self) -> dict[str, RuntimeState]:
        return {iid: RuntimeState(**state) for iid, state in (await self._call("list_managed")).items()}

    async def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        return
        yield  # an async generator with no lines


async def _serve_replica() -> None:
    """A gateway as `python -m gateway` runs it (gateway/__main__.py), its runtime the shared fake."""
    import logging

    from gateway.__main__ import _server
    from gateway.app import Fleet, create_admin_app, create_api_app
    from gateway.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    fleet = await Fleet.open(settings, runtime=RemoteFakeRuntime(os.environ[SHARED_FAKE_URL]))
    servers = [_server(create_api_app(settings, fleet=fleet), "127.0.0.1", settings.api_port, settings),
               _server(create_admin_app(settings, fleet=fleet), "127.0.0.1", settings.admin_port, settings)]

    def stop_all() -> None:
        for server in servers:
            server.should_exit = True

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop_all)
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        await fleet.close()


# ---- in the test process: a replica ----------------------------------------------------------------------


@dataclass
class Replica:
    database_url: str
    data_dir: Path
    fake_url: str
    settings: dict[str, str] = field(default_factory=dict)  # extra GATEWAY_* (without the prefix)
    api_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
        gateway = {
            "RUNTIME": "fake", "DATABASE_URL": self.database_url, "DATA_DIR": str(self.data_dir),
            "API_PORT": str(self.api_port), "ADMIN_PORT": str(self.admin_port), "ADMIN_TOKEN": ADMIN_TOKEN,
            "API_HOST": "127.0.0.1", "ADMIN_HOST": "127.0.0.1", "RECONCILE_INTERVAL": "0.2", "START_TIMEOUT": "10",
            "QUEUE_POLL_INTERVAL": "0.05", "FETCH_PRIVATE_ADDRESSES": "true",
            "ENCRYPTION_KEY": REPLICA_ENCRYPTION_KEY,  # replicas of one database share its key (separate data folders)
            **self.settings,
        }
        env.update({f"GATEWAY_{key}": value for key, value in gateway.items()})
        env[SHARED_FAKE_URL] = self.fake_url
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or Path(tempfile.mkstemp(prefix="aistudio-replica-", suffix=".log")[1])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tests.gateway.replicas"], cwd=REPO_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2, trust_env=False).status_code in (200, 503):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"replica did not listen within {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, timeout=30, trust_env=False,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=60, trust_env=False)


if __name__ == "__main__":
    asyncio.run(_serve_replica())

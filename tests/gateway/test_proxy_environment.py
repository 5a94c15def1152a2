"""The gateway's HTTP clients ignore proxy environment variables (issue 21, point 8): with HTTP_PROXY, HTTPS_PROXY
and ALL_PROXY naming a recording proxy, the calls to instances, webhooks, image fetches, the command line, a tcp://
Docker engine and the Kubernetes API all go direct, and nothing reaches the proxy. A guard reads the code: every
httpx client built in the gateway, the instance or the contract says `trust_env=False`, so a new one cannot slip in.

(The instance's browser reaches the internet through INSTANCE_PROXY, a Playwright launch option: no HTTP client
of ours, and untouched by this.)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import http.server
import json
import socketserver
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.app import create_admin_app
from gateway.cli.commands import main as cli_main
from gateway.instance_client import InstanceAddress, InstanceClient
from gateway.runtime.docker import DockerRuntime
from gateway.runtime.fake import TINY_PNG, FakeRuntime
from gateway.runtime.kube_objects import PodTemplate
from gateway.runtime.kubernetes import KubernetesRuntime
from tests.gateway.pool import open_pool, serve
from tests.hostile import hostile_server
from tests.kube.apiserver import FakeApiServer
from tests.polling import await_until
from tests.ports import serving

REPO = Path(__file__).resolve().parents[2]
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
ADMIN_TOKEN = "proxy-env-admin-token"


@contextlib.contextmanager
def recording_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback 'proxy' that records the first bytes of every connection made to it, then hangs up."""
    seen: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(2)
            with contextlib.suppress(OSError):
                seen.append(self.request.recv(4096))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serving(server) as port:
        yield f"http://127.0.0.1:{port}", seen


@pytest.fixture
def proxied(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every proxy variable names the recording proxy, for every host (no NO_PROXY); yields what it saw."""
    with recording_proxy() as (url, seen):
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        yield seen


async def test_no_call_of_the_gateway_reaches_an_environment_proxy(
    proxied: list[bytes], database_url: str, tmp_path: Path, fake: FakeRuntime
) -> None:
    settings = {"webhook_secret": "s", "webhook_attempts": 1, "fetch_private_addresses": True, "admin_token": ADMIN_TOKEN}
    # Starting the instances already calls them (status, login check) through the instance client.
    async with open_pool(database_url, tmp_path, fake, instances=1, **settings) as pool:
        with hostile_server("image", content=TINY_PNG) as (base, server):
            image = {"type": "image_url", "image_url": {"url": f"{base}/cat.png"}}
            messages = [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]
            answer = await pool.http.post("/v1/chat/completions", json={"messages": messages})
            assert answer.status_code == 200, answer.text
            accepted = await pool.http.post("/tasks", json={"prompt": "a fox", "callback_url": f"{base}/hook"})
            assert accepted.status_code == 202, accepted.text
            await await_until(lambda: len(server.requests) == 2, timeout=30, what="the webhook to arrive")
        async with serve(create_admin_app(pool.fleet.settings, fleet=pool.fleet)) as admin_url:
            token = tmp_path / "token"
            token.write_text(ADMIN_TOKEN)
            argv = ["--url", admin_url, "--token-file", str(token), "session", "export", "i0", "-o", str(tmp_path / "s.json")]
            exported = await asyncio.to_thread(CliRunner().invoke, cli_main, argv, catch_exceptions=False)
            assert exported.exit_code == 0, exported.output  # the CLI to the admin port, the gateway to the instance
    assert proxied == []


async def test_calls_to_an_instance_go_direct(proxied: list[bytes]) -> None:
    # The fleet above reaches its fake instances through the fake's own transport; here one answers on loopback.
    stored_login = b'{"cookies": [], "origins": []}'
    with hostile_server("image", content=stored_login) as (base, instance):
        client = InstanceClient(timeout=10.0)
        try:
            assert await client.get_session(InstanceAddress(base, "instance-token")) == stored_login
        finally:
            await client.close()
    assert instance.requests[0]["headers"]["authorization"] == "Bearer instance-token"
    assert proxied == []


async def test_the_kubernetes_api_is_not_reached_through_an_environment_proxy(proxied: list[bytes], tmp_path: Path) -> None:
    api = FakeApiServer()
    await api.start()
    runtime = KubernetesRuntime(PodTemplate(image="aistudio-fleet-instance:test"),
                                kubeconfig=api.kubeconfig(tmp_path / "kubeconfig", "fleet"), name_prefix="fleet-")
    try:
        await runtime.setup()
        assert await runtime.list_managed() == {}
    finally:
        await runtime.close()
        await api.stop()
    assert proxied == []


@contextlib.contextmanager
def engine_stand_in() -> Iterator[tuple[str, list[str]]]:
    """A loopback stand-in for a tcp:// Docker engine with no containers: its address and the paths it was asked."""
    asked: list[str] = []

    class Engine(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the handler's name is http.server's)
            asked.append(self.path)
            path = self.path.split("?")[0]
            body = b"OK" if path.endswith("/_ping") else json.dumps(
                {"ApiVersion": "1.45", "Version": "27.0.0"} if path.endswith("/version") else []).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if path.endswith("/_ping") else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    with serving(server) as port:
        yield f"tcp://127.0.0.1:{port}", asked


async def test_a_tcp_docker_engine_is_not_reached_through_an_environment_proxy(proxied: list[bytes]) -> None:
    with engine_stand_in() as (docker_host, asked):
        runtime = DockerRuntime(None, "aistudio-fleet-instance:test", docker_host=docker_host)
        try:
            await runtime.setup()
            assert await runtime.list_managed() == {}
        finally:
            await runtime.close()
    assert asked[0] == "/version"  # docker-py's version query, made while its client is being built
    assert {path.split("?")[0] for path in asked} == {"/version", "/v1.45/_ping", "/v1.45/containers/json"}
    assert proxied == []


# ---- the guard: every client in the code says trust_env=False ----------------------------------------------

CLIENT_NAMES = {"Client", "AsyncClient"}  # httpx's (and lightkube's, on httpx) clients
ONE_SHOT = {"get", "post", "put", "patch", "delete", "head", "options", "request", "stream"}  # httpx.get(...) etc.


def client_constructions(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and builds_a_client(node.func)]


def builds_a_client(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in CLIENT_NAMES
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("httpx", "httpx2")
            and func.attr in CLIENT_NAMES | ONE_SHOT)


def trusts_no_environment(call: ast.Call) -> bool:
    return any(k.arg == "trust_env" and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords)


def websocket_connections(tree: ast.AST, source: str) -> list[ast.Call]:
    """websockets' `connect(...)`, which reads proxy variables unless told `proxy=None`."""
    if "websockets" not in source:
        return []
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "connect"]


def no_websocket_proxy(call: ast.Call) -> bool:
    return any(k.arg == "proxy" and isinstance(k.value, ast.Constant) and k.value.value is None for k in call.keywords)


def test_every_http_client_in_the_code_ignores_proxy_environment_variables() -> None:
    found, careless = 0, []
    for package in ("gateway", "instance", "fleet_contract"):
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
            checks = [(c, trusts_no_environment) for c in client_constructions(tree)]
            checks += [(c, no_websocket_proxy) for c in websocket_connections(tree, source)]
            for call, ignores_environment in checks:
                found += 1
                if not ignores_environment(call):
                    careless.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert found >= 7, "the guard found too few clients: it no longer sees them"
    assert careless == []

"""The contract package against both sides: every instance route has its Structs, the environment's names are
the instance's settings, the fake instance answers in the contract's shapes, and neither side keeps a copy."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from fleet_contract import catalogue, messages, selectors
from fleet_contract.environment import PREFIX, InstanceEnvironment, variable
from gateway.runtime.base import InstanceSpec
from gateway.runtime.fake import FakeRuntime
from instance.app import create_app
from instance.settings import InstanceSettings

REPO = Path(__file__).resolve().parents[2]
TOKEN = "contract-token"


def instance_routes() -> set[tuple[str, str]]:
    app = create_app(InstanceSettings(api_token=TOKEN))
    found = set()
    for route in app.routes:
        methods = getattr(route, "methods", None) or {"WEBSOCKET"}
        found |= {(method, route.path) for method in methods if method not in ("HEAD", "OPTIONS")}
    return found


def test_every_instance_route_has_its_structs_and_no_struct_lacks_a_route() -> None:
    assert instance_routes() == set(messages.ROUTES)


def test_every_environment_field_is_an_instance_setting() -> None:
    settings = set(InstanceSettings.model_fields)
    for field in InstanceEnvironment.__struct_fields__:
        assert field in settings, f"{variable(field)} is set by the gateway but read by no instance setting"
        assert variable(field) == PREFIX + field.upper()
    environ = InstanceEnvironment(api_token="t", port=8123, proxy=None).to_environ()
    assert environ == {"INSTANCE_API_TOKEN": "t", "INSTANCE_PORT": "8123"}  # None: the instance's own default


def test_a_spec_carries_the_token_once_and_the_engine_adds_its_own_fields() -> None:
    spec = InstanceSpec.of("i", "n", InstanceEnvironment(api_token="secret", aistudio_url="http://sim"))
    assert spec.token == "secret" and "INSTANCE_API_TOKEN" not in spec.env
    assert spec.environ(port=9000) == {"INSTANCE_AISTUDIO_URL": "http://sim", "INSTANCE_API_TOKEN": "secret", "INSTANCE_PORT": "9000"}


def test_the_instance_answers_status_with_the_contracts_struct() -> None:
    from litestar.testing import TestClient

    with TestClient(create_app(InstanceSettings(api_token=TOKEN, browser_mode="headless-shell",
                                                chromium_path="/nonexistent/chromium"))) as client:
        answer = client.get("/status", headers={"Authorization": f"Bearer {TOKEN}"})
    status = msgspec.json.decode(answer.content, type=messages.Status)
    assert set(answer.json()) == set(messages.Status.__struct_fields__)
    assert status.ready is False and status.reach == "unknown"


@pytest.mark.parametrize("method,path,kind,body", [
    ("GET", "/status", messages.Status, None),
    ("POST", "/login/check", messages.LoginCheck, None),
    ("PUT", "/session", messages.SessionImported, b'{"cookies": [{"name": "SID", "value": "a", "domain": "x"}], "origins": []}'),
    ("POST", "/navigate", messages.Navigated, b'{"target": "home"}'),
    ("GET", "/diagnose", messages.PageCheck, None),
    ("PUT", "/selectors", messages.SelectorsInstalled, b'{"roles": {"run_button": ["button"]}}'),
    ("DELETE", "/selectors", messages.SelectorsRemoved, None),
    ("POST", "/generate", messages.GenerateAnswer, messages.encode(messages.GenerateRequest(prompt="a cat"))),
    ("GET", "/snapshots", messages.SnapshotList, None),
    ("POST", "/snapshots", messages.Snapshot, messages.encode(messages.SnapshotRequest(reason="canary"))),
])
def test_the_fake_instance_answers_in_the_contracts_shapes(method: str, path: str, kind: Any, body: bytes | None) -> None:
    async def call() -> httpx.Response:
        fake = FakeRuntime()
        state = await fake.start(InstanceSpec("contract", "contract", TOKEN))
        async with httpx.AsyncClient(transport=fake.http_transport, base_url=state.endpoint or "") as client:
            return await client.request(method, path, content=body, headers={"Authorization": f"Bearer {TOKEN}"})

    answer = asyncio.run(call())
    assert answer.status_code == (201 if (method, path) == ("POST", "/snapshots") else 200), answer.text
    msgspec.json.decode(answer.content, type=kind)
    assert set(answer.json()) <= set(kind.__struct_fields__)


def test_the_contracts_data_files_load_and_the_shape_check_speaks_in_codes() -> None:
    assert catalogue.load().default.driven
    packaged = selectors.load_packaged()
    assert "run_button" in packaged["roles"]
    assert selectors.check_override({"roles": {"run_button": ["button"]}}, packaged) is None
    problem = selectors.check_override({"roles": {"run_buton": ["x"]}}, packaged)
    assert problem is not None and problem.code == "selectors_unknown_role" and problem.params["name"] == "run_buton"


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_the_contract_needs_msgspec_and_the_standard_library_only_and_the_sides_share_nothing_else() -> None:
    import sys

    assert _imports("fleet_contract") - set(sys.stdlib_module_names) - {"__future__"} == {"msgspec", "fleet_contract"}
    assert "instance" not in _imports("gateway") and "playwright" not in _imports("gateway")
    assert "gateway" not in _imports("instance")
    # The data files live once, in the contract package.
    assert not (REPO / "instance" / "models.json").exists() and not (REPO / "instance" / "selectors.json").exists()

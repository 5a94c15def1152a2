"""deploy/compose.yaml publishes the API and the admin port on addresses of their own (FLEET_API_BIND,
FLEET_ADMIN_BIND, both loopback by default); the old FLEET_BIND_ADDRESS moves the API port only. Read through
`compose config` with the same functions deploy/up.sh calls, so the Compose installed here (v1 or v2) must
accept the file. No engine needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# v1 prints `- 127.0.0.1:8812:8812/tcp`; v2 prints `host_ip: 127.0.0.1` a line before `target: 8812`.
SHORT = re.compile(r"-\s+'?(?P<ip>[0-9a-fA-F.:]+):\d+:(?P<port>881[23])/tcp")
LONG = re.compile(r"host_ip:\s+(?P<ip>\S+)\s*\n\s*target:\s+(?P<port>881[23])")


def published(tmp_path: Path, **variables: str) -> dict[int, str]:
    """{container port: host address} of the gateway as deploy/up.sh would start it, with these variables."""
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    if not (v2 or shutil.which("docker-compose")):
        skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "FLEET_", "POSTGRES_", "COMPOSE_"))}
    env.update(FLEET_ENV_FILE=str(env_file), GATEWAY_ADMIN_TOKEN="t" * 24, POSTGRES_PASSWORD="pw", **variables)
    script = (
        f'REPO={REPO}; DEPLOY={DEPLOY}; . "$DEPLOY/compose-env.sh"; load_env_file "$ENV_FILE"; apply_legacy_bind; '
        'compose -f "$DEPLOY/compose.yaml" config'
    )
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = [m.groupdict() for pattern in (SHORT, LONG) for m in pattern.finditer(result.stdout)]
    ports = {int(m["port"]): m["ip"] for m in found}
    assert sorted(ports) == [8812, 8813], result.stdout
    return ports


@pytest.mark.parametrize(
    ("variables", "api", "admin"),
    [
        ({}, "127.0.0.1", "127.0.0.1"),
        ({"FLEET_API_BIND": "0.0.0.0"}, "0.0.0.0", "127.0.0.1"),
        ({"FLEET_ADMIN_BIND": "10.0.0.2"}, "127.0.0.1", "10.0.0.2"),
        # The old name: it used to publish both ports; now the API port only.
        ({"FLEET_BIND_ADDRESS": "0.0.0.0"}, "0.0.0.0", "127.0.0.1"),
        ({"FLEET_BIND_ADDRESS": "0.0.0.0", "FLEET_API_BIND": "10.0.0.1"}, "10.0.0.1", "127.0.0.1"),
    ],
)
def test_the_api_and_admin_ports_have_bind_addresses_of_their_own(
    tmp_path: Path, variables: dict[str, str], api: str, admin: str
) -> None:
    assert published(tmp_path, **variables) == {8812: api, 8813: admin}

"""Chromium's sandbox in instance containers made by the docker runtime: with the bundled seccomp profile
(GATEWAY_INSTANCE_SECCOMP=sandbox, the default) the renderers live in user namespaces of their own; with
the engine's default profile Chromium runs --no-sandbox. Real engine, real instance image."""

from __future__ import annotations

from collections.abc import AsyncIterator

import docker
import pytest

from gateway.runtime.docker import DockerRuntime, seccomp_profile
from tests.gateway.http_wait import wait_http
from tests.gateway.test_docker_runtime import (  # noqa: F401 - `client` is a fixture
    IMAGE,
    NAME_PREFIX,
    READY_TIMEOUT_S,
    VOLUME_PREFIX,
    _exec,
    _spec,
    client,
)

pytestmark = pytest.mark.docker

# The browser process (no --type=), its command line, and the user namespace of each renderer beside its own.
INSPECT = r"""
for p in /proc/[0-9]*; do
  case "$(readlink $p/exe 2>/dev/null)" in */chromium|*/chromium-headless-shell) ;; *) continue;; esac
  cmd=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
  case "$cmd" in
    *--type=renderer*) echo "renderer $(readlink $p/ns/user)";;
    *--type=*) ;;
    *) echo "browser $(readlink $p/ns/user) $cmd";;
  esac
done
"""

@pytest.fixture(params=["sandbox", "default"])
async def runtime(client: docker.DockerClient, request: pytest.FixtureRequest) -> AsyncIterator[DockerRuntime]:  # noqa: F811
    rt = DockerRuntime(None, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX,
                       seccomp_profile=seccomp_profile(request.param))
    await rt.setup()
    yield rt
    await rt.close()


async def test_chromium_keeps_its_sandbox_under_the_bundled_profile(runtime: DockerRuntime, client) -> None:  # noqa: F811
    spec = _spec()
    state = await runtime.start(spec)
    try:
        await wait_http(f"{state.endpoint}/status", token=spec.token, timeout=READY_TIMEOUT_S,
                        until=lambda s: s.get("browser") == "up" and s.get("ready"))
        shot = await wait_http(f"{state.endpoint}/screenshot", token=spec.token)  # a renderer drew the page
        assert shot.content.startswith(b"\x89PNG")
        container = client.containers.get(state.handle)
        lines = _exec(container, INSPECT).splitlines()
        browser = next(line.split(" ", 2) for line in lines if line.startswith("browser "))
        renderers = [line.split(" ", 1)[1] for line in lines if line.startswith("renderer ")]
        assert renderers, lines
        if runtime.seccomp_profile is not None:
            assert "--no-sandbox" not in browser[2], browser[2]
            assert all(ns != browser[1] for ns in renderers), lines  # each renderer in its own user namespace
            assert "sandbox on" in container.logs().decode()
        else:
            assert "--no-sandbox" in browser[2]
            assert all(ns == browser[1] for ns in renderers), lines
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)

"""Chromium's sandbox in instance containers made by the docker runtime: with the bundled seccomp profile
(GATEWAY_INSTANCE_SECCOMP=sandbox, the default: Docker's allowlist plus what the sandbox needs) the renderers
live in user namespaces of their own under their own seccomp filter, and syscalls off Docker's list stay
refused; with the engine's default profile Chromium runs --no-sandbox. Real engine, real instance image."""

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

# The browser process (no --type=), its command line, and the user namespace of each renderer beside its own;
# each with how many seccomp filters it runs under (a renderer that installed Chromium's own has one more).
INSPECT = r"""
for p in /proc/[0-9]*; do
  case "$(readlink $p/exe 2>/dev/null)" in */chromium|*/chromium-headless-shell) ;; *) continue;; esac
  cmd=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
  filters=$(awk '/^Seccomp_filters:/ {print $2}' $p/status)
  case "$cmd" in
    *--type=renderer*) echo "renderer $filters $(readlink $p/ns/user)";;
    *--type=*) ;;
    *) echo "browser $filters $(readlink $p/ns/user) $cmd";;
  esac
done
"""
# Syscalls in the instance's own user (errno; 0: allowed): get_mempolicy is off Docker's list without
# CAP_SYS_NICE; Chromium's namespaces (user, PID, network) are allowed, a mount namespace is not.
SYSCALLS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "get_mempolicy": lambda: libc.syscall(239, None, None, 0, None, 0),  # x86_64 number
    "unshare_sandbox": lambda: libc.unshare(0x10000000 | 0x20000000 | 0x40000000),
    "unshare_mount": lambda: libc.unshare(0x10000000 | 0x00020000),
}
for name, call in calls.items():
    pid = os.fork()
    if pid == 0:  # each in a child of its own: an unshare must not change the next call's process
        os._exit(0 if call() == 0 else ctypes.get_errno())
    print(name, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
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
        _, browser_filters, browser_ns, browser_cmd = next(
            line.split(" ", 3) for line in lines if line.startswith("browser "))
        renderers = [line.split(" ")[1:3] for line in lines if line.startswith("renderer ")]
        assert renderers, lines
        if runtime.seccomp_profile is not None:
            assert "--no-sandbox" not in browser_cmd, browser_cmd
            assert all(ns != browser_ns for _, ns in renderers), lines  # each renderer in its own user namespace
            # and under Chromium's seccomp-bpf filter, stacked on the container's
            assert all(int(filters) > int(browser_filters) for filters, _ in renderers), lines
            assert "sandbox on" in container.logs().decode()
        else:
            assert "--no-sandbox" in browser_cmd
            assert all(ns == browser_ns for _, ns in renderers), lines
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)


async def test_syscalls_off_dockers_list_stay_refused_under_the_bundled_profile(client) -> None:  # noqa: F811
    """The bundled profile is an allowlist: what Docker refuses stays refused, except the sandbox's namespaces."""
    runtime = DockerRuntime(None, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX,
                            seccomp_profile=seccomp_profile("sandbox"))
    await runtime.setup()
    spec = _spec()
    try:
        state = await runtime.start(spec)
        container = client.containers.get(state.handle)
        errnos = dict(line.split() for line in _exec(container, f"python - <<'EOF'\n{SYSCALLS}\nEOF").splitlines())
        assert errnos == {"get_mempolicy": "1", "unshare_sandbox": "0", "unshare_mount": "1"}  # 1: EPERM
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)
        await runtime.close()

"""The `docker` engine: one container per instance, through the Docker SDK.

Each instance is a container named `<name_prefix><instance_id>` with the fleet labels, a named volume
`<volume_prefix><instance_id>` at `/data`, resource limits, a non-root user and no restart policy (the
reconciler restarts). The SDK is blocking, so every call runs in this runtime's own thread pool; the
event loop never waits on the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from fleet_contract import environment as instance_env
from fleet_contract.proxy import ProxyURLError, parse_proxy, with_address
from gateway.runtime import egress as fence
from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_INSTANCE_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    InstanceSpec,
    RuntimeError_,
    RuntimePhase,
    RuntimeState,
    RuntimeUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Which gateway a container belongs to: its name prefix. A test gateway and a production gateway on one
# engine then never adopt (or remove as orphans) each other's containers.
LABEL_NAMESPACE = "io.aistudio-fleet.namespace"
# Hash of what the container was created from; a stopped container with another hash is recreated.
LABEL_SPEC_HASH = "io.aistudio-fleet.spec-hash"
# A loopback proxy relay (see loopback_relay.py) is labelled with its role and the host port it serves; an
# instance container that uses one carries the same port label, so a relay no running instance uses is removed.
LABEL_ROLE = "io.aistudio-fleet.role"
ROLE_RELAY = "loopback-relay"
LABEL_RELAY_PORT = "io.aistudio-fleet.relay-port"
RELAY_SOURCE = Path(__file__).with_name("loopback_relay.py").read_text(encoding="utf-8")
RELAY_READY_TIMEOUT_S = 15.0
_RELAY_LISTENING = re.compile(r"RELAY LISTENING (\S+):(\d+)")
PROXY_VARIABLE = instance_env.variable("proxy")

INSTANCE_PORT = instance_env.PORT
DATA_PATH = instance_env.DATA_DIR
# Docker's default seccomp profile refuses user namespaces, so Chromium in the instance would run without its
# sandbox. The bundled one is Docker's own allowlist (moby docker-v29.7.2, vendored moby/profiles/seccomp v0.2.3,
# kept verbatim in docker-default-seccomp.json) as Docker applies it to a container without capabilities on x86
# and ARM, written flat (containerd's Localhost loader ignores includes/excludes), plus the rules marked
# "chromium sandbox:" (clone and unshare of user, PID and network namespaces, chroot): everything else, future
# syscalls included, is refused (tests/gateway/test_seccomp_profile.py derives it from Docker's file).
BUNDLED_SECCOMP = Path(__file__).with_name("instance-seccomp.json")
DOCKER_DEFAULT_SECCOMP = Path(__file__).with_name("docker-default-seccomp.json")
# Docker's container name grammar; the instance id becomes part of the name.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
_END = object()  # end of a followed log stream
# Read-only root file system: where the instance, Xvfb and Chromium write (Playwright's profile, the X socket, the
# fonts cache, Chromium's crash settings), in memory, counted in the container's memory limit.
INSTANCE_HOME = "/home/app"  # the image's HOME (Dockerfile.instance)
TMPFS_SIZES = {"/tmp": "256m", INSTANCE_HOME: "64m"}
ROLE_FENCE = "egress-fence"
EGRESS_MODES = ("auto", "on", "off")
FENCE_RECHECK_S = 300.0  # the rules are written again this often, in case the host's firewall was reloaded
URL_VARIABLES = (instance_env.variable("aistudio_url"), instance_env.variable("signin_url"))


class _DirectAPIClient(docker.APIClient):
    """The engine's API without proxy environment variables: requests would send a tcp:// engine's calls (container
    specs with instance tokens and proxy passwords) through HTTP_PROXY. A property, because requests.Session sets
    trust_env in its __init__, before docker-py's first call (the version query)."""

    @property
    def trust_env(self) -> bool:
        return False

    @trust_env.setter
    def trust_env(self, _value: bool) -> None:
        pass


class _DirectDockerClient(docker.DockerClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _DirectAPIClient(*args, **kwargs)


class DockerRuntime:
    """Runs each instance as a Docker container; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        network: str | None,
        image: str,
        publish_host: str | None = "127.0.0.1",
        mem_limit: str = "1g",
        nano_cpus: int = 1_000_000_000,
        pids_limit: int = 512,
        shm_size: str = "512m",
        volume_prefix: str = "aistudio-fleet-data-",
        connect_mode: str = "auto",
        name_prefix: str = "aistudio-fleet-",
        *,
        docker_host: str | None = None,
        user: str = "10001:10001",
        cap_drop_all: bool = True,
        init: bool = False,
        seccomp_profile: str | None = None,
        read_only_root: bool = True,
        egress: str = "off",
        egress_allow: tuple[str, ...] = (),
        api_timeout: float = 60.0,
        max_workers: int = 16,
    ) -> None:
        """`publish_host` None publishes on every interface; `connect_mode` is `auto`, `network` or
        `host`; `docker_host` overrides DOCKER_HOST (e.g. `unix:///var/run/docker.sock`)."""
        if connect_mode not in ("auto", "network", "host"):
            raise ValueError(f"connect_mode must be auto, network or host, not {connect_mode!r}")
        if connect_mode == "network" and not network:
            raise ValueError("connect_mode 'network' needs a network")
        if egress not in EGRESS_MODES:
            raise ValueError(f"egress must be auto, on or off, not {egress!r}")
        self._allow = [fence.parse_allow(entry) for entry in egress_allow]  # ValueError on a bad entry
        self.network = network or None
        self.image = image
        self.publish_host = publish_host
        self.mem_limit = mem_limit
        self.nano_cpus = nano_cpus
        self.pids_limit = pids_limit
        self.shm_size = shm_size
        self.volume_prefix = volume_prefix
        self.connect_mode = connect_mode
        self.name_prefix = name_prefix
        self.docker_host = docker_host
        self.user = user
        self.cap_drop_all = cap_drop_all
        self.init = init
        self.seccomp_profile = seccomp_profile  # JSON text; None: the engine's default profile
        self.read_only_root = read_only_root
        self.egress = egress
        # The fence's state (see gateway/runtime/egress.py): what instances may reach although it is private,
        # what was last written and when, and why it could not be (None: written, or not wanted).
        self._fence_lock = threading.Lock()
        self._openings: set[fence.Opening] = set()
        self._fence_written: str | None = None
        self._fence_at = 0.0
        self._fence_problem: str | None = None if egress == "off" else "not written yet"
        self._fence_warning: str | None = None
        self._own_addresses: list[str] | None = None
        self.api_timeout = api_timeout
        self.max_workers = max_workers
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="docker-runtime"
        )
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        # `network` or `host` once known; `auto` is resolved on the first successful connection.
        self._resolved_mode: str | None = None if connect_mode == "auto" else connect_mode
        # One change at a time per instance: two starts must not race to create its container.
        self._locks: dict[str, asyncio.Lock] = {}
        # Relays are shared by instances: ensuring one and creating the container that uses it is one step
        # against pruning, which must not remove a relay between the two.
        self._relay_lock = threading.Lock()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Connect and resolve the connect mode. Raises RuntimeUnavailable when the engine is down;
        the runtime stays usable and connects again on the next call."""
        await self._run(self._connected)
        await self._run(self._prune_relays)
        await self._run(self._fence_running)

    async def close(self) -> None:
        """Close the client; containers keep running."""
        client, self._client = self._client, None
        if client is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, client.close)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def endpoint_mode(self) -> str | None:
        """`network` (by container name) or `host` (published port); None until first connected."""
        return self._resolved_mode

    # ---- names -----------------------------------------------------------------------------------

    def container_name(self, instance_id: str) -> str:
        return f"{self.name_prefix}{_checked_id(instance_id)}"

    def volume_name(self, instance_id: str) -> str:
        return f"{self.volume_prefix}{_checked_id(instance_id)}"

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    def _base_filters(self) -> list[str]:
        return [f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}", f"{LABEL_NAMESPACE}={self.name_prefix}"]

    # ---- protocol --------------------------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        async with self._lock(spec.instance_id):
            return await self._run(self._start_sync, spec)

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        async with self._lock(instance_id):
            await self._run(self._stop_sync, instance_id, timeout)

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        async with self._lock(instance_id):
            await self._run(self._remove_sync, instance_id, remove_volume)

    async def inspect(self, instance_id: str) -> RuntimeState:
        return await self._run(self._inspect_sync, instance_id)

    async def list_managed(self) -> dict[str, RuntimeState]:
        return await self._run(self._list_sync)

    async def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        container = await self._run(self._find, instance_id)
        if container is None:
            raise RuntimeError_(f"no container for instance {instance_id}")
        if not follow:
            raw: bytes = await self._run(
                lambda: _mapped(lambda: container.logs(tail=tail, stream=False, follow=False))
            )
            for line in raw.decode("utf-8", "replace").splitlines():
                yield line
            return
        async for line in self._follow(container, tail):
            yield line

    # ---- blocking parts (run in the pool) --------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def _connected(self) -> docker.DockerClient:
        """The shared client, connecting (and resolving the connect mode) on first use."""
        with self._client_lock:
            if self._client is None:
                try:
                    # As many pooled connections as threads that may call at once.
                    options = {"timeout": int(self.api_timeout), "max_pool_size": self.max_workers}
                    if self.docker_host:
                        client = _DirectDockerClient(base_url=self.docker_host, **options)
                    else:
                        client = _DirectDockerClient.from_env(**options)
                    client.ping()
                except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                    raise RuntimeUnavailable("docker", _reason(e)) from e
                self._client = client
                if self._resolved_mode is None:
                    self._resolved_mode = self._detect_mode(client)
                    log.info("docker runtime reaches instances by %s", self._resolved_mode)
            return self._client

    def _detect_mode(self, client: docker.DockerClient) -> str:
        """`network` when this process runs in a container attached to `self.network`, else `host`."""
        if not self.network:
            return "host"
        own = _own_container_id_candidates()
        if not own:
            return "host"
        for candidate in own:
            try:
                attrs = client.api.inspect_container(candidate)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError:
                continue
            networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
            if self.network in networks:
                return "network"
            # Attached by network id rather than name.
            if any(n.get("NetworkID", "").startswith(self.network) for n in networks.values()):
                return "network"
            return "host"
        return "host"

    def _spec_hash(self, spec: InstanceSpec, env: dict[str, str] | None = None) -> str:
        material = {
            "image": self.image,
            "env": self._environment(spec) if env is None else env,
            "network": self.network,
            "publish": self._publishes() and self.publish_host,
            "limits": [self.mem_limit, self.nano_cpus, self.pids_limit, self.shm_size],
            "user": self.user,
            "cap_drop_all": self.cap_drop_all,
            "init": self.init,
        }
        if self.read_only_root:
            material["read_only"] = TMPFS_SIZES
        if self.seccomp_profile:  # only when set, so containers made without one keep their hash
            material["seccomp"] = hashlib.sha256(self.seccomp_profile.encode()).hexdigest()
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]

    def _security_options(self) -> list[str]:
        options = ["no-new-privileges"]
        if self.seccomp_profile:
            options.append(f"seccomp={self.seccomp_profile}")  # the engine API takes the profile's text
        return options

    def _environment(self, spec: InstanceSpec) -> dict[str, str]:
        return spec.environ()

    def _publishes(self) -> bool:
        # The port is published unless the gateway certainly reaches instances by name.
        return self._resolved_mode != "network"

    def _find(self, instance_id: str) -> Container | None:
        """The container of this instance, found by labels; None when there is none."""
        client = self._connected()
        filters = {"label": [*self._base_filters(), f"{LABEL_INSTANCE_ID}={instance_id}"]}
        found = _mapped(lambda: client.containers.list(all=True, filters=filters, ignore_removed=True))
        if not found:
            return None
        if len(found) > 1:
            # Should not happen (names are unique); prefer the one with our name.
            named = [c for c in found if c.name == self.container_name(instance_id)]
            found = named or found
        return found[0]

    def _start_sync(self, spec: InstanceSpec) -> RuntimeState:
        env = self._environment(spec)
        if not _loopback_proxy(env.get(PROXY_VARIABLE)):
            return self._start_with(spec, env, None)
        with self._relay_lock:
            routed, relay_port = self._routed(env[PROXY_VARIABLE])
            return self._start_with(spec, {**env, PROXY_VARIABLE: routed}, relay_port)

    def _start_with(self, spec: InstanceSpec, env: dict[str, str], relay_port: int | None) -> RuntimeState:
        client = self._connected()
        self._fence_for(env)
        name = self.container_name(spec.instance_id)
        wanted_hash = self._spec_hash(spec, env)
        container = self._find(spec.instance_id)
        if container is not None:
            status = container.status
            if status == "running":
                return self._state(container)
            if status == "paused":
                _mapped(container.unpause)
                container = _mapped(lambda: client.containers.get(container.id))
                return self._state(container)
            if container.labels.get(LABEL_SPEC_HASH) != wanted_hash or status in ("dead", "removing"):
                log.info("recreating container %s (spec changed or %s)", name, status)
                self._remove_container(container)
                container = None
        if container is None:
            container = self._create(client, spec, name, wanted_hash, env, relay_port)
        try:
            _mapped(container.start)
        except docker.errors.APIError as e:
            raise RuntimeError_(f"container {name} failed to start: {_reason(e)}") from e
        container = _mapped(lambda: client.containers.get(container.id))
        return self._state(container)

    def _create(
        self, client: docker.DockerClient, spec: InstanceSpec, name: str, spec_hash: str,
        env: dict[str, str] | None = None, relay_port: int | None = None,
    ) -> Container:
        if self.network:
            try:
                _mapped(lambda: client.networks.get(self.network))
            except docker.errors.NotFound as e:
                raise RuntimeError_(
                    f"docker network {self.network!r} does not exist; create it "
                    f"(docker network create {self.network}) or unset the network setting"
                ) from e
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_NAMESPACE: self.name_prefix,
            LABEL_INSTANCE_ID: spec.instance_id,
            LABEL_INSTANCE_NAME: spec.name,
        }
        volume = self.volume_name(spec.instance_id)
        try:
            _mapped(lambda: client.volumes.get(volume))
        except docker.errors.NotFound:
            _mapped(lambda: client.volumes.create(name=volume, labels=labels))
        kwargs: dict[str, Any] = dict(
            image=self.image,
            name=name,
            labels={**labels, LABEL_SPEC_HASH: spec_hash, **({LABEL_RELAY_PORT: str(relay_port)} if relay_port else {})},
            environment=self._environment(spec) if env is None else env,
            volumes={volume: {"bind": DATA_PATH, "mode": "rw"}},
            mem_limit=self.mem_limit,
            memswap_limit=self.mem_limit,  # no swap beyond the memory limit
            nano_cpus=self.nano_cpus,
            pids_limit=self.pids_limit,
            shm_size=self.shm_size,
            security_opt=self._security_options(),
            user=self.user,
            restart_policy={"Name": "no"},
            detach=True,
        )
        if self.read_only_root:
            kwargs["read_only"] = True
            kwargs["tmpfs"] = instance_tmpfs(self.user)
        if self.init:  # the image's own entrypoint is tini; Docker's init only for images without one
            kwargs["init"] = True
        if self.cap_drop_all:
            kwargs["cap_drop"] = ["ALL"]
        if self.network:
            kwargs["network"] = self.network
        if self._publishes():
            kwargs["ports"] = {f"{INSTANCE_PORT}/tcp": (self.publish_host or "", None)}
        try:
            return _mapped(lambda: client.containers.create(**kwargs))
        except docker.errors.ImageNotFound as e:
            raise RuntimeError_(
                f"image {self.image!r} is not on this engine; build it (deploy/build-images.sh)"
            ) from e
        except docker.errors.APIError as e:
            if e.status_code == 409:
                # Created meanwhile by another caller (or a leftover with our name but not our labels).
                existing = self._find(spec.instance_id)
                if existing is not None:
                    return existing
                raise RuntimeError_(
                    f"a container named {name} exists but is not managed by this gateway; remove it"
                ) from e
            raise RuntimeError_(f"cannot create container {name}: {_reason(e)}") from e

    def _stop_sync(self, instance_id: str, timeout: float) -> None:
        self._stop_container(instance_id, timeout)
        self._prune_relays()

    def _stop_container(self, instance_id: str, timeout: float) -> None:
        container = self._find(instance_id)
        if container is None or container.status not in ("running", "paused", "restarting"):
            return
        try:
            _mapped(lambda: container.stop(timeout=max(0, int(round(timeout)))))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code in (304, 409):
                return
            raise RuntimeError_(f"cannot stop {container.name}: {_reason(e)}") from e

    def _remove_sync(self, instance_id: str, remove_volume: bool) -> None:
        container = self._find(instance_id)
        if container is not None:
            self._remove_container(container)
        if remove_volume:
            self._remove_volume(self.volume_name(instance_id))
        self._prune_relays()

    def _remove_container(self, container: Container) -> None:
        try:
            _mapped(lambda: container.remove(force=True, v=False))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code == 409:  # removal already in progress
                self._wait_gone(container.id)
                return
            raise RuntimeError_(f"cannot remove {container.name}: {_reason(e)}") from e

    def _wait_gone(self, container_id: str, timeout: float = 15.0) -> None:
        client = self._connected()
        try:
            client.api.wait(container_id, timeout=timeout, condition="removed")
        except (docker.errors.NotFound, requests.exceptions.ReadTimeout):
            pass
        except requests.exceptions.ConnectionError as e:
            raise RuntimeUnavailable("docker", _reason(e)) from e
        except docker.errors.APIError as e:
            if e.status_code != 404:
                raise RuntimeError_(f"cannot remove {container_id[:12]}: {_reason(e)}") from e

    def _remove_volume(self, volume: str) -> None:
        client = self._connected()
        for attempt in range(20):
            try:
                _mapped(lambda: client.api.remove_volume(volume, force=True))
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as e:
                # 409: still in use by a container that is being removed; try again shortly.
                if e.status_code != 409 or attempt == 19:
                    raise RuntimeError_(f"cannot remove volume {volume}: {_reason(e)}") from e
                threading.Event().wait(0.25)

    def _inspect_sync(self, instance_id: str) -> RuntimeState:
        container = self._find(instance_id)
        if container is None:
            return RuntimeState(instance_id=instance_id, phase="missing")
        return self._state(container)

    def _list_sync(self) -> dict[str, RuntimeState]:
        client = self._connected()
        if self.egress != "off" and time.monotonic() - self._fence_at > FENCE_RECHECK_S:
            self._fence_running()  # each reconciler pass calls this; the rules are checked every few minutes
        filters = {"label": self._base_filters()}
        containers = _mapped(lambda: client.containers.list(all=True, filters=filters, ignore_removed=True))
        states: dict[str, RuntimeState] = {}
        for c in containers:
            instance_id = c.labels.get(LABEL_INSTANCE_ID)
            if instance_id:
                states[instance_id] = self._state(c)
        return states

    def _state(self, container: Container) -> RuntimeState:
        attrs = container.attrs
        state = attrs.get("State") or {}
        status = state.get("Status") or container.status
        instance_id = container.labels.get(LABEL_INSTANCE_ID, "")
        phase: RuntimePhase
        detail = status
        if status in ("running", "paused", "restarting"):
            phase = "running"
        elif status == "created":
            phase = "created"
        else:  # exited, dead, removing
            phase = "exited"
        exit_code = None
        if phase == "exited":
            exit_code = state.get("ExitCode")
            if state.get("OOMKilled"):
                detail = "killed: out of memory (raise the memory limit)"
            elif state.get("Error"):
                detail = f"{status}: {state['Error']}"
            else:
                detail = f"{status} with code {exit_code}"
        return RuntimeState(
            instance_id=instance_id,
            phase=phase,
            handle=container.id,
            endpoint=self._endpoint(container, attrs) if phase == "running" else None,
            exit_code=exit_code,
            detail=detail,
        )

    def _endpoint(self, container: Container, attrs: dict[str, Any]) -> str | None:
        if self._resolved_mode == "network":
            return f"http://{container.name}:{INSTANCE_PORT}"
        ports = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{INSTANCE_PORT}/tcp")
        if not ports:
            return None
        # Prefer the IPv4 binding; 0.0.0.0 and :: mean every interface, loopback included.
        binding = next((p for p in ports if ":" not in (p.get("HostIp") or "")), ports[0])
        host = binding.get("HostIp") or ""
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{binding['HostPort']}"

    # ---- the egress fence (gateway/runtime/egress.py) ------------------------------------------------

    def egress_fence(self) -> tuple[str, str]:
        """(`on`, ""), (`off`, why) or (`unavailable`, why): whether instances are fenced from private addresses."""
        if self.egress == "off":
            return "off", "GATEWAY_DOCKER_EGRESS=off"
        if self._fence_problem:
            return "unavailable", self._fence_problem
        return "on", ""

    def security_warnings(self) -> list[str]:
        """What the operator should know about the instances' isolation (the panel and the admin API show it)."""
        state, why = self.egress_fence()
        warnings = [f"egress fence unavailable: {why}"] if state == "unavailable" else []
        return warnings + ([self._fence_warning] if self._fence_warning else [])

    async def remove_fence(self) -> None:
        """Delete the fence's rules for this runtime's network (tests; an operator leaving the fleet)."""
        await self._run(self._remove_fence_sync)

    def _fence_running(self) -> None:
        """Write the fence with the openings of the instance containers already there (setup, periodic check)."""
        if self.egress == "off":
            return
        client = self._connected()
        filters = {"label": [*self._base_filters(), LABEL_INSTANCE_ID]}
        containers = _mapped(lambda: client.containers.list(filters=filters, ignore_removed=True))
        self._fence_with(lambda: set().union(*(self._env_openings(_env_of(c)) for c in containers)), force=True)

    def _fence_for(self, env: dict[str, str]) -> None:
        """Make sure the fence is written with the openings an instance of this environment needs.
        With egress `on`, an instance is never started unfenced: RuntimeError_ says why."""
        if self.egress == "off":
            return
        self._fence_with(lambda: self._env_openings(env))
        if self.egress == "on" and self._fence_problem:
            raise RuntimeError_(f"instances are not started unfenced (GATEWAY_DOCKER_EGRESS=on): {self._fence_problem}")

    def _fence_with(self, needed: Callable[[], set[fence.Opening]], *, force: bool = False) -> None:
        """Write the fence if an opening is missing (or `force`); after a failure, try again only every few minutes."""
        with self._fence_lock:
            if self._fence_written is None and not force and time.monotonic() - self._fence_at < FENCE_RECHECK_S \
                    and self._fence_problem != "not written yet":
                return
            try:
                wanted = self._openings | needed() | self._allowed_openings()
                if force or wanted != self._openings or self._fence_written is None:
                    self._write_fence(wanted)
            except RuntimeError_ as e:
                if self._fence_problem != str(e):
                    log.error("egress fence of the instances cannot be written: %s", e)
                self._fence_problem, self._fence_written, self._fence_at = str(e), None, time.monotonic()

    def _write_fence(self, openings: set[fence.Opening]) -> None:
        target = self._fence_target()
        script = fence.apply_script(target, self._own_fence_addresses(), openings)
        output = self._run_fence_helper(script)
        if fence.FENCE_OK not in output:
            raise RuntimeError_(f"the fence helper did not finish: {output[-300:].strip()}")
        warning = next((line.removeprefix("WARNING ") for line in output.splitlines() if line.startswith("WARNING ")), None)
        if warning and warning != self._fence_warning:
            log.warning("egress fence: %s", warning)
        if self._fence_problem:
            log.info("egress fence of the instances written on %s (%d openings)", target.bridge, len(openings))
        self._fence_warning, self._fence_problem = warning, None
        self._openings, self._fence_written, self._fence_at = openings, fence.fingerprint(script), time.monotonic()

    def _fence_target(self) -> fence.FenceTarget:
        if not self.network:
            raise RuntimeError_("instances are on Docker's default bridge, which other containers share: "
                                "set GATEWAY_DOCKER_NETWORK to a network of the fleet's own")
        client = self._connected()
        try:
            attrs = _mapped(lambda: client.networks.get(self.network)).attrs
        except docker.errors.NotFound as e:
            raise RuntimeError_(f"docker network {self.network!r} does not exist") from e
        if attrs.get("Driver") != "bridge" or attrs.get("Name") == "bridge":
            raise RuntimeError_(f"docker network {self.network!r} is not a bridge network of its own "
                                f"(driver {attrs.get('Driver')}): the fence filters a bridge's traffic")
        bridge = (attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{attrs['Id'][:12]}"
        return fence.FenceTarget(network_id=attrs["Id"], bridge=bridge, ipv6=bool(attrs.get("EnableIPv6")))

    def _own_fence_addresses(self) -> list[str]:
        """The gateway's own container's addresses on the instance network: its traffic is not an instance's."""
        if self._own_addresses is None:
            client, found = self._connected(), []
            for candidate in _own_container_id_candidates():
                try:
                    networks = client.api.inspect_container(candidate)["NetworkSettings"]["Networks"] or {}
                except (docker.errors.APIError, KeyError, TypeError):
                    continue
                attached = networks.get(self.network) or {}
                found = [a for a in (attached.get("IPAddress"), attached.get("GlobalIPv6Address")) if a]
                break
            self._own_addresses = found
        return self._own_addresses

    def _allowed_openings(self) -> set[fence.Opening]:
        return {opening for host, port in self._allow for opening in self._openings_of(host, port, private_only=False)}

    def _env_openings(self, env: dict[str, str]) -> set[fence.Opening]:
        """The private destinations an instance's environment names: AI Studio's URL, its proxy (or relay)."""
        found: set[fence.Opening] = set()
        for variable in (*URL_VARIABLES, PROXY_VARIABLE):
            url = env.get(variable)
            if not url:
                continue
            try:
                parts = urlsplit(url)
                host, port = parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme, 1080)
            except ValueError:
                continue
            if host:
                found |= self._openings_of(host, port, private_only=True)
        return found

    def _openings_of(self, host: str, port: int | None, *, private_only: bool) -> set[fence.Opening]:
        if "/" in host:
            return {fence.opening_for(host, port)}
        addresses = self._addresses_of(host)
        return {fence.opening_for(a, port) for a in addresses if not private_only or fence.is_private(a)}

    def _addresses_of(self, host: str) -> list[str]:
        """A literal address, a container on the instance network (by name), or what this host's resolver says."""
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if self.network:
            client = self._connected()
            try:
                containers = _mapped(lambda: client.networks.get(self.network)).attrs.get("Containers") or {}
            except docker.errors.NotFound:
                containers = {}
            for attached in containers.values():
                if attached.get("Name") == host:
                    return [a.split("/")[0] for a in (attached.get("IPv4Address"), attached.get("IPv6Address")) if a]
        try:
            return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
        except OSError:
            log.warning("egress fence: %s does not resolve here; instances may not reach it if it is private", host)
            return []

    def _run_fence_helper(self, script: str) -> str:
        """Run the script in a throwaway container on the host's network with NET_ADMIN (the instance image
        carries iptables); its output, or RuntimeError_ with its error."""
        client = self._connected()
        labels = {LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_NAMESPACE: self.name_prefix, LABEL_ROLE: ROLE_FENCE}
        try:
            output = _mapped(lambda: client.containers.run(
                self.image, entrypoint=["sh", "-c", script], user="0:0", network_mode="host", labels=labels,
                cap_drop=["ALL"], cap_add=["NET_ADMIN", "NET_RAW"], security_opt=["no-new-privileges"],
                read_only=True, tmpfs={"/run": "size=1m"}, mem_limit="64m", pids_limit=64,
                healthcheck={"test": ["NONE"]}, remove=True, stdout=True, stderr=True,
            ))
        except docker.errors.ContainerError as e:
            error = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError_(error[-1] if error else f"the fence helper exited with {e.exit_status}") from e
        except docker.errors.ImageNotFound as e:
            raise RuntimeError_(f"image {self.image!r} is not on this engine") from e
        except docker.errors.APIError as e:
            raise RuntimeError_(f"the engine refused the fence helper: {_reason(e)}") from e
        return output.decode("utf-8", "replace")

    def _remove_fence_sync(self) -> None:
        with self._fence_lock:
            self._run_fence_helper(fence.remove_script(self._fence_target()))
            self._fence_written, self._openings = None, set()

    # ---- proxies on the host's loopback ------------------------------------------------------------

    def loopback_proxy_problem(self) -> str | None:
        """None when a proxy on this host's loopback can be relayed to the instances; else why not."""
        return None if engine_is_local(self.docker_host or os.environ.get("DOCKER_HOST")) else "remote_docker"

    async def route_proxy(self, url: str) -> str:
        """The proxy URL as an instance container reaches it: a loopback one through its relay (started if need be)."""
        if not _loopback_proxy(url):
            return url
        return await self._run(self._route_sync, url)

    async def prune_relays(self) -> None:
        await self._run(self._prune_relays)

    def _route_sync(self, url: str) -> str:
        with self._relay_lock:
            return self._routed(url)[0]

    def _routed(self, url: str) -> tuple[str, int]:
        """(the URL pointed at the relay, the loopback port it serves); hold _relay_lock."""
        parsed = parse_proxy(url)
        if self.loopback_proxy_problem():
            raise RuntimeError_(
                f"the proxy {parsed.masked} is on this machine's loopback, which containers of a remote Docker "
                "engine cannot reach; let the proxy listen on a LAN address (allow LAN) and use that address"
            )
        host, port = self._ensure_relay(parsed.port)
        return with_address(url, host, port), parsed.port

    def relay_name(self, port: int) -> str:
        return f"{self.name_prefix}relay-{port}"

    def _relay_network(self, client: docker.DockerClient) -> tuple[str, list[str]]:
        """The fleet network's gateway address on the host (where the relay listens) and its subnets."""
        name = self.network or "bridge"
        try:
            network = _mapped(lambda: client.networks.get(name))
        except docker.errors.NotFound as e:
            raise RuntimeError_(f"docker network {name!r} does not exist; create it (docker network create {name})") from e
        address, subnets = None, []
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(config.get("Subnet") or "", strict=False)
            except ValueError:
                continue
            subnets.append(str(subnet))
            if address is None and subnet.version == 4:
                address = (config.get("Gateway") or "").split("/")[0] or str(next(subnet.hosts()))
        if address is None:
            raise RuntimeError_(f"docker network {name!r} has no IPv4 gateway address to relay a loopback proxy on")
        return address, subnets

    def _relays(self, port: int | None = None) -> list[Container]:
        client = self._connected()
        labels = [*self._base_filters(), f"{LABEL_ROLE}={ROLE_RELAY}"]
        if port is not None:
            labels.append(f"{LABEL_RELAY_PORT}={port}")
        return _mapped(lambda: client.containers.list(all=True, filters={"label": labels}, ignore_removed=True))

    def _ensure_relay(self, port: int) -> tuple[str, int]:
        """The running relay for this loopback port (one per port, shared): its address and port."""
        client = self._connected()
        address, subnets = self._relay_network(client)
        command = ["--listen", address, "--target-port", str(port)]
        for subnet in subnets:
            command += ["--allow", subnet]
        wanted = hashlib.sha256(json.dumps([self.image, self.user, RELAY_SOURCE, command]).encode()).hexdigest()[:16]
        for found in self._relays(port):
            if found.status == "running" and found.labels.get(LABEL_SPEC_HASH) == wanted:
                return address, self._relay_port(found)
            # Stopped, or made for another network or image: a fresh one, so its log holds one run only.
            self._remove_container(found)
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_NAMESPACE: self.name_prefix,
            LABEL_ROLE: ROLE_RELAY,
            LABEL_RELAY_PORT: str(port),
            LABEL_SPEC_HASH: wanted,
        }
        try:
            container = _mapped(lambda: client.containers.run(
                self.image,
                command,
                entrypoint=["python", "-c", RELAY_SOURCE],
                name=self.relay_name(port),
                labels=labels,
                network_mode="host",  # the host's loopback is what it relays to
                user=self.user,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                mem_limit="64m",
                pids_limit=64,
                healthcheck={"test": ["NONE"]},  # the image's own check is the instance's port, not this
                restart_policy={"Name": "unless-stopped"},
                detach=True,
            ))
        except docker.errors.APIError as e:
            if e.status_code == 409:  # made meanwhile by another gateway on this engine
                running = [c for c in self._relays(port) if c.status == "running"]
                if running:
                    return address, self._relay_port(running[0])
            raise RuntimeError_(f"cannot start the loopback proxy relay for port {port}: {_reason(e)}") from e
        log.info("loopback proxy relay for port %s started on %s", port, address)
        return address, self._relay_port(container)

    def _relay_port(self, container: Container) -> int:
        """The port the relay listens on, from its log (the target's port unless that was taken)."""
        deadline = time.monotonic() + RELAY_READY_TIMEOUT_S
        while True:
            text = _mapped(lambda: container.logs(tail=100)).decode("utf-8", "replace")
            found = _RELAY_LISTENING.findall(text)
            if found:
                return int(found[-1][1])
            _mapped(container.reload)
            if container.status not in ("running", "created", "restarting"):
                raise RuntimeError_(f"the loopback proxy relay exited ({container.status}): {text[-300:].strip()}")
            if time.monotonic() >= deadline:
                raise RuntimeError_(f"the loopback proxy relay did not listen within {RELAY_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)

    def _prune_relays(self) -> None:
        """Remove the relays that no running instance container of this gateway uses."""
        try:
            self._prune_relays_now()
        except (docker.errors.APIError, RuntimeError_) as e:  # a leftover relay is harmless; the next prune retries
            log.warning("cannot prune loopback proxy relays: %s", _reason(e))

    def _prune_relays_now(self) -> None:
        with self._relay_lock:
            relays = self._relays()
            if not relays:
                return
            client = self._connected()
            users = {"label": [*self._base_filters(), LABEL_INSTANCE_ID, LABEL_RELAY_PORT]}
            found = _mapped(lambda: client.containers.list(all=True, filters=users, ignore_removed=True))
            in_use = {c.labels.get(LABEL_RELAY_PORT) for c in found if c.status in ("running", "created", "restarting", "paused")}
            for relay in relays:
                if relay.labels.get(LABEL_RELAY_PORT) not in in_use:
                    self._remove_container(relay)
                    log.info("loopback proxy relay %s removed: no running instance uses it", relay.name)

    # ---- following logs --------------------------------------------------------------------------

    async def _follow(self, container: Container, tail: int) -> AsyncIterator[str]:
        """Yield lines of a followed log stream read by a dedicated thread.

        The pump gets its own thread (not the pool) because it blocks for as long as the consumer
        follows; a bounded queue keeps a slow consumer from buffering without limit.
        """
        loop = asyncio.get_running_loop()
        stream = await self._run(lambda: _mapped(lambda: container.logs(stream=True, follow=True, tail=tail)))
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)
        stopped = threading.Event()

        def deliver(item: Any) -> bool:
            """Hand one item to the loop; False once the consumer has gone."""
            if stopped.is_set():
                return False
            try:
                fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            except RuntimeError:  # loop closed
                return False
            while True:
                try:
                    fut.result(timeout=0.5)
                    return True
                except concurrent.futures.TimeoutError:
                    if stopped.is_set():
                        fut.cancel()
                        return False
                except (concurrent.futures.CancelledError, RuntimeError):
                    return False

        def pump() -> None:
            buffer = b""
            try:
                for chunk in stream:
                    if stopped.is_set():
                        return
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if not deliver(line.decode("utf-8", "replace").rstrip("\r")):
                            return
                if buffer and not stopped.is_set():
                    deliver(buffer.decode("utf-8", "replace"))
            except Exception as e:  # noqa: BLE001 - reported to the consumer, which re-raises
                if not stopped.is_set():
                    deliver(e)
            finally:
                deliver(_END)

        thread = threading.Thread(target=pump, name=f"docker-logs-{container.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError_(f"log stream of {container.name} broke: {_reason(item)}")
                yield item
        finally:
            stopped.set()
            try:
                stream.close()  # unblocks the pump's read
            except Exception:  # noqa: BLE001 - already closed or engine gone
                pass


# ---- helpers ---------------------------------------------------------------------------------------


def engine_is_local(url: str | None) -> bool:
    """The engine runs on this machine (its socket, or TCP on loopback): its host network is ours."""
    if not url:
        return True
    scheme = url.partition("://")[0].lower()
    if scheme in ("unix", "npipe", "http+unix"):
        return True
    if scheme not in ("tcp", "http", "https"):
        return False  # ssh:// and the like: another machine
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def instance_tmpfs(user: str) -> dict[str, str]:
    """The tmpfs mounts of a read-only instance container; its home belongs to its user (`uid:gid`)."""
    uid, _, gid = user.partition(":")
    owner = f",uid={uid},gid={gid or uid}" if uid.isdigit() and (gid or uid).isdigit() else ""
    return {
        "/tmp": f"rw,nosuid,nodev,size={TMPFS_SIZES['/tmp']},mode=1777",
        INSTANCE_HOME: f"rw,nosuid,nodev,size={TMPFS_SIZES[INSTANCE_HOME]},mode=0700{owner}",
    }


def _env_of(container: Container) -> dict[str, str]:
    pairs = (item.partition("=") for item in (container.attrs.get("Config") or {}).get("Env") or [])
    return {name: value for name, _, value in pairs}


def _loopback_proxy(url: str | None) -> bool:
    if not url:
        return False
    try:
        return parse_proxy(url).on_loopback
    except ProxyURLError:
        return False


def _checked_id(instance_id: str) -> str:
    if not _NAME_RE.match(instance_id) or len(instance_id) > 128:
        raise RuntimeError_(f"instance id {instance_id!r} cannot be part of a container name")
    return instance_id


def _mapped(call: Callable[[], T]) -> T:
    """Run one SDK call, turning "the engine cannot be reached" into RuntimeUnavailable."""
    try:
        return call()
    except docker.errors.APIError:
        raise
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise RuntimeUnavailable("docker", _reason(e)) from e
    except docker.errors.DockerException as e:  # e.g. "Error while fetching server API version"
        raise RuntimeUnavailable("docker", _reason(e)) from e


def _reason(e: BaseException) -> str:
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    text = str(e) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _own_container_id_candidates() -> list[str]:
    """Ids (or names) that may identify the container this process runs in, best first."""
    in_container = Path("/.dockerenv").exists()
    candidates: list[str] = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            # /var/lib/docker/containers/<id>/hostname is bind-mounted into every container.
            if "/containers/" in line and ("/hostname " in line or "/hosts " in line):
                m = _CONTAINER_ID_RE.search(line)
                if m and m.group(0) not in candidates:
                    candidates.append(m.group(0))
                    in_container = True
    except OSError:
        pass
    if in_container:
        candidates.append(socket.gethostname())
    return candidates


def seccomp_profile(choice: str) -> str | None:
    """The instance containers' seccomp profile as JSON text: `sandbox` the bundled one, under which Chromium
    keeps its sandbox; `default` the engine's own (None; Chromium runs --no-sandbox); else a profile's path."""
    if choice == "default":
        return None
    path = BUNDLED_SECCOMP if choice == "sandbox" else Path(choice)
    try:
        text = path.read_text()
        json.loads(text)
    except (OSError, ValueError) as e:
        raise RuntimeError_(f"seccomp profile {str(path)!r} is not a readable JSON file: {e}") from e
    return text

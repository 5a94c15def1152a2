"""The `kubernetes` engine: one pod, one PersistentVolumeClaim and one token Secret per instance.

The client is lightkube's `AsyncClient` (asyncio, on httpx): no thread pool, and its typed resources for
the core kinds. It reads the ServiceAccount when the gateway runs in a cluster, else a kubeconfig.

- `start` makes the claim (kept across pods), a Secret with the instance's token, and the pod; the gateway
  reaches the pod at `http://<pod IP>:8000`. A pod on its way up counts as running without an endpoint, so
  the reconciler waits for its IP; one that cannot come up (image pull, crash loop, unschedulable, evicted)
  is `exited` with the reason (see `kube_objects.pod_state`).
- `stop` deletes the pod and its Secret (a pod cannot be paused); the claim stays. `remove` also deletes the
  claim when asked. 404 and 409 count as done, as everywhere in the protocol.
- `inspect` of a pending pod also reads its Events (pulls, scheduling), for the instance's start progress.
- `list_managed` is one list call with the fleet's label selector, whatever the pool's size.
- Every call waits its turn at a client-side rate limit (`ApiPacer`).
- An API server that cannot be reached, refuses the gateway's credentials or forbids a call (RBAC) raises
  `RuntimeUnavailable`, the state a stopped Docker daemon gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim, Pod, Secret

from gateway.runtime.base import InstanceSpec, RuntimeError_, RuntimeState, RuntimeUnavailable
from gateway.runtime.kube_objects import (
    ANNOTATION_SPEC_HASH,
    CONTAINER,
    Names,
    PodTemplate,
    claim_body,
    instance_id_of,
    pod_body,
    pod_state,
    secret_body,
    with_events,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
ENGINE = "kubernetes"
# Answers that say the gateway cannot work with this API server at all, rather than that one object is wrong.
_ENGINE_DOWN = {401: "unauthorized", 403: "forbidden", 429: "throttled", 500: "server error", 502: "bad gateway",
                503: "unavailable", 504: "gateway timeout"}


class ApiPacer:
    """A token bucket: at most `burst` calls at once, refilled at `rate` per second, so a reconcile pass or a
    burst of starts never floods the API server (client-go's QPS and burst)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the API rate must be positive and the burst at least 1")
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()
        self.waited = 0.0  # seconds spent waiting, for the benchmark and the tests

    async def __aenter__(self) -> None:
        async with self._lock:  # first come, first served
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self.waited += wait
                await self._sleep(wait)
                self._tokens, self._stamp = 1.0, self._clock()
            self._tokens -= 1

    async def __aexit__(self, *exc: object) -> None:
        return None


class KubernetesRuntime:
    """Runs each instance as a pod; see the module docstring."""

    name = ENGINE

    def loopback_proxy_problem(self) -> str | None:
        """Pods run on other nodes: this machine's loopback is not theirs to reach."""
        return "kubernetes"

    def __init__(
        self,
        template: PodTemplate,
        *,
        namespace: str | None = None,
        name_prefix: str = "aistudio-fleet-",
        kubeconfig: Path | None = None,
        context: str | None = None,
        api_rate: float = 20.0,
        api_burst: int = 40,
        api_timeout: float = 30.0,
        gone_timeout: float = 60.0,
    ) -> None:
        """`namespace` None: the ServiceAccount's or the kubeconfig context's. `kubeconfig` None: in-cluster
        first, then $KUBECONFIG or ~/.kube/config (lightkube's order)."""
        template.seccomp_profile()  # a wrong setting fails at start, not at the first pod
        self.template = template
        self.names = Names(name_prefix)
        self.kubeconfig = kubeconfig
        self.context = context
        self.api_timeout = api_timeout
        self.gone_timeout = gone_timeout
        self.pacer = ApiPacer(api_rate, api_burst)
        self._namespace = namespace
        self._client: AsyncClient | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    # ---- lifecycle -------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load the configuration and ask for the fleet's pods once, so a wrong config, an unreachable server
        or missing rights show at gateway start (as RuntimeUnavailable; the gateway keeps serving)."""
        await self.list_managed()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    @property
    def namespace(self) -> str:
        return self._connected().namespace

    def _connected(self) -> AsyncClient:
        if self._client is None:
            try:
                config = (KubeConfig.from_file(self.kubeconfig) if self.kubeconfig else KubeConfig.from_env())
                single = config.get(self.context)
                timeout = httpx2.Timeout(self.api_timeout)
                # No environment proxies: the API server is reached directly with the gateway's own credentials.
                self._client = AsyncClient(single, namespace=self._namespace, timeout=timeout, field_manager="aistudio-fleet",
                                           trust_env=False)
            except (ConfigError, OSError, KeyError, ValueError) as e:
                raise RuntimeUnavailable(ENGINE, f"no usable Kubernetes configuration: {_reason(e)}") from e
        return self._client

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    # ---- protocol --------------------------------------------------------------------------------

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        async with self._lock(spec.instance_id):
            namespace = self.namespace
            pod_name = self.names.pod(spec.instance_id)
            wanted = pod_body(self.names, spec, namespace, self.template)
            current = await self._get(Pod, pod_name)
            if current is not None:
                state = pod_state(current)
                same = (current["metadata"].get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == \
                    wanted["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
                if state.phase == "running" and same:
                    return state
                # Ended, failing, terminating or made from another spec: a pod cannot be restarted, only replaced.
                await self._delete_and_wait(Pod, pod_name, grace=0 if state.phase != "running" else None)
            await self._ensure_claim(spec, namespace)
            await self._put_secret(spec, namespace)
            created = await self._create(Pod, wanted)
            return pod_state(created)

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        async with self._lock(instance_id):
            await self._delete_and_wait(Pod, self.names.pod(instance_id), grace=max(0, int(round(timeout))))
            await self._delete(Secret, self.names.secret(instance_id))

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        async with self._lock(instance_id):
            await self._delete_and_wait(Pod, self.names.pod(instance_id), grace=5)
            await self._delete(Secret, self.names.secret(instance_id))
            if remove_volume:
                await self._delete(PersistentVolumeClaim, self.names.claim(instance_id))

    async def inspect(self, instance_id: str) -> RuntimeState:
        """The pod's state; a pending pod's (scheduling, pulling, failing to pull) with its newest Events."""
        pod = await self._get(Pod, self.names.pod(instance_id))
        if pod is None:
            return RuntimeState(instance_id=instance_id, phase="missing")
        state = pod_state(pod)
        if (pod.get("status") or {}).get("phase", "Pending") == "Pending":
            state = with_events(state, await self._events_of(pod["metadata"]["name"]))
        return state

    async def _events_of(self, pod_name: str) -> list[dict[str, Any]]:
        """The pod's Events; none when they cannot be read (a Role without `events`): they only add detail."""
        client = self._connected()

        async def listed() -> list[dict[str, Any]]:
            fields = {"involvedObject.kind": "Pod", "involvedObject.name": pod_name}
            return [e.to_dict() async for e in client.list(Event, namespace=client.namespace, fields=fields)]

        try:
            return await self._call(listed)
        except (ApiError, RuntimeUnavailable) as e:
            log.debug("events of %s not read: %s", pod_name, e)
            return []

    async def list_managed(self) -> dict[str, RuntimeState]:
        client = self._connected()

        async def listed() -> list[dict[str, Any]]:
            return [p.to_dict() async for p in client.list(Pod, namespace=client.namespace, labels=self.names.selector())]

        states: dict[str, RuntimeState] = {}
        for pod in await self._call(listed):
            instance_id = instance_id_of(pod)
            if instance_id:
                states[instance_id] = pod_state(pod)
        return states

    async def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        client = self._connected()
        name = self.names.pod(instance_id)
        stream = client.log(name, namespace=client.namespace, container=CONTAINER, follow=follow, tail_lines=tail,
                            newlines=False)
        async with self.pacer:
            pass  # the stream is one call, however long it is followed
        async with contextlib.aclosing(stream):
            try:
                async for line in stream:
                    yield line
            except ApiError as e:
                code = e.status.code or 0
                if code in _ENGINE_DOWN:
                    raise RuntimeUnavailable(ENGINE, _api_reason(e)) from e
                if code == 404:
                    raise RuntimeError_(f"no pod for instance {instance_id}") from e
                raise RuntimeError_(f"logs of {name}: {_api_reason(e)}") from e
            except httpx2.TransportError as e:
                if follow:  # a followed stream that breaks ends; the panel opens another
                    log.info("log stream of %s ended: %s", name, _reason(e))
                    return
                raise RuntimeUnavailable(ENGINE, _reason(e)) from e

    # ---- calls -----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """One paced API call; engine-wide failures become RuntimeUnavailable, ApiError passes for 404/409."""
        async with self.pacer:
            try:
                return await fn()
            except ApiError as e:
                if (e.status.code or 0) in _ENGINE_DOWN:
                    raise RuntimeUnavailable(ENGINE, _api_reason(e)) from e
                raise
            except httpx2.TransportError as e:
                raise RuntimeUnavailable(ENGINE, _reason(e)) from e

    async def _get(self, kind: type, name: str) -> dict[str, Any] | None:
        client = self._connected()

        async def get() -> dict[str, Any]:
            return (await client.get(kind, name, namespace=client.namespace)).to_dict()

        try:
            return await self._call(get)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise RuntimeError_(f"cannot read {kind.__name__} {name}: {_api_reason(e)}") from e

    async def _create(self, kind: type, body: dict[str, Any]) -> dict[str, Any]:
        client = self._connected()
        name = body["metadata"]["name"]

        async def create() -> dict[str, Any]:
            return (await client.create(kind.from_dict(body), namespace=client.namespace)).to_dict()

        try:
            return await self._call(create)
        except ApiError as e:
            if e.status.code == 409:  # made meanwhile (another replica's start): theirs is as good as ours
                existing = await self._get(kind, name)
                if existing is not None:
                    return existing
            raise RuntimeError_(f"cannot create {kind.__name__} {name}: {_api_reason(e)}") from e

    async def _create_new(self, kind: type, body: dict[str, Any]) -> bool:
        """Create without reading anything back; False when one of that name exists already."""
        client = self._connected()

        async def create() -> None:
            await client.create(kind.from_dict(body), namespace=client.namespace)

        try:
            await self._call(create)
            return True
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise RuntimeError_(f"cannot create {kind.__name__} {body['metadata']['name']}: {_api_reason(e)}") from e

    async def _delete(self, kind: type, name: str, grace: int | None = None) -> bool:
        """Delete; False when there was nothing to delete."""
        client = self._connected()

        async def delete() -> None:
            await client.delete(kind, name, namespace=client.namespace, grace_period=grace)

        try:
            await self._call(delete)
            return True
        except ApiError as e:
            if e.status.code in (404, 409):
                return False
            raise RuntimeError_(f"cannot delete {kind.__name__} {name}: {_api_reason(e)}") from e

    async def _delete_and_wait(self, kind: type, name: str, grace: int | None) -> None:
        """Delete and wait until the object is gone, so a new pod of the same name can be made after it."""
        await self._delete(kind, name, grace)
        deadline = time.monotonic() + (grace or 30) + self.gone_timeout
        pause = 0.1
        while await self._get(kind, name) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError_(f"{kind.__name__} {name} is still there {self.gone_timeout:g}s after its grace period")
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 2.0)

    async def _ensure_claim(self, spec: InstanceSpec, namespace: str) -> None:
        name = self.names.claim(spec.instance_id)
        if await self._get(PersistentVolumeClaim, name) is None:
            await self._create(PersistentVolumeClaim, claim_body(self.names, spec, namespace, self.template))

    async def _put_secret(self, spec: InstanceSpec, namespace: str) -> None:
        """A fresh token for every start: a Secret left by an earlier pod is replaced. Never read back: the Role
        grants no `get` on Secrets (the gateway's own Secret is in the same namespace)."""
        name = self.names.secret(spec.instance_id)
        for _ in range(2):
            await self._delete(Secret, name)
            if await self._create_new(Secret, secret_body(self.names, spec, namespace)):
                return
        raise RuntimeError_(f"cannot create Secret {name}: another start made it again meanwhile")


def _api_reason(e: ApiError) -> str:
    status = e.status
    words = _ENGINE_DOWN.get(status.code or 0) or (status.reason or "").lower() or "error"
    message = status.message or str(e)
    return _reason_text(f"{words} ({status.code}): {message}")


def _reason(e: BaseException) -> str:
    return _reason_text(str(e) or type(e).__name__)


def _reason_text(text: str) -> str:
    return text if len(text) < 300 else text[:297] + "..."

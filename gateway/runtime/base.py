"""The runtime protocol: every engine (docker, local, kubernetes, fake) speaks only this.

The gateway's services never call an engine's SDK directly; they call a `Runtime`. Every method is
idempotent: stopping a stopped instance or removing a missing one is success (404/409 count as done).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from fleet_contract.environment import InstanceEnvironment, variable

# Labels every engine puts on what it creates, so orphans can be found after a gateway restart.
LABEL_MANAGED_BY = "io.aistudio-fleet.managed-by"
LABEL_INSTANCE_ID = "io.aistudio-fleet.instance-id"
LABEL_INSTANCE_NAME = "io.aistudio-fleet.instance-name"
MANAGED_BY_VALUE = "aistudio-fleet"

RuntimePhase = Literal["missing", "created", "running", "exited"]


@dataclass(frozen=True)
class InstanceSpec:
    """What an engine needs to run one instance: its bearer token once, and its other variables."""

    instance_id: str
    name: str
    token: str
    env: dict[str, str] = field(default_factory=dict)  # INSTANCE_* beside the token, as the contract spells them

    @classmethod
    def of(cls, instance_id: str, name: str, environment: InstanceEnvironment) -> InstanceSpec:
        others = environment.to_environ()
        others.pop(variable("api_token"))
        return cls(instance_id, name, environment.api_token, others)

    def environ(self, **engine_fields: object) -> dict[str, str]:
        """Every variable the instance starts with: these, the token, and what the engine itself decides
        (port, host, data folder: fields of the contract's InstanceEnvironment)."""
        own = InstanceEnvironment(api_token=self.token, **engine_fields)  # type: ignore[arg-type]
        return {**self.env, **own.to_environ()}


@dataclass(frozen=True)
class RuntimeState:
    """What an engine knows of one instance right now."""

    instance_id: str
    phase: RuntimePhase
    handle: str | None = None  # container id, pid, pod name
    endpoint: str | None = None  # base URL the gateway uses, e.g. http://127.0.0.1:49153
    exit_code: int | None = None
    detail: str = ""
    # Running as far as the engine goes, but its container has not started yet (being scheduled, pulling its image,
    # being created): the start timeout waits for it, within the engine's own allowance.
    preparing: bool = False


class RuntimeError_(Exception):
    """An engine call failed for a reason specific to one instance."""


class RuntimeUnavailable(Exception):
    """The engine itself cannot be reached (Docker daemon down, API server gone)."""

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(f"{engine} engine unavailable: {reason}")
        self.engine = engine
        self.reason = reason


@runtime_checkable
class Runtime(Protocol):
    """One engine that runs instances. All methods are safe to call from the event loop."""

    name: str

    async def setup(self) -> None:
        """Connect to the engine; called once at gateway start."""

    async def close(self) -> None:
        """Release clients; never stops instances (they outlive the gateway)."""

    async def start(self, spec: InstanceSpec) -> RuntimeState:
        """Create the instance's container/process/pod if missing and start it."""

    async def stop(self, instance_id: str, timeout: float = 10.0) -> None:
        """Stop it and let its volume stay; stopping a stopped or missing instance is fine."""

    async def remove(self, instance_id: str, *, remove_volume: bool) -> None:
        """Remove the container/process/pod, and its volume when asked; missing is fine."""

    async def inspect(self, instance_id: str) -> RuntimeState:
        """Current state; phase `missing` when the engine has nothing for this id."""

    async def list_managed(self) -> dict[str, RuntimeState]:
        """Everything this engine runs for the fleet, by instance id (labels, not names)."""

    def logs(self, instance_id: str, *, tail: int = 200, follow: bool = False) -> AsyncIterator[str]:
        """Log lines of the instance, oldest first; with follow, keeps yielding until it stops."""


def loopback_proxy_problem(runtime: object) -> str | None:
    """Why a proxy on this machine's loopback cannot reach this runtime's instances (`kubernetes`,
    `remote_docker`), or None: local processes share the loopback, local docker relays it."""
    check = getattr(runtime, "loopback_proxy_problem", None)
    return check() if callable(check) else None


def egress_fence(runtime: object) -> tuple[str, str]:
    """Whether the runtime fences its instances from private addresses: (`on` | `off` | `unavailable`, why);
    engines without a fence of their own (local, kubernetes: NetworkPolicy) say `off` with no reason."""
    check = getattr(runtime, "egress_fence", None)
    return check() if callable(check) else ("off", "")


def security_warnings(runtime: object) -> list[str]:
    """What the operator should know about the instances' isolation (shown in the panel and the stats)."""
    check = getattr(runtime, "security_warnings", None)
    return check() if callable(check) else []


async def route_proxy(runtime: object, url: str) -> str:
    """The proxy URL as the runtime's instances reach it (a loopback one through a relay); engines that need
    nothing return it as it is."""
    route = getattr(runtime, "route_proxy", None)
    return await route(url) if callable(route) else url


async def prune_relays(runtime: object) -> None:
    """Remove relays that no running instance uses (after a test started one for nothing)."""
    prune = getattr(runtime, "prune_relays", None)
    if callable(prune):
        await prune()

"""What the reconciler should do for one instance, from its row and what the engine reports: a pure function."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.db.models import Status, Target
from gateway.runtime.base import RuntimeState


class Action(StrEnum):
    NOTHING = "nothing"
    WAIT = "wait"  # a restart is due later (backoff)
    START = "start"
    AWAIT_READY = "await_ready"  # a start was under way when the gateway restarted: wait for it
    PROBE = "probe"
    CRASHED = "crashed"
    STOP = "stop"
    MARK_STOPPED = "mark_stopped"


@dataclass(frozen=True)
class InstanceRow:
    """The columns the reconciler reads, loaded for every instance in one query per pass."""

    id: uuid.UUID
    name: str
    target: str
    status: str
    login_state: str
    busy: bool
    restart_count: int
    next_restart_at: datetime | None
    started_at: datetime | None
    endpoint: str | None
    token: str | None
    # Session health, as last stored (the probe writes only what changed).
    login_checked_at: datetime | None = None
    signed_in_since: datetime | None = None
    session_saved_at: datetime | None = None
    session_expires_at: datetime | None = None
    page_error: str | None = None  # why the page cannot reach AI Studio (aistudio_reach unreachable)
    aistudio_reach: str = "unknown"


def decide(row: InstanceRow, state: RuntimeState | None, now: datetime, max_restarts: int) -> Action:
    phase = state.phase if state is not None else "missing"
    if row.target == Target.STOPPED:
        if phase == "running" or row.status in (Status.STARTING, Status.RUNNING, Status.STOPPING):
            return Action.STOP
        return Action.MARK_STOPPED if row.status == Status.ERROR else Action.NOTHING
    if row.status == Status.RUNNING:
        return Action.PROBE if phase == "running" else Action.CRASHED
    if row.status == Status.STARTING:
        return Action.AWAIT_READY if phase == "running" and row.token else Action.START
    if row.status == Status.ERROR:
        if row.restart_count > max_restarts:
            return Action.NOTHING  # gave up: waits for a person to start it again
        if row.next_restart_at is not None and row.next_restart_at > now:
            return Action.WAIT
    return Action.START


def describe_exit(state: RuntimeState | None) -> str:
    """Why an instance that should run does not, in words for the event log."""
    if state is None or state.phase == "missing":
        return "container disappeared"
    if state.phase == "exited":
        code = f" with code {state.exit_code}" if state.exit_code is not None else ""
        detail = f" ({state.detail})" if state.detail else ""
        return f"container exited{code}{detail}"
    return f"container is {state.phase}"


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential: base, 2*base, 4*base, ... capped."""
    return min(cap, base * (2 ** max(0, failures - 1)))

"""Prometheus metrics of the generation API, in a registry of their own per Fleet (never the global one)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Generations take seconds to minutes; queue waits from nothing to the wait limit.
_WAIT_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)
_RUN_BUCKETS = (0.05, 0.25, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class DispatchMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Counter("aistudio_tasks", "Finished tasks by outcome (succeeded, or the error code)", ["outcome"], registry=r)
        self.rejected = Counter(
            "aistudio_requests_rejected", "Requests refused before or while queued, by reason", ["reason"], registry=r
        )
        self.attempts = Counter("aistudio_attempts", "Attempts on instances by result", ["result"], registry=r)
        self.retries = Counter("aistudio_retries", "Tasks sent to another instance, by reason", ["reason"], registry=r)
        self.queue_length = Gauge("aistudio_queue_length", "Tasks waiting for an instance in this process", registry=r)
        self.running = Gauge("aistudio_tasks_running", "Tasks on an instance, from this process", registry=r)
        self.wait_seconds = Histogram(
            "aistudio_queue_wait_seconds", "Time a task waited for an instance", buckets=_WAIT_BUCKETS, registry=r
        )
        self.run_seconds = Histogram(
            "aistudio_attempt_seconds", "Time of one attempt on an instance", buckets=_RUN_BUCKETS, registry=r
        )
        self.instances = Gauge("aistudio_instances", "Instances by status", ["status"], registry=r)
        self.instances_available = Gauge("aistudio_instances_available", "Instances that can take a task now", registry=r)
        self.instances_cooling_down = Gauge("aistudio_instances_cooling_down", "Running instances cooling down", registry=r)
        self.instances_needs_login = Gauge("aistudio_instances_needs_login", "Running instances signed out", registry=r)
        self.sessions_expiring = Gauge(
            "aistudio_sessions_expiring", "Instances whose Google sign-in cookies expire within the warning window", registry=r
        )
        self.session_expiry = Gauge(
            "aistudio_session_expiry_timestamp_seconds",
            "When each instance's Google sign-in cookies expire (Unix time)",
            ["instance"],
            registry=r,
        )

    def track_queue(self, length: Callable[[], int]) -> None:
        self.queue_length.set_function(lambda: float(length()))

    def set_instances(
        self, by_status: dict[str, int], *, available: int, cooling_down: int, needs_login: int
    ) -> None:
        for status, count in by_status.items():
            self.instances.labels(status).set(count)
        self.instances_available.set(available)
        self.instances_cooling_down.set(cooling_down)
        self.instances_needs_login.set(needs_login)

    def set_sessions(self, expiries: dict[str, float | None], expiring: int) -> None:
        """Per instance name, when its session expires; instances without an expiry are left out."""
        self.session_expiry.clear()
        for name, when in expiries.items():
            if when is not None:
                self.session_expiry.labels(name).set(when)
        self.sessions_expiring.set(expiring)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

"""The wait queue: tasks that found no free instance wait here, first in first out, and are handed a lease.

One pump hands out leases in queue order (a task whose model no free instance can use lets the ones behind it
through). When nothing was free for a model and no account may be asked for it before a reset, every task
waiting for that model ends at once (`ModelSpent`) instead of waiting out its time. It runs when woken (an instance was freed here, or in another
gateway via Postgres NOTIFY) and, while anyone waits, every `poll_interval` anyway: instances also become
free by starting, signing in, or the end of a cooldown, which nobody announces.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.db.outage import database_unreachable
from gateway.dispatcher.ledger import Lease, PoolSnapshot

log = logging.getLogger(__name__)


class ModelSpent(Exception):
    """Set on a waiter's future: its model is spent everywhere until `snapshot.back_at`."""

    def __init__(self, model: str, snapshot: PoolSnapshot) -> None:
        super().__init__(f"{model} is spent until {snapshot.back_at}")
        self.model = model
        self.snapshot = snapshot


@dataclass(eq=False)
class Waiter:
    task_id: uuid.UUID
    exclude: frozenset[uuid.UUID]  # instances this task already tried
    model: str
    future: asyncio.Future[Lease] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    since: float = field(default_factory=time.monotonic)
    created_at: datetime | None = None  # the task's admission: tasks taken over from another gateway queue by it
    after_task: uuid.UUID | None = None  # a conversation's last task: its instance is preferred


class WaitQueue:
    def __init__(
        self,
        acquire: Callable[[Waiter], Awaitable[Lease | None]],
        release_unused: Callable[[Lease], Awaitable[None]],
        *,
        poll_interval: float,
        spent_until: Callable[[str], Awaitable[PoolSnapshot | None]] | None = None,
    ) -> None:
        self._acquire = acquire
        self._release_unused = release_unused
        self._spent_until = spent_until
        self._poll_interval = poll_interval
        self._waiters: deque[Waiter] = deque()
        self._signal = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._waiters)

    def start(self) -> None:
        if self._pump is None:
            self._pump = asyncio.create_task(self._run(), name="dispatch-queue")

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    def wake(self) -> None:
        self._signal.set()

    def enqueue(self, waiter: Waiter, *, front: bool = False, by_age: bool = False) -> None:
        """A retry goes first: it was admitted before everyone now waiting. `by_age`: behind those admitted before
        it and ahead of those admitted after (a task taken over from a gateway that died, or resumed at start)."""
        if front:
            self._waiters.appendleft(waiter)
        elif by_age and waiter.created_at is not None:
            self._waiters.insert(self._place_by_age(waiter.created_at), waiter)
        else:
            self._waiters.append(waiter)
        self.wake()

    def _place_by_age(self, created_at: datetime) -> int:
        place = len(self._waiters)
        while place > 0:
            ahead = self._waiters[place - 1].created_at
            if ahead is None or ahead <= created_at:
                break
            place -= 1
        return place

    def remove(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # the pump took it out when it handed over the lease

    async def _run(self) -> None:
        while True:
            try:
                if self._waiters:
                    await asyncio.wait_for(self._signal.wait(), self._poll_interval)
                else:
                    await self._signal.wait()
            except TimeoutError:
                pass
            self._signal.clear()
            try:
                await self._serve()
            except Exception as exc:  # the database may be down for a moment; waiters keep their own deadlines
                if database_unreachable(exc):
                    log.warning("handing out leases waits for the database: %s", str(exc).splitlines()[0][:200])
                else:
                    log.exception("handing out leases failed")
                await asyncio.sleep(self._poll_interval)

    async def _serve(self) -> None:
        missed: set[str] = set()  # models for which nothing is free, whoever asks
        unserved: set[str] = set()  # models some waiter found nothing for
        for waiter in list(self._waiters):
            if waiter.future.done():
                self.remove(waiter)
                continue
            if waiter.model in missed:
                continue  # nothing for this model even without exclusions: it would find the same
            lease = await self._acquire(waiter)
            if lease is None:
                unserved.add(waiter.model)
                if not waiter.exclude:
                    missed.add(waiter.model)
                # Only its own excluded instances, or ones that cannot use its model, may be free:
                # someone behind may take them.
                continue
            self.remove(waiter)
            if waiter.future.done():
                await self._release_unused(lease)  # it gave up while we were leasing
            else:
                waiter.future.set_result(lease)
        await self._end_spent(unserved)

    async def _end_spent(self, models: set[str]) -> None:
        """Waiters for a model that no account may be asked for before a reset end now, not at their timeout."""
        if self._spent_until is None:
            return
        for model in models:
            snapshot = await self._spent_until(model)
            if snapshot is None:
                continue
            for waiter in [w for w in self._waiters if w.model == model]:
                self.remove(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(ModelSpent(model, snapshot))
